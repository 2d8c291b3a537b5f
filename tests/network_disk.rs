//! Replication onto a network disk: a destination bucket on an sshfs mount of a private sshd
//! listening on 127.0.0.1 (no other network is used). The disk goes away (sshfs killed, then
//! its mountpoint left as an empty directory) and comes back; the work waits as PENDING and
//! then converges. Everything started here (sshd, sshfs, mounts) is stopped on drop, also when
//! a test panics, and a watchdog kills sshfs and sshd if a test overruns, so that a hung call on
//! the network disk fails the test instead of hanging it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const STATUS: &str = "user.s3.replication-status";
const TIMEOUT: Duration = Duration::from_secs(20);
/// For work that waits on a retry backoff (0.5 s doubling to 30 s) or the 2 s queue poll.
const SLOW: Duration = Duration::from_secs(60);
/// After this, the watchdog kills sshfs and sshd: every call on the network disk then fails.
const TEST_LIMIT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------
// Processes and the watchdog
// ---------------------------------------------------------------------------------------

/// Pids of live children the watchdog may kill. A pid is removed (under the lock) before its
/// child is reaped, so the watchdog never signals a recycled pid.
#[derive(Clone, Default)]
struct Pids(Arc<Mutex<Vec<u32>>>);

impl Pids {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }

    fn remove(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }
}

/// Kills every registered child after `TEST_LIMIT` unless disarmed (dropped) first.
struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pids: Pids) -> Self {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let d = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*d;
            let deadline = Instant::now() + TEST_LIMIT;
            let mut finished = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*finished {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let pids = pids.0.lock().unwrap_or_else(|e| e.into_inner());
                    eprintln!("watchdog: test overran {TEST_LIMIT:?}, killing {pids:?}");
                    for pid in pids.iter() {
                        // SAFETY: a child of ours that is not reaped yet (see `Pids`).
                        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                    }
                    return;
                }
                finished = cv
                    .wait_timeout(finished, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        });
        Watchdog {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process that is killed and reaped on drop.
struct Proc {
    child: Option<Child>,
    pids: Pids,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf, pids: &Pids) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        pids.add(child.id());
        Proc {
            child: Some(child),
            pids: pids.clone(),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if the child has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Deregister first: from here on the watchdog leaves this pid alone.
            self.pids.remove(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port on 127.0.0.1");
    l.local_addr().unwrap().port()
}

/// A private sshd on 127.0.0.1: temp host key, temp authorized client key, foreground.
struct Sshd {
    /// Kept for its drop, which stops sshd.
    _proc: Proc,
    port: u16,
    client_key: PathBuf,
}

fn keygen(path: &Path) {
    let (ok, out, err) = run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            path.to_str().unwrap(),
        ],
    );
    assert!(ok, "ssh-keygen -f {}: {out}{err}", path.display());
}

impl Sshd {
    fn start(dir: &Path, pids: &Pids) -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is missing: install openssh-server (see .ci/run)");
        let d = dir.join("ssh");
        fs::create_dir_all(&d).unwrap();
        let (host_key, client_key) = (d.join("host_key"), d.join("client_key"));
        keygen(&host_key);
        keygen(&client_key);
        let auth = d.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &auth).unwrap();
        // Debian's sshd insists on its privilege separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        let mut last_log = String::new();
        // A port picked free can be taken before sshd binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let config = d.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                     PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                     StrictModes no\nPidFile {}\nSubsystem sftp internal-sftp\n\
                     ClientAliveInterval 5\nClientAliveCountMax 3\n",
                    host_key.display(),
                    auth.display(),
                    d.join("sshd.pid").display()
                ),
            )
            .unwrap();
            let mut proc = Proc::spawn(
                Command::new(sshd)
                    .arg("-D")
                    .arg("-e")
                    .arg("-f")
                    .arg(&config),
                d.join("sshd.log"),
                pids,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if ssh_banner(port) {
                    return Sshd {
                        _proc: proc,
                        port,
                        client_key,
                    };
                }
                if proc.exited().is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last_log = proc.log();
            proc.kill();
        }
        panic!("sshd did not come up on 127.0.0.1:\n{last_log}");
    }
}

/// True once something on 127.0.0.1:`port` greets with an SSH banner.
fn ssh_banner(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0")
}

/// `sshfs -f` of `root@127.0.0.1:EXPORT` at `mnt`, as a child process.
struct Sshfs {
    proc: Proc,
    mnt: PathBuf,
}

impl Sshfs {
    fn start(sshd: &Sshd, export: &Path, mnt: &Path, pids: &Pids) -> Sshfs {
        Sshfs {
            proc: mount_sshfs(sshd, export, mnt, pids),
            mnt: mnt.to_path_buf(),
        }
    }

