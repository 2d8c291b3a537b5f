//! Tags, ACLs, Object Lock and user metadata as xattrs, through a real mount.

mod common;

use std::fs;
use std::io::Write;

use common::*;

fn setfattr(path: &std::path::Path, name: &str, value: &str) -> (bool, String) {
    let (ok, _, err) = run(
        "setfattr",
        &["-n", name, "-v", value, path.to_str().unwrap()],
    );
    (ok, err)
}

fn getfattr(path: &std::path::Path, name: &str) -> Option<String> {
    let (ok, out, _) = run(
        "getfattr",
        &["--only-values", "-n", name, path.to_str().unwrap()],
    );
    ok.then_some(out)
}

#[test]
fn tags_with_setfattr_and_getfattr_make_no_new_version() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let f = sb.path("notes.txt");
    fs::write(&f, "x").unwrap();
    let (ok, err) = setfattr(&f, "user.s3.tag.project", "apollo");
    assert!(ok, "{err}");
    assert_eq!(
        getfattr(&f, "user.s3.tag.project").as_deref(),
        Some("apollo")
    );
    xattr::set(&f, "user.s3.tag.team", b"blue sky").unwrap();
    assert_eq!(
        xget(&f, "user.s3.tagging").as_deref(),
        Some("project=apollo&team=blue%20sky")
    );
    xattr::remove(&f, "user.s3.tag.project").unwrap();
    assert_eq!(xget(&f, "user.s3.tag.project"), None);
    xattr::set(&f, "user.s3.tagging", b"a=1&b=x%2By").unwrap();
    assert_eq!(xget(&f, "user.s3.tag.b").as_deref(), Some("x+y"));
    // '&' is not a tag character in S3.
    assert_eq!(
        errno(xattr::set(&f, "user.s3.tagging", b"a=x%26y")),
        libc::EINVAL
    );
    assert_eq!(
        xget(&f, "user.s3.tag.team"),
        None,
        "tagging replaces the whole set"
    );
    let mut names: Vec<String> = xattr::list(&f)
        .unwrap()
        .map(|n| n.into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["user.s3.tag.a", "user.s3.tag.b"]);
    assert_eq!(versions(&sb.mnt, "notes.txt").len(), 1);
}

#[test]
fn invalid_tags_are_refused_and_change_nothing() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let f = sb.path("t");
    fs::write(&f, "x").unwrap();
    for i in 0..10 {
        xattr::set(&f, format!("user.s3.tag.k{i}"), b"v").unwrap();
    }
    let before = xget(&f, "user.s3.tagging");
    assert_eq!(errno(xattr::set(&f, "user.s3.tag.k10", b"v")), libc::E2BIG);
    assert_eq!(
        errno(xattr::set(&f, "user.s3.tag.aws:x", b"v")),
        libc::EINVAL
    );
    assert_eq!(
        errno(xattr::set(
            &f,
            format!("user.s3.tag.{}", "k".repeat(129)),
            b"v"
        )),
        libc::EINVAL
    );
    assert_eq!(
        errno(xattr::set(&f, "user.s3.tag.k0", "v".repeat(257).as_bytes())),
        libc::EINVAL
    );
    assert_eq!(
        errno(xattr::set(&f, "user.s3.tag.k0", b"bad*char")),
        libc::EINVAL
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("t{i}=v")).collect();
    assert_eq!(
        errno(xattr::set(
            &f,
            "user.s3.tagging",
            eleven.join("&").as_bytes()
        )),
        libc::E2BIG
    );
    assert_eq!(xget(&f, "user.s3.tagging"), before);
    // 128 Unicode characters are fine even though they are more bytes.
    xattr::remove(&f, "user.s3.tag.k0").unwrap();
    xattr::set(&f, format!("user.s3.tag.{}", "é".repeat(100)), b"ok").unwrap();
    // Linux caps xattr names at 255 bytes; longer tag keys go through user.s3.tagging.
    xattr::set(
        &f,
        "user.s3.tagging",
        format!("{}=ok", "%C3%A9".repeat(128)).as_bytes(),
    )
    .unwrap();
    assert_eq!(xget(&f, &format!("user.s3.tag.{}", "é".repeat(100))), None);
    for i in 0..9 {
        xattr::set(&f, format!("user.s3.tag.k{i}"), b"v").unwrap();
    }
    let (ok, err) = setfattr(&f, "user.s3.tag.x", "y");
    assert!(!ok && err.contains("Argument list too long"), "{err}");
}

