//! The replication engine through real mounts of the real binary: what S3 replicates and what
//! it does not (the seeds in ../shared/seeds), replica modification sync, crash recovery and
//! the `replicate` / `status` commands. Replication is asynchronous: positive checks poll with
//! [`wait_until`]; negative checks first wait for a later, replicated marker (the engine works
//! through its queue in order), then assert the absence.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

const STATUS: &str = "user.s3.replication-status";
const TIMEOUT: Duration = Duration::from_secs(10);
/// For work that waits on a retry backoff (0.5 s doubling) or a 2 s queue poll.
const SLOW: Duration = Duration::from_secs(30);

/// A temp dir holding sibling buckets, their mountpoints and configuration files.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: mount tests need FUSE (they never skip)"
        );
        World {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn bucket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `bucketfs create NAME [extra]`.
    fn create(&self, name: &str, extra: &[&str]) -> PathBuf {
        let b = self.bucket(name);
        let (ok, out, err) = bucketfs(&[&["create", b.to_str().unwrap()], extra].concat());
        assert!(ok, "create {name} failed: {out}{err}");
        b
    }

    fn mnt(&self, name: &str) -> PathBuf {
        let m = self.dir.path().join(format!("mnt-{name}"));
        fs::create_dir_all(&m).unwrap();
        m
    }

    fn config(&self, file: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(file);
        fs::write(&p, text).unwrap();
        p
    }

    /// Mounts bucket `name` at `mnt-NAME`, with `--config cfg` if given.
    fn mount(&self, name: &str, cfg: Option<&Path>, extra: &[&str]) -> Mount {
        let mut args: Vec<&str> = Vec::new();
        if let Some(c) = cfg {
            args.extend(["--config", c.to_str().unwrap()]);
        }
        args.extend_from_slice(extra);
        Mount::start(&self.bucket(name), &self.mnt(name), &args)
    }
}

fn bucketfs(args: &[&str]) -> (bool, String, String) {
    run(BIN, args)
}

/// `bucketfs replicate SRC --existing --config CFG`, which must succeed; its output.
fn replicate_existing(src: &Path, cfg: &Path) -> String {
    replicate_batch(src, "--existing", cfg)
}