    /// The network disk comes back: a new sshfs at the same (detached) mountpoint.
    fn restart(&mut self, sshd: &Sshd, export: &Path, pids: &Pids) {
        self.proc.kill();
        self.detach();
        self.proc = mount_sshfs(sshd, export, &self.mnt, pids);
    }

    /// The network disk drops away: sshfs dies, the mount is left dead (ENOTCONN).
    fn kill(&mut self) {
        self.proc.kill();
    }

    /// Detaches the (dead) mount: the mountpoint is an empty local directory again.
    fn detach(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// Runs `sshfs -f` and waits until it is mounted.
fn mount_sshfs(sshd: &Sshd, export: &Path, mnt: &Path, pids: &Pids) -> Proc {
    assert!(
        !is_mounted(mnt),
        "{} is already a mountpoint",
        mnt.display()
    );
    let opts = format!(
        "IdentityFile={},IdentitiesOnly=yes,BatchMode=yes,StrictHostKeyChecking=no,\
             UserKnownHostsFile=/dev/null,LogLevel=ERROR,ServerAliveInterval=2,\
             ServerAliveCountMax=3,ConnectTimeout=10",
        sshd.client_key.display()
    );
    let log = mnt.with_extension("sshfs.log");
    let mut proc = Proc::spawn(
        Command::new("sshfs")
            .arg(format!("root@127.0.0.1:{}", export.display()))
            .arg(mnt)
            .arg("-f")
            .args(["-p", &sshd.port.to_string()])
            .args(["-F", "/dev/null"]) // no ssh_config of the machine or of root
            .args(["-o", &opts]),
        log,
        pids,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt) {
        if let Some(status) = proc.exited() {
            panic!("sshfs exited ({status}) before mounting:\n{}", proc.log());
        }
        assert!(
            Instant::now() < deadline,
            "sshfs mount timed out:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

impl Drop for Sshfs {
    fn drop(&mut self) {
        if self.proc.exited().is_none() && is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status();
        }
        self.proc.kill();
        self.detach();
    }
}

// ---------------------------------------------------------------------------------------
// Buckets and replication (as in tests/replication.rs)
// ---------------------------------------------------------------------------------------

fn bucketfs(args: &[&str]) -> (bool, String, String) {
    run(BIN, args)
}

fn rule(id: &str, priority: u32, filter: &str, dest: &str, dmr: &str) -> String {
    format!(
        "  - ID: {id}\n    Status: Enabled\n    Priority: {priority}\n    Filter: {filter}\n    \
         Destination: {{Bucket: 'arn:aws:s3:::{dest}'}}\n    \
         DeleteMarkerReplication: {{Status: {dmr}}}\n"
    )
}

fn version_id(path: &Path) -> String {
    xget(path, "user.s3.version-id")
        .unwrap_or_else(|| panic!("{} has no version id", path.display()))
}

fn status_of(path: &Path) -> Option<String> {
    xget(path, STATUS)
}

fn write(mnt: &Path, key: &str, data: &[u8]) -> String {
    let p = mnt.join(key);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, data).unwrap();
    version_id(&p)
}

/// Some bytes that are not all alike (a multi-chunk copy).
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The last lines of a log that mention replication or errors.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("replicat") || l.contains("error") || l.contains("warn")
        })
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Every version of `key` in `src` is in `dest` (same ids), as a REPLICA with the source's
/// Last-Modified, size and delete-marker flag, and the source says COMPLETED for it.
fn converged(src: &Path, dest: &Path, key: &str) -> bool {
    let ids = stored_versions(src, key);
    !ids.is_empty()
        && stored_versions(dest, key) == ids
        && ids.iter().all(|id| {
            let (Some(s), Some(r)) = (meta(src, key, id), meta(dest, key, id)) else {
                return false;
            };
            s["replication_status"] == "COMPLETED"
                && r["replication_status"] == "REPLICA"
                && ["last_modified_ns", "size", "delete_marker"]
                    .iter()
                    .all(|f| r[f] == s[f])
        })
}

/// Why `key` is not converged (for failure messages).
fn divergence(src: &Path, dest: &Path, key: &str) -> String {
    let ids = stored_versions(src, key);
    let statuses: Vec<Value> = ids
        .iter()
        .map(|id| meta(src, key, id).map_or(Value::Null, |m| m["replication_status"].clone()))
        .collect();
    format!(
        "{key}: source versions {ids:?} (status {statuses:?}), destination versions {:?}",
        stored_versions(dest, key)
    )
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The calls a bucket makes on its own directory, on sshfs: hard links (sshfs sends
/// hardlink@openssh.com), rename over an existing file (posix-rename@openssh.com), flock (the
/// kernel emulates it locally: sshfs has no lock support), fsync of files and directories.
#[test]
fn sshfs_gives_a_bucket_the_calls_it_makes() {
    let dir = tempfile::tempdir().unwrap();
    let pids = Pids::default();
    let export = dir.path().join("export");
    let net = dir.path().join("net");
    fs::create_dir_all(&export).unwrap();
    fs::create_dir_all(&net).unwrap();
    let sshd = Sshd::start(dir.path(), &pids);
    let sshfs = Sshfs::start(&sshd, &export, &net, &pids);
    let _watchdog = Watchdog::start(pids.clone());

    // Hard link: both names are one file on the server.
    fs::write(net.join("a"), b"one").unwrap();
    fs::hard_link(net.join("a"), net.join("b"))
        .unwrap_or_else(|e| panic!("link(2) on sshfs: {e} (errno {:?})", e.raw_os_error()));
    assert_eq!(fs::read(net.join("b")).unwrap(), b"one");
    {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            fs::metadata(export.join("a")).unwrap(),
            fs::metadata(export.join("b")).unwrap(),
        );
        assert_eq!(
            (a.ino(), a.nlink()),
            (b.ino(), 2),
            "one inode on the server"
        );
    }

    // Rename over an existing file replaces it atomically.
    fs::write(net.join("c"), b"two").unwrap();
    fs::rename(net.join("c"), net.join("a"))
        .unwrap_or_else(|e| panic!("rename over a file on sshfs: {e}"));
    assert_eq!(fs::read(export.join("a")).unwrap(), b"two");
    assert_eq!(fs::read(export.join("b")).unwrap(), b"one");
    assert!(!export.join("c").exists());
    // Directories too (rename of a staged directory into place).
    fs::create_dir(net.join("d1")).unwrap();
    fs::rename(net.join("d1"), net.join("d2")).unwrap();
    assert!(export.join("d2").is_dir());

    // flock: exclusive, and a second open file description is refused while it is held.
    let f1 = fs::File::open(net.join("a")).unwrap();
    let f2 = fs::File::open(net.join("a")).unwrap();
    // SAFETY: flock on valid descriptors we own.
    unsafe {
        assert_eq!(
            libc::flock(f1.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            0
        );
        assert_eq!(
            libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EWOULDBLOCK)
        );
        assert_eq!(libc::flock(f1.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(
            libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            0
        );
    }

    // fsync of a file and of a directory.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(net.join("a"))
        .unwrap();
    f.write_all(b"three").unwrap();
    f.sync_all().unwrap();
    fs::File::open(&net).unwrap().sync_all().unwrap();
    drop((f, f1, f2, sshfs, sshd));
    assert!(!is_mounted(&net), "sshfs must be gone after drop");
}

#[test]
fn replication_onto_sshfs_waits_while_the_disk_is_away_and_converges() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pids = Pids::default();
    let w = dir.path();
    let export = w.join("export");
    let net = w.join("net");
    fs::create_dir_all(&export).unwrap();
    fs::create_dir_all(&net).unwrap();
    let sshd = Sshd::start(w, &pids);
    let mut sshfs = Sshfs::start(&sshd, &export, &net, &pids);
    let watchdog = Watchdog::start(pids.clone());
    eprintln!("sshd and sshfs up after {:?}", t0.elapsed());

    // The destination bucket lives on the network disk.
    let dest = net.join("remote");
    let direct = export.join("remote"); // the same bucket, seen on the server
    let (ok, out, err) = bucketfs(&["create", dest.to_str().unwrap()]);
    assert!(ok, "bucketfs create on sshfs failed: {out}{err}");
    assert!(direct.join(".bucketfs/format").is_file());

    let src = w.join("src");
    let src_mnt = w.join("mnt-src");
    fs::create_dir_all(&src_mnt).unwrap();
    let cfg = w.join("replication.yaml");
    fs::write(
        &cfg,
        format!(
            "Role: arn:aws:iam::123456789012:role/test\nBuckets:\n  remote: '{}'\nRules:\n{}",
            dest.display(),
            rule("to-remote", 1, "{}", "remote", "Enabled")
        ),
    )
    .unwrap();
    let m = Mount::start(&src, &src_mnt, &["--config", cfg.to_str().unwrap()]);
    let diag = |keys: &[&str]| {
        let mut s: Vec<String> = keys.iter().map(|k| divergence(&src, &direct, k)).collect();
        s.push(format!("bucketfs log:\n{}", log_tail(&m.log())));
        s.join("\n")
    };

    // 1. The disk is there: versions replicate.
    let mut keys = vec!["a.txt", "dir/b.bin", "c.txt"];
    write(&src_mnt, "a.txt", b"alpha");
    write(&src_mnt, "dir/b.bin", &payload(1, 300_000));
    write(&src_mnt, "c.txt", b"c one");
    write(&src_mnt, "c.txt", b"c two");
    for k in &keys {
        wait_until_with(
            &format!("{k} replicated onto sshfs"),
            TIMEOUT,
            || diag(&[k]),
            || converged(&src, &direct, k),
        );
        let p = src_mnt.join(k);
        wait_until_with(
            &format!("{k} COMPLETED on the source (xattr)"),
            TIMEOUT,
            || diag(&[k]),
            || status_of(&p).as_deref() == Some("COMPLETED"),
        );
        let bytes = fs::read(&p).unwrap();
        assert_eq!(fs::read(dest.join(k)).unwrap(), bytes, "{k} through sshfs");
        assert_eq!(
            fs::read(direct.join(k)).unwrap(),
            bytes,
            "{k} on the server"
        );
        // The version ids agree through both paths too.
        assert_eq!(stored_versions(&dest, k), stored_versions(&src, k), "{k}");
    }
    assert_eq!(stored_versions(&direct, "c.txt").len(), 2);
    eprintln!("first replication done after {:?}", t0.elapsed());

    // 2. The disk goes away: first a dead mount (sshfs killed), then an empty mountpoint.
    sshfs.kill();
    let d_id = write(&src_mnt, "d.txt", b"written while sshfs was dead");
    sshfs.detach();
    assert!(!is_mounted(&net));
    assert_eq!(fs::read_dir(&net).unwrap().count(), 0, "mountpoint empty");
    let e_id = write(&src_mnt, "e.txt", &payload(2, 70_000));
    let a2_id = write(&src_mnt, "a.txt", b"alpha two");
    fs::remove_file(src_mnt.join("dir/b.bin")).unwrap();
    keys.extend(["d.txt", "e.txt"]);
    // Give the engine a few tries (queue poll 2 s, backoff from 0.5 s).
    std::thread::sleep(Duration::from_secs(5));
    for (k, id) in [("d.txt", &d_id), ("e.txt", &e_id), ("a.txt", &a2_id)] {
        assert_eq!(
            status_of(&src_mnt.join(k)).as_deref(),
            Some("PENDING"),
            "{k} while the disk is away\n{}",
            diag(&[k])
        );
        assert_eq!(
            meta(&src, k, id).unwrap()["replication_status"],
            "PENDING",
            "{k}"
        );
        assert!(meta(&direct, k, id).is_none(), "{k} {id} cannot be there");
    }
    let b_versions = stored_versions(&src, "dir/b.bin");
    assert_eq!(b_versions.len(), 2, "version and delete marker");
    let marker = b_versions.last().unwrap();
    let dm = meta(&src, "dir/b.bin", marker).unwrap();
    assert_eq!(dm["delete_marker"], true, "{dm}");
    assert_eq!(dm["replication_status"], "PENDING", "{dm}");
    // Nothing was created on the local disk under the empty mountpoint.
    assert_eq!(
        fs::read_dir(&net).unwrap().count(),
        0,
        "bucketfs wrote into the empty mountpoint of the away disk\n{}",
        diag(&[])
    );
    assert!(
        m.log().contains("replication to remote waits"),
        "the engine says it is waiting:\n{}",
        log_tail(&m.log())
    );
    eprintln!("outage checked after {:?}", t0.elapsed());

    // 3. The disk comes back: everything converges.
    let back = Instant::now();
    sshfs.restart(&sshd, &export, &pids);
    keys.push("dir/b.bin");
    for k in &keys {
        wait_until_with(
            &format!("{k} converged after the disk came back"),
            SLOW,
            || diag(&keys),
            || converged(&src, &direct, k),
        );
    }
    eprintln!("converged {:?} after the disk came back", back.elapsed());
    for k in ["a.txt", "c.txt", "d.txt", "e.txt"] {
        let p = src_mnt.join(k);
        assert_eq!(status_of(&p).as_deref(), Some("COMPLETED"), "{k}");
        let bytes = fs::read(&p).unwrap();
        assert_eq!(fs::read(dest.join(k)).unwrap(), bytes, "{k} through sshfs");
        assert_eq!(
            fs::read(direct.join(k)).unwrap(),
            bytes,
            "{k} on the server"
        );
        assert_eq!(
            meta(&direct, k, &version_id(&p)).unwrap()["delete_marker"],
            false
        );
    }
    // The delete marker is the current version at the destination: no file at the key.
    let rm = meta(&direct, "dir/b.bin", marker).unwrap();
    assert_eq!(rm["delete_marker"], true, "{rm}");
    assert!(!dest.join("dir/b.bin").exists() && !direct.join("dir/b.bin").exists());
    assert!(!src_mnt.join("dir/b.bin").exists());

    // 4. Everything stops cleanly: bucketfs, then sshfs, then sshd.
    m.unmount();
    drop(watchdog);
    drop(sshfs);
    assert!(!is_mounted(&net) && !is_mounted(&src_mnt));
    drop(sshd);
    eprintln!("total {:?}", t0.elapsed());
}