#[test]
fn acl_canned_and_json_grants() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let f = sb.path("a");
    fs::write(&f, "x").unwrap();
    assert_eq!(xget(&f, "user.s3.acl").as_deref(), Some("private"));
    xattr::set(&f, "user.s3.acl", b"public-read").unwrap();
    assert_eq!(xget(&f, "user.s3.acl").as_deref(), Some("public-read"));
    assert_eq!(
        errno(xattr::set(&f, "user.s3.acl", b"public-everything")),
        libc::EINVAL
    );
    assert_eq!(xget(&f, "user.s3.acl").as_deref(), Some("public-read"));
    let grants = r#"[{"Grantee":{"Type":"CanonicalUser","ID":"abc"},"Permission":"READ"}]"#;
    xattr::set(&f, "user.s3.acl", grants.as_bytes()).unwrap();
    assert!(xget(&f, "user.s3.acl").unwrap().contains("\"abc\""));
    let many: Vec<String> = (0..101)
        .map(|i| {
            format!(r#"{{"Grantee":{{"Type":"CanonicalUser","ID":"u{i}"}},"Permission":"READ"}}"#)
        })
        .collect();
    assert_eq!(
        errno(xattr::set(
            &f,
            "user.s3.acl",
            format!("[{}]", many.join(",")).as_bytes()
        )),
        libc::E2BIG
    );
    assert_eq!(
        errno(xattr::set(&f, "user.s3.acl", b"[{\"Grantee\": 1}]")),
        libc::EINVAL
    );
    assert!(xget(&f, "user.s3.acl").unwrap().contains("\"abc\""));
}

#[test]
fn computed_attributes_are_read_only() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let f = sb.path("c");
    fs::write(&f, "hello").unwrap();
    assert_eq!(
        xget(&f, "user.s3.etag").as_deref(),
        Some("\"5d41402abc4b2a76b9719d911017c592\"")
    );
    assert_eq!(
        errno(xattr::set(&f, "user.s3.version-id", b"x")),
        libc::EPERM
    );
    assert_eq!(errno(xattr::set(&f, "user.s3.etag", b"x")), libc::EPERM);
    assert_eq!(
        errno(xattr::set(&f, "user.s3.unknown", b"x")),
        libc::EOPNOTSUPP
    );
    assert_eq!(errno(xattr::set(&f, "trusted.x", b"x")), libc::EOPNOTSUPP);
}