/// `bucketfs replicate SRC WHICH --config CFG` (`--existing` or `--failed`), which must
/// succeed; its output.
fn replicate_batch(src: &Path, which: &str, cfg: &Path) -> String {
    let (ok, out, err) = bucketfs(&[
        "replicate",
        src.to_str().unwrap(),
        which,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(ok, "replicate {which} failed:\n{out}{err}");
    out
}

/// One V2 rule: `filter` is the YAML flow mapping of `Filter`; `more` adds fields.
fn rule(id: &str, priority: u32, filter: &str, dest: &str, dmr: &str, more: &str) -> String {
    format!(
        "  - ID: {id}\n    Status: Enabled\n    Priority: {priority}\n    Filter: {filter}\n    \
         Destination: {{Bucket: 'arn:aws:s3:::{dest}'}}\n    \
         DeleteMarkerReplication: {{Status: {dmr}}}\n{more}"
    )
}

const RM_ENABLED: &str = "    SourceSelectionCriteria: {ReplicaModifications: {Status: Enabled}}\n";

fn rules(rules: &[String]) -> String {
    format!(
        "Role: arn:aws:iam::123456789012:role/test\nRules:\n{}",
        rules.concat()
    )
}

/// The whole-bucket rule `src → dest`, delete markers replicated.
fn all_to(dest: &str) -> String {
    rules(&[rule("all", 1, "{}", dest, "Enabled", "")])
}

fn has_version(bucket: &Path, key: &str, id: &str) -> bool {
    meta(bucket, key, id).is_some()
}

fn version_id(path: &Path) -> String {
    xget(path, "user.s3.version-id")
        .unwrap_or_else(|| panic!("{} has no version id", path.display()))
}

fn status_of(path: &Path) -> Option<String> {
    xget(path, STATUS)
}

fn write(mnt: &Path, key: &str, data: &str) -> String {
    let p = mnt.join(key);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, data).unwrap();
    version_id(&p)
}

/// Waits until `dest` holds the current version of `key` of the source mounted at `src_mnt`
/// and the source says COMPLETED; checks the replica keeps what S3 keeps. Returns the id.
fn wait_replicated(src: &Path, src_mnt: &Path, dest: &Path, key: &str) -> String {
    let p = src_mnt.join(key);
    let id = version_id(&p);
    wait_until(
        &format!("{key} version {id} replicated into {}", dest.display()),
        TIMEOUT,
        || has_version(dest, key, &id),
    );
    wait_until(&format!("{key} COMPLETED on the source"), TIMEOUT, || {
        status_of(&p).as_deref() == Some("COMPLETED")
    });
    let s = meta(src, key, &id).expect("source metadata");
    let r = meta(dest, key, &id).expect("replica metadata");
    assert_eq!(r["replication_status"], "REPLICA", "{r}");
    for field in [
        "last_modified_ns",
        "size",
        "posix",
        "tags",
        "acl",
        "retention",
        "delete_marker",
    ] {
        assert_eq!(
            r[field], s[field],
            "replica's {field} differs from the source's"
        );
    }
    if s["delete_marker"] == false {
        assert_eq!(
            fs::read(dest.join(key)).unwrap(),
            fs::read(&p).unwrap(),
            "replica bytes of {key}"
        );
    }
    id
}

fn assert_not_replicated(dest: &Path, key: &str) {
    assert!(
        stored_versions(dest, key).is_empty() && !dest.join(key).exists(),
        "{key} must not be replicated into {}, found versions {:?}",
        dest.display(),
        stored_versions(dest, key)
    );
}

fn setfattr(path: &Path, name: &str, value: &str) {
    xattr::set(path, name, value.as_bytes())
        .unwrap_or_else(|e| panic!("setxattr {name}={value} on {}: {e}", path.display()));
}

fn tags_of(bucket: &Path, key: &str, id: &str) -> Value {
    meta(bucket, key, id).map_or(Value::Null, |m| m["tags"].clone())
}

fn tag_pairs(pairs: &[(&str, &str)]) -> Value {
    serde_json::json!(pairs.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>())
}

fn queue_len(bucket: &Path) -> usize {
    fs::read_dir(bucket.join(".bucketfs/replication/queue")).map_or(0, |d| d.count())
}

/// `bucketfs status` rows as whitespace-split columns (header skipped).
fn status_rows(bucket: &Path) -> Vec<Vec<String>> {
    let (ok, out, err) = bucketfs(&["status", bucket.to_str().unwrap()]);
    assert!(ok, "status failed: {out}{err}");
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// (pending ops, completed, failed) of the row for `rule` → `dest`.
fn status_counts(bucket: &Path, rule: &str, dest: &str) -> (u64, u64, u64) {
    let rows = status_rows(bucket);
    let row = rows
        .iter()
        .find(|r| r.len() >= 6 && r[0] == rule && r[1] == dest)
        .unwrap_or_else(|| panic!("no status row for {rule} → {dest}: {rows:?}"));
    let n = |i: usize| row[i].parse::<u64>().unwrap();
    (n(2), n(4), n(5))
}

// ---------------------------------------------------------------------------------------
// 1. The seed's configuration
// ---------------------------------------------------------------------------------------

#[test]
fn seed_json_config_loads_verbatim_and_replicates_only_the_tax_prefix() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.create("DOC-EXAMPLE-BUCKET", &[]);
    let cfg = w.dir.path().join("seed.json");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seed-replica-modifications.json"),
        &cfg,
    )
    .unwrap();
    let m = w.mount("src", Some(&cfg), &[]);
    write(&m.mnt, "Other/skip.txt", "not tax");
    write(&m.mnt, "Tax/2024.txt", "tax return");
    wait_replicated(&src, &m.mnt, &dest, "Tax/2024.txt");
    assert_eq!(
        fs::read_to_string(dest.join("Tax/2024.txt")).unwrap(),
        "tax return"
    );
    assert_not_replicated(&dest, "Other/skip.txt");
    assert_eq!(status_of(&m.mnt.join("Other/skip.txt")), None);
    // The configuration in force is kept in the bucket, verbatim.
    assert_eq!(
        fs::read_to_string(src.join(".bucketfs/replication.yaml")).unwrap(),
        fs::read_to_string(&cfg).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Filters
// ---------------------------------------------------------------------------------------

#[test]
fn prefix_filter_replicates_only_matching_keys() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.create("dest", &[]);
    let cfg = w.config(
        "r.yaml",
        &rules(&[rule("logs", 1, "{Prefix: logs/}", "dest", "Enabled", "")]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    write(&m.mnt, "data/x", "no");
    write(&m.mnt, "logsx", "no: the prefix is logs/");
    write(&m.mnt, "logs/x", "yes");
    wait_replicated(&src, &m.mnt, &dest, "logs/x");
    assert_not_replicated(&dest, "data/x");
    assert_not_replicated(&dest, "logsx");
}

#[test]
fn tag_filter_replicates_tagged_versions_and_tags_set_later() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.create("dest", &[]);
    let cfg = w.config(
        "r.yaml",
        &rules(&[rule(
            "archive",
            1,
            "{Tag: {Key: archive, Value: 'true'}}",
            "dest",
            "Disabled",
            "",
        )]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    write(&m.mnt, "plain.txt", "untagged");
    let wrong = m.mnt.join("wrong.txt");
    fs::write(&wrong, "tagged false").unwrap();
    setfattr(&wrong, "user.s3.tag.archive", "false");
    // Tagged while open for writing: the tag is part of the version published at close.
    let open = m.mnt.join("open.txt");
    let mut f = fs::File::create(&open).unwrap();
    f.write_all(b"tagged while open").unwrap();
    setfattr(&open, "user.s3.tag.archive", "true");
    drop(f);
    wait_replicated(&src, &m.mnt, &dest, "open.txt");
    // Tagged after it was written: the tag change makes it eligible.
    let later = m.mnt.join("later.txt");
    fs::write(&later, "tagged later").unwrap();
    setfattr(&later, "user.s3.tag.archive", "true");
    wait_replicated(&src, &m.mnt, &dest, "later.txt");
    assert_eq!(
        tags_of(&dest, "later.txt", &version_id(&later)),
        tag_pairs(&[("archive", "true")])
    );
    assert_not_replicated(&dest, "plain.txt");
    assert_not_replicated(&dest, "wrong.txt");
}

#[test]
fn and_filter_needs_the_prefix_and_every_tag() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.create("dest", &[]);
    let cfg = w.config(
        "r.yaml",
        &rules(&[rule(
            "tax-archive",
            1,
            "{And: {Prefix: Tax/, Tags: [{Key: archive, Value: 'true'}, {Key: year, Value: '2024'}]}}",
            "dest",
            "Disabled",
            "",
        )]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    write(&m.mnt, "Tax/none", "no tags");
    write(&m.mnt, "Other/both", "tags but wrong prefix");
    setfattr(
        &m.mnt.join("Other/both"),
        "user.s3.tagging",
        "archive=true&year=2024",
    );
    write(&m.mnt, "Tax/one", "one tag of two");
    setfattr(&m.mnt.join("Tax/one"), "user.s3.tag.archive", "true");
    write(&m.mnt, "Tax/both", "prefix and both tags");
    setfattr(&m.mnt.join("Tax/both"), "user.s3.tag.archive", "true");
    setfattr(&m.mnt.join("Tax/both"), "user.s3.tag.year", "2024");
    wait_replicated(&src, &m.mnt, &dest, "Tax/both");
    assert_not_replicated(&dest, "Tax/none");
    assert_not_replicated(&dest, "Other/both");
    assert_not_replicated(&dest, "Tax/one");
}

// ---------------------------------------------------------------------------------------
// 3. Priority and several destinations
// ---------------------------------------------------------------------------------------

#[test]
fn highest_priority_rule_decides_and_rules_for_two_destinations_both_apply() {
    let w = World::new();
    let src = w.bucket("src");
    let b = w.create("b", &[]);
    let c = w.create("c", &[]);
    let cfg = w.config(
        "r.yaml",
        &rules(&[
            rule("all-b", 1, "{}", "b", "Enabled", ""),
            rule("keep-b", 4, "{Prefix: keep/}", "b", "Disabled", ""),
            rule("gone-b", 7, "{Prefix: keep/gone/}", "b", "Enabled", ""),
            rule("all-c", 2, "{}", "c", "Disabled", ""),
        ]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    for key in ["plain", "keep/x", "keep/gone/y"] {
        write(&m.mnt, key, key);
        wait_replicated(&src, &m.mnt, &b, key);
        wait_replicated(&src, &m.mnt, &c, key);
    }
    // keep/x: keep-b (4, Disabled) beats all-b (1, Enabled): its delete marker stays home.
    fs::remove_file(m.mnt.join("keep/x")).unwrap();
    // keep/gone/y: gone-b (7, Enabled) beats keep-b (4, Disabled).
    fs::remove_file(m.mnt.join("keep/gone/y")).unwrap();
    // plain: only all-b (Enabled) for b; all-c is Disabled for c.
    fs::remove_file(m.mnt.join("plain")).unwrap();
    for key in ["keep/gone/y", "plain"] {
        wait_until(&format!("the delete marker of {key} in b"), TIMEOUT, || {
            !b.join(key).exists() && stored_versions(&b, key).len() == 2
        });
    }
    assert!(b.join("keep/x").exists(), "keep-b has the higher priority");
    assert_eq!(stored_versions(&b, "keep/x").len(), 1);
    assert!(c.join("plain").exists(), "all-c does not replicate markers");
    assert_eq!(stored_versions(&c, "plain").len(), 1);
}

// ---------------------------------------------------------------------------------------
// 4-5. Deletes
// ---------------------------------------------------------------------------------------

#[test]
fn delete_marker_replicated_with_dmr_enabled_and_not_with_dmr_disabled() {
    let w = World::new();
    let src = w.bucket("src");
    let on = w.create("dm-on", &[]);
    let off = w.create("dm-off", &[]);
    let cfg = w.config(
        "r.yaml",
        &rules(&[
            rule("on", 1, "{}", "dm-on", "Enabled", ""),
            rule("off", 2, "{}", "dm-off", "Disabled", ""),
        ]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    let id = write(&m.mnt, "f.txt", "doomed");
    wait_replicated(&src, &m.mnt, &on, "f.txt");
    wait_replicated(&src, &m.mnt, &off, "f.txt");
    fs::remove_file(m.mnt.join("f.txt")).unwrap();
    wait_until("the delete marker replicated into dm-on", TIMEOUT, || {
        !on.join("f.txt").exists() && stored_versions(&on, "f.txt").len() == 2
    });
    let marker: Vec<String> = stored_versions(&on, "f.txt")
        .into_iter()
        .filter(|v| *v != id)
        .collect();
    assert_eq!(marker.len(), 1);
    let dm = meta(&on, "f.txt", &marker[0]).unwrap();
    assert_eq!(dm["delete_marker"], true, "{dm}");
    assert_eq!(dm["replication_status"], "REPLICA", "{dm}");
    assert_eq!(
        stored_versions(&src, "f.txt"),
        stored_versions(&on, "f.txt"),
        "same version ids on both sides"
    );
    // dm-off was never asked for the marker: the replica keeps the file.
    assert_eq!(fs::read_to_string(off.join("f.txt")).unwrap(), "doomed");
    assert_eq!(stored_versions(&off, "f.txt"), vec![id]);
}

#[test]
fn deleting_a_specific_version_is_not_replicated() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.create("dest", &[]);
    let cfg = w.config("r.yaml", &all_to("dest"));
    let m = w.mount("src", Some(&cfg), &[]);
    let v1 = write(&m.mnt, "f", "one");
    wait_replicated(&src, &m.mnt, &dest, "f");
    let v2 = write(&m.mnt, "f", "two");
    wait_replicated(&src, &m.mnt, &dest, "f");
    fs::remove_file(m.mnt.join(".versions/f").join(&v1)).unwrap();
    assert_eq!(versions(&m.mnt, "f"), vec![v2.clone()]);
    write(&m.mnt, "marker", "after the versioned delete");
    wait_replicated(&src, &m.mnt, &dest, "marker");
    assert_eq!(stored_versions(&dest, "f"), vec![v1.clone(), v2]);
    assert_eq!(
        fs::read_to_string(
            dest.join(".bucketfs/versions/f")
                .join(format!("@{v1}.data"))
        )
        .unwrap(),
        "one",
        "the replica keeps the deleted version's bytes"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Pre-existing objects and `replicate --existing`
// ---------------------------------------------------------------------------------------

#[test]
fn existing_objects_are_not_replicated_until_replicate_existing() {
    let w = World::new();
    let src = w.create("src", &[]);
    let dest = w.create("dest", &[]);
    // Written before any configuration: through a mount, and as a plain file in the dir.
    let m = w.mount("src", None, &[]);
    let old = write(&m.mnt, "old.txt", "before the rules");
    // And a deleted one: its version and delete marker are a tombstone file.
    let gone = write(&m.mnt, "gone.txt", "deleted before the rules");
    fs::remove_file(m.mnt.join("gone.txt")).unwrap();
    m.unmount();
    assert!(src.join(".bucketfs/versions/gone.txt").is_file());
    fs::write(src.join("plain.txt"), "dropped in the bucket dir").unwrap();
    // Several unversioned objects: all of them are version `null`.
    fs::create_dir(src.join("many")).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("many/{i}")), format!("plain {i}")).unwrap();
    }
    let cfg = w.config("r.yaml", &all_to("dest"));
    let m = w.mount("src", Some(&cfg), &[]);
    write(&m.mnt, "new.txt", "after the rules");
    wait_replicated(&src, &m.mnt, &dest, "new.txt");
    assert_not_replicated(&dest, "old.txt");
    assert_not_replicated(&dest, "plain.txt");
    assert_eq!(status_of(&m.mnt.join("old.txt")), None);

    let (ok, out, err) = bucketfs(&["replicate", src.to_str().unwrap(), "--existing"]);
    assert!(ok, "replicate --existing failed:\n{out}{err}");
    assert!(
        out.contains("24 versions queued, 24 replicated"),
        "{out}{err}"
    );
    let replicated = stored_versions(&dest, "gone.txt");
    assert_eq!(replicated.len(), 2, "the version and its delete marker");
    assert_eq!(replicated[0], gone);
    assert_eq!(
        meta(&dest, "gone.txt", &replicated[1]).unwrap()["delete_marker"],
        true
    );
    assert!(!dest.join("gone.txt").exists());
    for i in 0..20 {
        assert_eq!(
            fs::read_to_string(dest.join(format!("many/{i}"))).unwrap(),
            format!("plain {i}")
        );
    }
    assert_eq!(version_id(&m.mnt.join("old.txt")), old);
    wait_replicated(&src, &m.mnt, &dest, "old.txt");
    let plain = wait_replicated(&src, &m.mnt, &dest, "plain.txt");
    assert_eq!(stored_versions(&dest, "old.txt"), vec![old]);
    assert_eq!(stored_versions(&dest, "plain.txt"), vec![plain]);
    assert_eq!(stored_versions(&dest, "new.txt").len(), 1, "nothing twice");
}

/// `replicate --existing` cut short (killed after some replicas were written, before the
/// source recorded them): running it again finishes the job, and nothing arrives twice.
#[test]
fn replicate_existing_run_again_after_being_cut_short_finishes_without_duplicates() {
    let w = World::new();
    let src = w.create("src", &[]);
    let dest = w.create("dest", &[]);
    for i in 0..30 {
        fs::create_dir_all(src.join(format!("d{}", i % 3))).unwrap();
        fs::write(src.join(format!("d{}/f{i}", i % 3)), format!("plain {i}")).unwrap();
    }
    let cfg = w.config("r.yaml", &all_to("dest"));
    let run = || replicate_existing(&src, &cfg);
    assert!(run().contains("30 versions queued, 30 replicated"));
    // Undo what the source recorded for a third of them, as if the run had been killed
    // between writing their replicas and recording them: they are plain files again.
    for i in (0..30).step_by(3) {
        let key_dir = src.join(format!(".bucketfs/versions/d{}/f{i}", i % 3));
        fs::remove_dir_all(&key_dir).unwrap();
    }
    let out = run();
    assert!(out.contains("10 versions queued, 10 replicated"), "{out}");
    assert!(run().contains("0 versions queued"), "nothing is left to do");
    for i in 0..30 {
        let k = format!("d{}/f{i}", i % 3);
        assert_eq!(stored_versions(&dest, &k), vec!["null".to_string()], "{k}");
        assert_eq!(
            fs::read_to_string(dest.join(&k)).unwrap(),
            format!("plain {i}")
        );
        assert_eq!(
            meta(&src, &k, "null").unwrap()["replication_status"],
            "COMPLETED",
            "{k}"
        );
        assert_eq!(
            meta(&dest, &k, "null").unwrap()["replication_status"],
            "REPLICA"
        );
    }
    assert_eq!(
        queue_len(&src),
        0,
        "a batch queues nothing when every destination is there"
    );
}

// ---------------------------------------------------------------------------------------
// 7. No chaining
// ---------------------------------------------------------------------------------------

#[test]
fn replicas_are_not_replicated_onward() {
    let w = World::new();
    let a = w.bucket("a");
    let b = w.create("b", &[]);
    let c = w.create("c", &[]);
    let cfg_a = w.config("a.yaml", &all_to("b"));
    let cfg_b = w.config("b.yaml", &all_to("c"));
    let ma = w.mount("a", Some(&cfg_a), &[]);
    let mb = w.mount("b", Some(&cfg_b), &[]);
    write(&ma.mnt, "from-a.txt", "a");
    wait_replicated(&a, &ma.mnt, &b, "from-a.txt");
    assert_eq!(
        status_of(&mb.mnt.join("from-a.txt")).as_deref(),
        Some("REPLICA")
    );
    write(&mb.mnt, "from-b.txt", "b");
    wait_replicated(&b, &mb.mnt, &c, "from-b.txt");
    assert_not_replicated(&c, "from-a.txt");
    // A metadata change of the source travels to b, and still not on to c.
    setfattr(&ma.mnt.join("from-a.txt"), "user.s3.tag.t", "1");
    let id = version_id(&ma.mnt.join("from-a.txt"));
    wait_until("the tag replicated into b", TIMEOUT, || {
        tags_of(&b, "from-a.txt", &id) == tag_pairs(&[("t", "1")])
    });
    write(&mb.mnt, "from-b-2.txt", "b2");
    wait_replicated(&b, &mb.mnt, &c, "from-b-2.txt");
    assert_not_replicated(&c, "from-a.txt");
}

/// S3 allows a key `a` next to keys under `a/`. A replica that already has `a/x` still takes
/// `a` at the first attempt: the version is stored and readable under `.versions/a/`, the
/// folder stays as it was, nothing is left waiting. (It used to fail with EISDIR after the
/// commit, and the journal entry left behind then kept the replica from mounting.)
#[test]
fn a_key_named_like_a_folder_of_the_replica_is_kept_in_its_history() {
    let w = World::new();
    let src = w.create("src", &[]);
    let dest = w.create("dest", &[]);
    let md = w.mount("dest", None, &[]);
    write(&md.mnt, "a/x", "already in the replica");
    md.unmount();
    fs::write(src.join("a"), "a file named like the folder").unwrap();
    let cfg = w.config("r.yaml", &all_to("dest"));
    let out = replicate_existing(&src, &cfg);
    assert!(
        out.contains("1 versions queued, 1 replicated, 0 still waiting"),
        "{out}"
    );
    assert_eq!(stored_versions(&dest, "a"), vec!["null".to_string()]);
    let md = w.mount("dest", None, &[]);
    assert_eq!(
        fs::read_to_string(md.mnt.join("a/x")).unwrap(),
        "already in the replica"
    );
    assert_eq!(
        fs::read_to_string(md.mnt.join(".versions/a/null")).unwrap(),
        "a file named like the folder"
    );
}

// ---------------------------------------------------------------------------------------
// 8. Metadata changes
// ---------------------------------------------------------------------------------------

#[test]
fn tag_and_acl_changes_are_replicated() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.create("dest", &[]);
    let cfg = w.config("r.yaml", &all_to("dest"));
    let m = w.mount("src", Some(&cfg), &[]);
    let f = m.mnt.join("doc.txt");
    let id = write(&m.mnt, "doc.txt", "content");
    wait_replicated(&src, &m.mnt, &dest, "doc.txt");
    setfattr(&f, "user.s3.tag.project", "apollo");
    setfattr(&f, "user.s3.tag.team", "blue");
    setfattr(&f, "user.s3.acl", "public-read");
    wait_until("tags and ACL in the replica", TIMEOUT, || {
        let r = meta(&dest, "doc.txt", &id).unwrap();
        r["tags"] == tag_pairs(&[("project", "apollo"), ("team", "blue")])
            && r["acl"] == meta(&src, "doc.txt", &id).unwrap()["acl"]
    });
    wait_until("COMPLETED again on the source", TIMEOUT, || {
        status_of(&f).as_deref() == Some("COMPLETED")
    });
    // Removing a tag is a change too.
    xattr::remove(&f, "user.s3.tag.team").unwrap();
    wait_until("the tag removal in the replica", TIMEOUT, || {
        tags_of(&dest, "doc.txt", &id) == tag_pairs(&[("project", "apollo")])
    });
    assert_eq!(stored_versions(&dest, "doc.txt"), vec![id.clone()]);
    // What a mount of the destination shows (read-only: it keeps the destination as it is).
    drop(m);
    let md = w.mount("dest", None, &["--read-only"]);
    let r = md.mnt.join("doc.txt");
    assert_eq!(xget(&r, "user.s3.tag.project").as_deref(), Some("apollo"));
    assert_eq!(xget(&r, "user.s3.tag.team"), None);
    assert_eq!(xget(&r, "user.s3.acl").as_deref(), Some("public-read"));
    assert_eq!(xget(&r, STATUS).as_deref(), Some("REPLICA"));
    assert_eq!(version_id(&r), id);
    assert_eq!(fs::read_to_string(&r).unwrap(), "content");
}

#[test]
fn object_lock_retention_is_replicated_to_an_object_lock_destination() {
    let w = World::new();
    let src = w.create("src", &["--object-lock"]);
    let dest = w.create("dest", &["--object-lock"]);
    let cfg = w.config("r.yaml", &all_to("dest"));
    let m = w.mount("src", Some(&cfg), &[]);
    let f = m.mnt.join("ledger");
    let mut file = fs::File::create(&f).unwrap();
    file.write_all(b"locked").unwrap();
    setfattr(&f, "user.s3.object-lock-mode", "GOVERNANCE");
    setfattr(
        &f,
        "user.s3.object-lock-retain-until-date",
        "2099-01-01T00:00:00Z",
    );
    drop(file);
    let id = wait_replicated(&src, &m.mnt, &dest, "ledger");
    assert!(
        meta(&dest, "ledger", &id).unwrap()["retention"].is_object(),
        "retention in the replica"
    );
    // Extending the retention is replicated.
    setfattr(
        &f,
        "user.s3.object-lock-retain-until-date",
        "2100-01-01T00:00:00Z",
    );
    wait_until("the extended retention in the replica", TIMEOUT, || {
        meta(&dest, "ledger", &id).unwrap()["retention"]
            == meta(&src, "ledger", &id).unwrap()["retention"]
    });
}

// ---------------------------------------------------------------------------------------
// 9. Replica modification sync
// ---------------------------------------------------------------------------------------

#[test]
fn replica_modification_sync_sends_replica_tag_changes_back_without_ping_pong() {
    let w = World::new();
    let a = w.create("a", &[]);
    let b = w.create("b", &[]);
    let cfg_a = w.config(
        "a.yaml",
        &rules(&[rule("to-b", 1, "{}", "b", "Disabled", RM_ENABLED)]),
    );
    let cfg_b = w.config(
        "b.yaml",
        &rules(&[rule("to-a", 1, "{}", "a", "Disabled", RM_ENABLED)]),
    );
    let ma = w.mount("a", Some(&cfg_a), &[]);
    let mb = w.mount("b", Some(&cfg_b), &[]);
    let id = write(&ma.mnt, "f.txt", "shared");
    wait_replicated(&a, &ma.mnt, &b, "f.txt");
    let replica = mb.mnt.join("f.txt");
    assert_eq!(status_of(&replica).as_deref(), Some("REPLICA"));
    setfattr(&replica, "user.s3.tag.color", "red");
    wait_until("the replica's tag back on the source", TIMEOUT, || {
        tags_of(&a, "f.txt", &id) == tag_pairs(&[("color", "red")])
    });
    assert_eq!(
        xget(&ma.mnt.join("f.txt"), "user.s3.tag.color").as_deref(),
        Some("red")
    );
    // And the other way round: a change on the source reaches the replica.
    setfattr(&ma.mnt.join("f.txt"), "user.s3.tag.size", "big");
    wait_until("the source's tag in the replica", TIMEOUT, || {
        tags_of(&b, "f.txt", &id) == tag_pairs(&[("color", "red"), ("size", "big")])
    });
    // Markers through both engines, then both sides must have settled.
    write(&ma.mnt, "mark-a", "a");
    wait_replicated(&a, &ma.mnt, &b, "mark-a");
    write(&mb.mnt, "mark-b", "b");
    wait_replicated(&b, &mb.mnt, &a, "mark-b");
    wait_until("both queues empty", TIMEOUT, || {
        queue_len(&a) == 0 && queue_len(&b) == 0
    });
    let (sa, sb) = (
        meta(&a, "f.txt", &id).unwrap(),
        meta(&b, "f.txt", &id).unwrap(),
    );
    assert_eq!(sa["tags"], sb["tags"]);
    assert_eq!(
        sa["field_times"], sb["field_times"],
        "converged field times"
    );
    assert_eq!(
        status_of(&ma.mnt.join("f.txt")).as_deref(),
        Some("COMPLETED")
    );
    assert_eq!(status_of(&replica).as_deref(), Some("REPLICA"));
    assert_eq!(stored_versions(&a, "f.txt"), vec![id.clone()]);
    assert_eq!(stored_versions(&b, "f.txt"), vec![id.clone()]);
    // Nothing moves afterwards: one more round of markers and the metadata is unchanged.
    write(&ma.mnt, "mark-a2", "a");
    wait_replicated(&a, &ma.mnt, &b, "mark-a2");
    write(&mb.mnt, "mark-b2", "b");
    wait_replicated(&b, &mb.mnt, &a, "mark-b2");
    assert_eq!(
        meta(&a, "f.txt", &id).unwrap(),
        sa,
        "source metadata stable"
    );
    assert_eq!(
        meta(&b, "f.txt", &id).unwrap(),
        sb,
        "replica metadata stable"
    );
}

/// Two-way rules where one side lacks ReplicaModifications: a tag set on the replica stays there.
fn replica_change_does_not_flow_back(rm_on_a: bool, rm_on_b: bool) {
    let w = World::new();
    let a = w.create("a", &[]);
    let b = w.create("b", &[]);
    let more = |on: bool| if on { RM_ENABLED } else { "" };
    let cfg_a = w.config(
        "a.yaml",
        &rules(&[rule("to-b", 1, "{}", "b", "Disabled", more(rm_on_a))]),
    );
    let cfg_b = w.config(
        "b.yaml",
        &rules(&[rule("to-a", 1, "{}", "a", "Disabled", more(rm_on_b))]),
    );
    let ma = w.mount("a", Some(&cfg_a), &[]);
    let mb = w.mount("b", Some(&cfg_b), &[]);
    let id = write(&ma.mnt, "f.txt", "shared");
    wait_replicated(&a, &ma.mnt, &b, "f.txt");
    setfattr(&mb.mnt.join("f.txt"), "user.s3.tag.color", "red");
    // A positive marker through b's engine: a new object of b is replicated to a.
    write(&mb.mnt, "mark-b", "b");
    wait_replicated(&b, &mb.mnt, &a, "mark-b");
    assert_eq!(tags_of(&a, "f.txt", &id), tag_pairs(&[]));
    assert_eq!(xget(&ma.mnt.join("f.txt"), "user.s3.tag.color"), None);
    assert_eq!(
        tags_of(&b, "f.txt", &id),
        tag_pairs(&[("color", "red")]),
        "the replica keeps its own change"
    );
    assert_eq!(status_of(&mb.mnt.join("f.txt")).as_deref(), Some("REPLICA"));
}

#[test]
fn replica_changes_do_not_flow_back_without_replica_modifications_on_the_replica_side() {
    replica_change_does_not_flow_back(true, false);
}

#[test]
fn replica_changes_do_not_flow_back_without_replica_modifications_on_the_source_side() {
    replica_change_does_not_flow_back(false, true);
}

// ---------------------------------------------------------------------------------------
// 10-11. Crashes and unavailable destinations
// ---------------------------------------------------------------------------------------

/// Writers faster than one replication pass: the engine reads the queue while versions are
/// still being published (an entry is queued before its version commits). Every one of them
/// must arrive; none may be dropped as "never committed" (seen in bench/run.sh at 1,000
/// writes/s before `dequeue_if_uncommitted`).
#[test]
fn a_burst_from_several_writers_is_replicated_whole() {
    const WRITERS: usize = 4;
    const FILES: usize = 400;
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.create("dest", &[]);
    let cfg = w.config("r.yaml", &all_to("dest"));
    let m = w.mount("src", Some(&cfg), &[]);
    std::thread::scope(|s| {
        for t in 0..WRITERS {
            let dir = m.mnt.join(format!("w{t}"));
            s.spawn(move || {
                fs::create_dir(&dir).unwrap();
                for i in 0..FILES {
                    fs::write(dir.join(format!("f{i}")), format!("{t}/{i}")).unwrap();
                }
            });
        }
    });
    let total = (WRITERS * FILES) as u64;
    let missing = || {
        let mut missing = Vec::new();
        for t in 0..WRITERS {
            for i in 0..FILES {
                let key = format!("w{t}/f{i}");
                match fs::read_to_string(dest.join(&key)) {
                    Ok(data) => assert_eq!(data, format!("{t}/{i}"), "{key}"),
                    Err(_) => missing.push(key),
                }
            }
        }
        missing
    };
    wait_until_with(
        "every version in the replica and COMPLETED in the status",
        SLOW,
        || {
            format!(
                "status (pending, completed, failed): {:?}; queue: {}; not in the replica: {:?}",
                status_counts(&src, "all", "dest"),
                queue_len(&src),
                missing()
            )
        },
        || status_counts(&src, "all", "dest") == (0, total, 0),
    );
    assert_eq!(missing(), Vec::<String>::new(), "never replicated");
    assert_eq!(queue_len(&src), 0, "work left on the queue");
}

#[test]
fn kill9_with_pending_work_then_remount_converges_without_duplicates() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.bucket("dest");
    let cfg = w.config("r.yaml", &all_to("dest"));
    let mut m = w.mount("src", Some(&cfg), &[]);
    // The destination is missing: all of this stays PENDING.
    let mut keys: Vec<String> = Vec::new();
    for i in 0..10 {
        let k = format!("early/{i}");
        write(&m.mnt, &k, &format!("early {i}"));
        assert_eq!(status_of(&m.mnt.join(&k)).as_deref(), Some("PENDING"));
        keys.push(k);
    }
    // Then it appears, and the daemon dies in the middle of a burst of work.
    w.create("dest", &[]);
    for i in 0..40 {
        let k = format!("burst/{i}");
        write(&m.mnt, &k, &format!("v1 {i}"));
        if i % 3 == 0 {
            write(&m.mnt, &k, &format!("v2 {i}"));
        }
        keys.push(k);
    }
    fs::remove_file(m.mnt.join("burst/0")).unwrap();
    m.kill9();
    assert!(!is_mounted(&w.mnt("src")));
    let m = w.mount("src", Some(&cfg), &[]);
    for k in &keys {
        wait_until(&format!("{k} converged"), SLOW, || {
            let s = stored_versions(&src, k);
            !s.is_empty() && stored_versions(&dest, k) == s
        });
    }
    for k in &keys {
        for id in stored_versions(&src, k) {
            let s = meta(&src, k, &id).unwrap();
            let r = meta(&dest, k, &id).unwrap();
            assert_eq!(r["replication_status"], "REPLICA", "{k} {id}");
            assert_eq!(r["last_modified_ns"], s["last_modified_ns"], "{k} {id}");
            assert_eq!(r["delete_marker"], s["delete_marker"], "{k} {id}");
        }
        if k != "burst/0" {
            assert_eq!(
                fs::read(dest.join(k)).unwrap(),
                fs::read(m.mnt.join(k)).unwrap(),
                "{k}"
            );
        }
    }
    assert!(!dest.join("burst/0").exists(), "the delete marker arrived");
    wait_until("everything COMPLETED on the source", SLOW, || {
        keys.iter()
            .filter(|k| *k != "burst/0")
            .all(|k| status_of(&m.mnt.join(k)).as_deref() == Some("COMPLETED"))
    });
    wait_until("the queue empty", SLOW, || queue_len(&src) == 0);
}

#[test]
fn destination_away_then_back_stays_pending_then_converges() {
    let w = World::new();
    let src = w.bucket("src");
    let dest = w.bucket("dest");
    let cfg = w.config(
        "r.yaml",
        &rules(&[rule("to-dest", 1, "{}", "dest", "Enabled", "")]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    assert!(
        m.log().contains("not available"),
        "a loud warning about the missing destination:\n{}",
        m.log()
    );
    write(&m.mnt, "f1", "one");
    write(&m.mnt, "f2", "two");
    assert_eq!(status_of(&m.mnt.join("f1")).as_deref(), Some("PENDING"));
    assert_eq!(status_of(&m.mnt.join("f2")).as_deref(), Some("PENDING"));
    let (pending, _, _) = status_counts(&src, "to-dest", "dest");
    assert!(pending >= 2, "status shows the pending work: {pending}");
    w.create("dest", &[]);
    wait_until("f1 and f2 COMPLETED", SLOW, || {
        ["f1", "f2"]
            .iter()
            .all(|k| status_of(&m.mnt.join(k)).as_deref() == Some("COMPLETED"))
    });
    wait_replicated(&src, &m.mnt, &dest, "f1");
    wait_replicated(&src, &m.mnt, &dest, "f2");

    // The disk goes away (renamed), then comes back.
    let away = w.bucket("dest.away");
    fs::rename(&dest, &away).unwrap();
    write(&m.mnt, "f3", "three");
    fs::remove_file(m.mnt.join("f1")).unwrap();
    assert_eq!(status_of(&m.mnt.join("f3")).as_deref(), Some("PENDING"));
    wait_until("status shows the pending work", TIMEOUT, || {
        status_counts(&src, "to-dest", "dest").0 >= 2
    });
    std::thread::sleep(Duration::from_millis(1500)); // let a retry or two fail
    assert_eq!(status_of(&m.mnt.join("f3")).as_deref(), Some("PENDING"));
    fs::rename(&away, &dest).unwrap();
    wait_until("f3 COMPLETED", SLOW, || {
        status_of(&m.mnt.join("f3")).as_deref() == Some("COMPLETED")
    });
    wait_replicated(&src, &m.mnt, &dest, "f3");
    wait_until("the delete marker of f1", SLOW, || {
        !dest.join("f1").exists()
    });
    wait_until("no pending work in status", SLOW, || {
        status_counts(&src, "to-dest", "dest").0 == 0
    });
}

// ---------------------------------------------------------------------------------------
// 12. Object Lock into a bucket without it: FAILED, and `replicate --failed`
// ---------------------------------------------------------------------------------------

#[test]
fn retention_into_a_bucket_without_object_lock_fails_and_replicate_failed_retries() {
    let w = World::new();
    let src = w.create("src", &["--object-lock"]);
    let plain = w.create("dest", &[]);
    let cfg = w.config(
        "r.yaml",
        &rules(&[rule("to-dest", 1, "{}", "dest", "Enabled", "")]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    let f = m.mnt.join("locked");
    let mut file = fs::File::create(&f).unwrap();
    file.write_all(b"keep me").unwrap();
    setfattr(&f, "user.s3.object-lock-mode", "GOVERNANCE");
    setfattr(
        &f,
        "user.s3.object-lock-retain-until-date",
        "2099-01-01T00:00:00Z",
    );
    drop(file);
    let id = version_id(&f);
    wait_until("FAILED on the source", TIMEOUT, || {
        status_of(&f).as_deref() == Some("FAILED")
    });
    assert_not_replicated(&plain, "locked");
    // Other versions are not held up by it.
    write(&m.mnt, "free", "no lock");
    wait_replicated(&src, &m.mnt, &plain, "free");
    wait_until("status shows the failed operation", TIMEOUT, || {
        status_counts(&src, "to-dest", "dest").2 >= 1
    });
    m.unmount();

    // Batch replication of FAILED work, to an Object Lock bucket named `dest` in `Buckets`.
    let locked = w.create("dest-locked", &["--object-lock"]);
    let cfg2 = w.config(
        "r2.yaml",
        &format!(
            "Buckets:\n  dest: {}\n{}",
            locked.display(),
            rules(&[rule("to-dest", 1, "{}", "dest", "Enabled", "")])
        ),
    );
    let out = replicate_batch(&src, "--failed", &cfg2);
    assert!(out.contains("1 versions queued"), "{out}");
    assert!(has_version(&locked, "locked", &id));
    assert_eq!(
        meta(&src, "locked", &id).unwrap()["replication_status"],
        "COMPLETED"
    );
    let r = meta(&locked, "locked", &id).unwrap();
    assert_eq!(
        r["retention"],
        meta(&src, "locked", &id).unwrap()["retention"]
    );
    assert_eq!(
        fs::read_to_string(locked.join("locked")).unwrap(),
        "keep me"
    );
}

// ---------------------------------------------------------------------------------------
// 13. Status
// ---------------------------------------------------------------------------------------

#[test]
fn status_while_mounted_prints_a_row_per_rule_and_destination() {
    let w = World::new();
    let src = w.bucket("src");
    let b = w.create("b", &[]);
    let c = w.create("c", &[]);
    let cfg = w.config(
        "r.yaml",
        &rules(&[
            rule("to-b", 1, "{}", "b", "Enabled", ""),
            rule("to-c", 2, "{Prefix: c/}", "c", "Disabled", ""),
        ]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    for k in ["x", "y", "c/z"] {
        write(&m.mnt, k, k);
    }
    for k in ["x", "y", "c/z"] {
        wait_replicated(&src, &m.mnt, &b, k);
    }
    wait_replicated(&src, &m.mnt, &c, "c/z");
    wait_until("completed counts in status", TIMEOUT, || {
        status_counts(&src, "to-b", "b") == (0, 3, 0)
            && status_counts(&src, "to-c", "c") == (0, 1, 0)
    });
    let (ok, out, err) = bucketfs(&["status", src.to_str().unwrap()]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    for col in [
        "RULE",
        "DESTINATION",
        "PENDING",
        "COMPLETED",
        "FAILED",
        "LATENCY",
    ] {
        assert!(header.contains(col), "{out}");
    }
    assert_eq!(out.lines().count(), 3, "a header and two rows:\n{out}");
    assert!(is_mounted(&m.mnt));
}

// ---------------------------------------------------------------------------------------
// 14. Invalid configurations
// ---------------------------------------------------------------------------------------

#[test]
fn every_invalid_configuration_is_refused_at_mount_naming_the_field() {
    let w = World::new();
    let _dest = w.create("dest", &[]);
    fs::create_dir(w.bucket("not-a-bucket")).unwrap();
    fs::write(w.bucket("not-a-bucket/file"), "x").unwrap();
    let ok_rule = |id: &str, p: u32| rule(id, p, "{}", "dest", "Disabled", "");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown field",
            rules(&[format!("{}    Colour: red\n", ok_rule("r", 1))]),
            "Colour",
        ),
        (
            "DeleteMarkerReplication Enabled with a Tag filter",
            rules(&[rule(
                "r",
                1,
                "{Tag: {Key: k, Value: v}}",
                "dest",
                "Enabled",
                "",
            )]),
            "DeleteMarkerReplication",
        ),
        (
            "duplicate Priority",
            rules(&[ok_rule("r1", 3), ok_rule("r2", 3)]),
            "Priority",
        ),
        (
            "destination is the source bucket",
            rules(&[rule("r", 1, "{}", "src", "Disabled", "")]),
            "Bucket",
        ),
        (
            "V2 rule without Priority",
            "Rules:\n  - ID: r\n    Status: Enabled\n    Filter: {}\n    \
             Destination: {Bucket: dest}\n    DeleteMarkerReplication: {Status: Disabled}\n"
                .to_string(),
            "Priority",
        ),
        (
            "duplicate ID",
            rules(&[ok_rule("same", 1), ok_rule("same", 2)]),
            "ID",
        ),
        (
            "ReplicaModifications in a V1 rule",
            format!(
                "Rules:\n  - ID: r\n    Status: Enabled\n    Prefix: ''\n    \
                 Destination: {{Bucket: dest}}\n{RM_ENABLED}"
            ),
            "ReplicaModifications",
        ),
        (
            "destination exists but is not a bucket",
            rules(&[rule("r", 1, "{}", "not-a-bucket", "Disabled", "")]),
            "Bucket",
        ),
        ("no rules", "Rules: []\n".to_string(), "Rules"),
    ];
    let src = w.bucket("src");
    let mnt = w.mnt("src");
    for (what, text, field) in cases {
        let cfg = w.config("bad.yaml", &text);
        let (ok, out, err) = bucketfs(&[
            "mount",
            src.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ]);
        if ok {
            lazy_unmount(&mnt);
        }
        assert!(!ok, "{what}: mount must refuse\n{text}");
        assert!(!is_mounted(&mnt), "{what}: nothing mounted");
        assert!(
            err.contains(field),
            "{what}: the error must name `{field}`:\n{out}{err}\n--- config:\n{text}"
        );
        assert!(err.contains("bad.yaml"), "{what}: names the file: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(
            !src.exists(),
            "{what}: refused before the bucket was created"
        );
    }
    // The same directory and mountpoint take a valid configuration.
    let cfg = w.config("good.yaml", &all_to("dest"));
    let m = w.mount("src", Some(&cfg), &[]);
    assert!(is_mounted(&m.mnt));
}

// ---------------------------------------------------------------------------------------
// 15. Owner rule
// ---------------------------------------------------------------------------------------

#[test]
fn objects_of_another_owner_replicate_only_with_bucket_owner_full_control() {
    let w = World::new();
    let src = w.create("src", &["--owner", "0"]);
    let dest = w.create("dest", &[]);
    let cfg = w.config("r.yaml", &all_to("dest"));
    // The temp dir is root-only; nobody must be able to reach the mountpoint.
    for p in [w.dir.path().to_path_buf(), w.mnt("src")] {
        let (ok, _, err) = run("chmod", &["0755", p.to_str().unwrap()]);
        assert!(ok, "{err}");
    }
    let m = w.mount("src", Some(&cfg), &["--allow-other"]);
    let (ok, _, err) = run("chmod", &["0777", m.mnt.to_str().unwrap()]);
    assert!(ok, "chmod through the mount: {err}");
    let mnt = m.mnt.to_str().unwrap();
    // Written by nobody, private ACL: the bucket owner (root) may not read it.
    let (ok, _, err) = as_nobody(&format!("echo theirs > {mnt}/other.txt"));
    assert!(ok, "writing as nobody: {err}");
    // Written by nobody with bucket-owner-full-control set while the file is open.
    let (ok, _, err) = as_nobody(&format!(
        "exec 3> {mnt}/granted.txt && echo granted >&3 && \
         setfattr -n user.s3.acl -v bucket-owner-full-control {mnt}/granted.txt && exec 3>&-"
    ));
    assert!(ok, "writing with an ACL as nobody: {err}");
    // S3's object owner is the writer, not the bucket owner.
    let other = version_id(&m.mnt.join("other.txt"));
    assert_eq!(
        meta(&src, "other.txt", &other).unwrap()["owner"],
        65534,
        "the object owner of a file written by uid 65534"
    );
    write(&m.mnt, "mine.txt", "root's");
    wait_replicated(&src, &m.mnt, &dest, "mine.txt");
    wait_replicated(&src, &m.mnt, &dest, "granted.txt");
    assert_not_replicated(&dest, "other.txt");
    // The owner grants the bucket owner full control afterwards: now it is replicated.
    let (ok, _, err) = as_nobody(&format!(
        "setfattr -n user.s3.acl -v bucket-owner-full-control {mnt}/other.txt"
    ));
    assert!(ok, "setting the ACL as nobody: {err}");
    wait_replicated(&src, &m.mnt, &dest, "other.txt");
    assert_eq!(meta(&dest, "other.txt", &other).unwrap()["owner"], 65534);
}

#[test]
fn after_a_crash_a_rescan_requeues_pending_versions_whose_queue_entry_was_lost() {
    let w = World::new();
    let src = w.bucket("src");
    let cfg = w.config(
        "r.yaml",
        &rules(&[rule("to-dest", 1, "{}", "dest", "Enabled", "")]),
    );
    let m = w.mount("src", Some(&cfg), &[]);
    write(&m.mnt, "lost", "queued, then its entry vanished");
    assert_eq!(status_of(&m.mnt.join("lost")).as_deref(), Some("PENDING"));
    m.unmount();
    // The version says PENDING but its queue entry is gone (as after a power cut that kept
    // the version and lost the entry), and a process died using the bucket.
    fs::remove_dir_all(src.join(".bucketfs/replication/queue")).unwrap();
    fs::create_dir_all(src.join(".bucketfs/sessions/1-dead/journal")).unwrap();
    let dest = w.create("dest", &[]);
    let m = w.mount("src", Some(&cfg), &[]);
    wait_replicated(&src, &m.mnt, &dest, "lost");
    assert!(
        m.log().contains("rescan after a crash re-queued 1"),
        "{}",
        m.log()
    );
}

/// Root's backup taken before any rules: files root wrote and handed to their users (chowned
/// after the close, as rsync does; before it, as `cp -a` does) stay root's objects, their
/// users their POSIX owners. So `replicate --existing` takes them up under the owner rule,
/// with root as their owner, as it would have the day they were written.
#[test]
fn files_root_wrote_and_chowned_before_the_rules_stay_roots_objects() {
    use std::os::unix::fs::{MetadataExt, chown};
    let w = World::new();
    let src = w.create("src", &["--owner", "0"]);
    let dest = w.create("dest", &[]);
    let m = w.mount("src", None, &[]);
    let chowned = write(&m.mnt, "chowned.txt", "root wrote it");
    chown(m.mnt.join("chowned.txt"), Some(65534), Some(65534)).unwrap();
    let home = w.dir.path().join("home.txt");
    fs::write(&home, "a user's file").unwrap();
    chown(&home, Some(65534), Some(65534)).unwrap();
    let target = m.mnt.join("copied.txt");
    let (ok, _, err) = run(
        "cp",
        &["-a", home.to_str().unwrap(), target.to_str().unwrap()],
    );
    assert!(ok, "cp -a: {err}");
    let copied = version_id(&target);
    m.unmount();
    assert!(
        !src.join(".bucketfs/versions/chowned.txt").exists()
            && !src.join(".bucketfs/versions/copied.txt").exists(),
        "both versions implicit"
    );

    let cfg = w.config("r.yaml", &all_to("dest"));
    let out = replicate_existing(&src, &cfg);
    for (key, id, text) in [
        ("chowned.txt", &chowned, "root wrote it"),
        ("copied.txt", &copied, "a user's file"),
    ] {
        assert_eq!(
            stored_versions(&dest, key),
            vec![id.clone()],
            "{key}: {out}"
        );
        assert_eq!(fs::read_to_string(dest.join(key)).unwrap(), text);
        let replica = meta(&dest, key, id).unwrap();
        assert_eq!(replica["owner"], 0, "{key}: {replica}");
        assert_eq!(replica["posix"]["uid"], 65534, "{key}: {replica}");
        assert_eq!(fs::metadata(dest.join(key)).unwrap().uid(), 65534, "{key}");
    }
}