#[test]
fn user_metadata_round_trips_with_cp_and_rsync() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let local = sb.dir.path().join("local.txt");
    fs::write(&local, "content").unwrap();
    xattr::set(&local, "user.mime_type", b"text/plain").unwrap();
    xattr::set(&local, "user.binary", &[0, 159, 255]).unwrap();
    let (ok, _, err) = run(
        "cp",
        &[
            "--preserve=xattr",
            local.to_str().unwrap(),
            sb.path("copied.txt").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let copied = sb.path("copied.txt");
    assert_eq!(
        xget(&copied, "user.mime_type").as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        xattr::get(&copied, "user.binary").unwrap().unwrap(),
        vec![0, 159, 255]
    );
    assert_eq!(versions(&sb.mnt, "copied.txt").len(), 1);
    // rsync -aX writes a temp file, sets xattrs on it while open, then renames it.
    if run("rsync", &["--version"]).0 {
        let (ok, _, err) = run(
            "rsync",
            &[
                "-aX",
                local.to_str().unwrap(),
                sb.path("synced.txt").to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        assert_eq!(
            xget(&sb.path("synced.txt"), "user.mime_type").as_deref(),
            Some("text/plain")
        );
        assert_eq!(versions(&sb.mnt, "synced.txt").len(), 1);
        // and back out again
        let back = sb.dir.path().join("back.txt");
        let (ok, _, err) = run(
            "rsync",
            &[
                "-aX",
                sb.path("synced.txt").to_str().unwrap(),
                back.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        assert_eq!(xget(&back, "user.mime_type").as_deref(), Some("text/plain"));
    } else {
        panic!("rsync is missing: .ci/run installs it");
    }
}

#[test]
fn xattrs_set_while_open_for_writing_belong_to_the_version_published_at_close() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let p = sb.path("w");
    fs::write(&p, "v1").unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"v2").unwrap();
    xattr::set(&p, "user.s3.tag.stage", b"draft").unwrap();
    let v = versions(&sb.mnt, "w");
    assert_eq!(v.len(), 1);
    assert_eq!(
        xget(&sb.path(".versions/w").join(&v[0]), "user.s3.tag.stage"),
        None
    );
    drop(f);
    let v = versions(&sb.mnt, "w");
    assert_eq!(v.len(), 2);
    assert_eq!(
        xget(&sb.path(".versions/w").join(&v[1]), "user.s3.tag.stage").as_deref(),
        Some("draft")
    );
    // Opened for writing, only tagged, closed: the current version is tagged, no new one.
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    xattr::set(&p, "user.s3.tag.reviewed", b"yes").unwrap();
    drop(f);
    assert_eq!(versions(&sb.mnt, "w").len(), 2);
    assert_eq!(xget(&p, "user.s3.tag.reviewed").as_deref(), Some("yes"));
}

#[test]
fn tags_on_an_old_version_under_versions() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("k"), "1").unwrap();
    fs::write(sb.path("k"), "2").unwrap();
    let v = versions(&sb.mnt, "k");
    let old = sb.path(".versions/k").join(&v[0]);
    xattr::set(&old, "user.s3.tag.era", b"old").unwrap();
    assert_eq!(xget(&old, "user.s3.tag.era").as_deref(), Some("old"));
    assert_eq!(xget(&sb.path("k"), "user.s3.tag.era"), None);
    assert_eq!(
        xget(&old, "user.s3.delete-marker").as_deref(),
        Some("false")
    );
}

#[test]
fn object_lock_needs_an_object_lock_bucket() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::write(sb.path("f"), "x").unwrap();
    assert_eq!(
        errno(xattr::set(
            sb.path("f"),
            "user.s3.object-lock-legal-hold",
            b"ON"
        )),
        libc::EOPNOTSUPP
    );
}

fn lock_bucket() -> (Sandbox, Mount) {
    let sb = Sandbox::new();
    sb.create(&["--object-lock"]);
    let m = sb.mount(&[]);
    (sb, m)
}

#[test]
fn compliance_retention_blocks_deletion_and_shortening_by_anyone() {
    let (sb, _m) = lock_bucket();
    let f = sb.path("ledger");
    fs::write(&f, "v1").unwrap();
    assert_eq!(
        errno(xattr::set(
            &f,
            "user.s3.object-lock-retain-until-date",
            b"2001-01-01T00:00:00Z"
        )),
        libc::EINVAL
    );
    xattr::set(&f, "user.s3.object-lock-mode", b"COMPLIANCE").unwrap();
    xattr::set(
        &f,
        "user.s3.object-lock-retain-until-date",
        b"2099-01-01T00:00:00Z",
    )
    .unwrap();
    assert_eq!(
        xget(&f, "user.s3.object-lock-mode").as_deref(),
        Some("COMPLIANCE")
    );
    assert_eq!(
        errno(xattr::set(
            &f,
            "user.s3.object-lock-retain-until-date",
            b"2098-01-01T00:00:00Z"
        )),
        libc::EPERM
    );
    assert_eq!(
        errno(xattr::remove(&f, "user.s3.object-lock-mode")),
        libc::EPERM
    );
    assert_eq!(
        errno(xattr::set(&f, "user.s3.object-lock-mode", b"GOVERNANCE")),
        libc::EPERM
    );
    xattr::set(
        &f,
        "user.s3.object-lock-retain-until-date",
        b"2100-01-01T00:00:00Z",
    )
    .unwrap();
    assert_eq!(
        xget(&f, "user.s3.object-lock-retain-until-date").as_deref(),
        Some("2100-01-01T00:00:00Z")
    );
    let v = versions(&sb.mnt, "ledger");
    // The locked version cannot be deleted for good...
    assert_eq!(
        errno(fs::remove_file(sb.path(".versions/ledger").join(&v[0]))),
        libc::EPERM
    );
    // ...but a new write adds a version and a plain rm adds a delete marker.
    fs::write(&f, "v2").unwrap();
    fs::remove_file(&f).unwrap();
    let after = versions(&sb.mnt, "ledger");
    assert_eq!(after.len(), 3);
    assert_eq!(
        fs::read_to_string(sb.path(".versions/ledger").join(&v[0])).unwrap(),
        "v1"
    );
}

#[test]
fn governance_retention_yields_only_to_the_bypass_mount_option() {
    let (sb, m) = lock_bucket();
    let f = sb.path("g");
    fs::write(&f, "x").unwrap();
    xattr::set(
        &f,
        "user.s3.object-lock-retain-until-date",
        b"2099-01-01T00:00:00Z",
    )
    .unwrap();
    assert_eq!(
        xget(&f, "user.s3.object-lock-mode").as_deref(),
        Some("GOVERNANCE")
    );
    assert_eq!(
        errno(xattr::remove(&f, "user.s3.object-lock-retain-until-date")),
        libc::EPERM
    );
    let v = versions(&sb.mnt, "g");
    assert_eq!(
        errno(fs::remove_file(sb.path(".versions/g").join(&v[0]))),
        libc::EPERM
    );
    assert!(
        m.log().contains("GOVERNANCE"),
        "the refusal is logged with its reason"
    );
    m.unmount();
    let _m = sb.mount(&["--bypass-governance-retention"]);
    xattr::set(
        &f,
        "user.s3.object-lock-retain-until-date",
        b"2098-01-01T00:00:00Z",
    )
    .unwrap();
    fs::remove_file(sb.path(".versions/g").join(&v[0])).unwrap();
    assert_eq!(errno(fs::metadata(&f)), libc::ENOENT);
}

#[test]
fn legal_hold_blocks_permanent_deletion_until_released() {
    let (sb, _m) = lock_bucket();
    let f = sb.path("h");
    fs::write(&f, "x").unwrap();
    xattr::set(&f, "user.s3.object-lock-legal-hold", b"ON").unwrap();
    assert_eq!(
        errno(xattr::set(&f, "user.s3.object-lock-legal-hold", b"on")),
        libc::EINVAL
    );
    let v = versions(&sb.mnt, "h");
    let entry = sb.path(".versions/h").join(&v[0]);
    assert_eq!(errno(fs::remove_file(&entry)), libc::EPERM);
    xattr::set(&f, "user.s3.object-lock-legal-hold", b"OFF").unwrap();
    fs::remove_file(&entry).unwrap();
}

#[test]
fn directories_keep_plain_user_xattrs_only() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir(sb.path("d")).unwrap();
    xattr::set(sb.path("d"), "user.note", b"hi").unwrap();
    assert_eq!(xget(&sb.path("d"), "user.note").as_deref(), Some("hi"));
    assert_eq!(
        errno(xattr::set(sb.path("d"), "user.s3.tag.x", b"y")),
        libc::EOPNOTSUPP
    );
}

#[test]
fn other_namespaces_are_unsupported_everywhere_so_ls_asks_once() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    fs::create_dir(sb.path("d")).unwrap();
    for i in 0..40 {
        fs::write(sb.path(&format!("d/f{i}")), "x").unwrap();
    }
    fs::write(sb.path("d/f0"), "again").unwrap();
    std::os::unix::fs::symlink("f1", sb.path("d/link")).unwrap();
    let old = sb
        .path(".versions/d/f0")
        .join(&versions(&sb.mnt, "d/f0")[0]);
    let nodes = [
        sb.mnt.clone(),
        sb.path("d"),
        sb.path("d/f1"),
        sb.path("d/link"),
        sb.path(".versions"),
        old,
    ];
    for node in &nodes {
        for name in [
            "security.selinux",
            "system.posix_acl_access",
            "system.posix_acl_default",
            "trusted.x",
        ] {
            assert_eq!(
                errno(xattr::get(node, name)),
                libc::EOPNOTSUPP,
                "{name} of {}",
                node.display()
            );
        }
    }
    // Setting one is refused the same way, whatever the flags (XATTR_REPLACE says nothing of a
    // name that cannot exist).
    let path = std::ffi::CString::new(sb.path("d/f1").to_str().unwrap()).unwrap();
    for flags in [0, libc::XATTR_CREATE, libc::XATTR_REPLACE] {
        // SAFETY: NUL-terminated strings and a value buffer that outlive the call.
        let r = unsafe {
            libc::setxattr(
                path.as_ptr(),
                c"security.x".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                flags,
            )
        };
        assert_eq!(
            (r, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EOPNOTSUPP)),
            "flags {flags}"
        );
    }
    // bucketfs's own namespace is supported: an unknown name there is merely absent.
    assert_eq!(xattr::get(sb.path("d/f1"), "user.s3.bogus").unwrap(), None);
    assert_eq!(xattr::get(sb.path("d"), "user.s3.bogus").unwrap(), None);

    // What the answer is for: `ls -l` stops asking for labels and ACLs after the first
    // EOPNOTSUPP on a filesystem, where ENODATA made it ask twice for every entry (each a
    // FUSE round trip: 40,000 of them for a folder of 20,000).
    let trace = sb.dir.path().join("ls.strace");
    let (ok, out, err) = run(
        "strace",
        &[
            "-f",
            "-e",
            "trace=getxattr,lgetxattr",
            "-o",
            trace.to_str().unwrap(),
            "ls",
            "-l",
            sb.path("d").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("f39") && out.contains("link -> f1"), "{out}");
    let asked = fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("getxattr("))
        .count();
    assert!(asked <= 4, "ls -l of 42 entries asked {asked} xattrs");
}

/// A retention date inside year 9999 where it was written but past it in UTC (RFC 3339 has
/// no later years) is refused with EINVAL, and the mount goes on: it panicked the daemon,
/// taking the mount down for everyone.
#[test]
fn a_retention_date_past_year_9999_in_utc_is_refused_and_the_mount_goes_on() {
    let (sb, m) = lock_bucket();
    let f = sb.path("ledger");
    fs::write(&f, "v1").unwrap();
    let until = "user.s3.object-lock-retain-until-date";
    assert_eq!(
        errno(xattr::set(&f, until, b"9999-12-31T23:59:59-14:00")),
        libc::EINVAL
    );
    assert_eq!(xget(&f, until), None);
    xattr::set(&f, until, b"9999-12-31T23:59:59+14:00").unwrap();
    assert_eq!(
        xget(&f, until).as_deref(),
        Some("9999-12-31T09:59:59Z"),
        "kept in UTC"
    );
    assert_eq!(fs::read(&f).unwrap(), b"v1");
    assert!(!m.log().contains("panicked"), "{}", m.log());
}
