//! Test fixtures: temp buckets, a real mount of the real binary that is always unmounted on
//! drop (also when the test panics), and small helpers for errno checks.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bucketfs");

/// A temp dir holding a bucket dir and a mountpoint.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub bucket: PathBuf,
    pub mnt: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: mount tests need FUSE (they never skip)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let bucket = dir.path().join("bucket");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Sandbox { dir, bucket, mnt }
    }

    /// Creates the bucket with `bucketfs create` (extra args such as --object-lock).
    pub fn create(&self, extra: &[&str]) {
        let out = Command::new(BIN)
            .arg("create")
            .arg(&self.bucket)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "create failed: {out:?}");
    }

    pub fn mount(&self, extra: &[&str]) -> Mount {
        Mount::start(&self.bucket, &self.mnt, extra)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// A running `bucketfs mount --foreground`; unmounts and reaps it on drop.
pub struct Mount {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub bucket: PathBuf,
}

impl Mount {
    pub fn start(bucket: &Path, mnt: &Path, extra: &[&str]) -> Mount {
        Self::start_with_env(bucket, mnt, extra, &[])
    }

    /// `start`, with these variables added to the daemon's environment.
    pub fn start_with_env(
        bucket: &Path,
        mnt: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        let child = Command::new(BIN)
            .arg("mount")
            .arg(bucket)
            .arg(mnt)
            .arg("--foreground")
            .args(extra)
            .env("BUCKETFS_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(log_file(mnt)).expect("log file"),
            ))
            .spawn()
            .expect("spawning bucketfs");
        let mut m = Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            bucket: bucket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The mount shows in /proc/mounts at FUSE_INIT, before the daemon has started its
        // serving threads; it logs "mounted" once they are.
        let started = format!(" mounted {} at {}", bucket.display(), mnt.display());
        while !is_mounted(mnt) || !m.log().contains(&started) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("bucketfs exited ({status}) before mounting:\n{}", m.log());
            }
            assert!(Instant::now() < deadline, "mount timed out:\n{}", m.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(log_file(&self.mnt)).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (no chance to flush anything) and detaches the dead mount.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        lazy_unmount(&self.mnt);
    }

    /// Sends a signal and waits for a clean exit; returns the exit status success.
    pub fn signal(&mut self, sig: i32) -> bool {
        let mut child = self.child.take().unwrap();
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let ok = wait_timeout(&mut child, Duration::from_secs(20)).is_some_and(|s| s.success());
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
        }
        ok
    }

    pub fn unmount(mut self) {
        self.stop();
    }

    /// Ends the connection from the kernel's side (fusectl's `abort`): every request in flight
    /// fails, also those of a daemon that can no longer answer or die (a thread of it stuck in
    /// an uninterruptible kernel lock ignores SIGKILL). For tests that guard against deadlock.
    pub fn abort_connection(&mut self) {
        let connections = Path::new("/sys/fs/fuse/connections");
        // Read from mountinfo: a stat of the mountpoint could wait on the daemon.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if !mountinfo.lines().any(|l| l.contains(" - fusectl ")) {
            let _ = Command::new("mount")
                .args(["-t", "fusectl", "none"])
                .arg(connections)
                .status();
        }
        let target = self.mnt.to_string_lossy().into_owned();
        let device = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(target.as_str()))
            .and_then(|l| l.split(' ').nth(2));
        if let Some(minor) = device.and_then(|d| d.split(':').nth(1)) {
            let _ = fs::write(connections.join(minor).join("abort"), "1");
        }
        self.kill9();
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("umount").arg(&self.mnt).status();
        if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_file(mnt: &Path) -> PathBuf {
    mnt.with_extension("log")
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn lazy_unmount(mnt: &Path) {
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
}

pub fn is_mounted(mnt: &Path) -> bool {
    let target = mnt.canonicalize().unwrap_or_else(|_| mnt.to_path_buf());
    let target = target.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// The errno of a failed call (panics if it succeeded).
pub fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

/// Version ids listed under `.versions/<key>/`, in directory order.
pub fn versions(mnt: &Path, key: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(mnt.join(".versions").join(key))
        .unwrap_or_else(|e| panic!("listing versions of {key}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 26)
        .collect();
    v.sort();
    v
}

pub fn is_delete_marker(mnt: &Path, key: &str, version: &str) -> bool {
    let p = mnt.join(".versions").join(key).join(version);
    xattr::get(&p, "user.s3.delete-marker").unwrap().unwrap() == b"true"
}

pub fn xget(path: &Path, name: &str) -> Option<String> {
    xattr::get(path, name)
        .unwrap_or_else(|e| panic!("getxattr {name}: {e}"))
        .map(|v| String::from_utf8(v).unwrap())
}

/// Runs a command line tool and returns (success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `sh -c script` inside `dir`.
pub fn sh(dir: &Path, script: &str) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Version ids of `key` stored in the bucket directory (`.bucketfs/versions/KEY/@ID.json`).
pub fn stored_versions(bucket: &Path, key: &str) -> Vec<String> {
    let dir = bucket.join(".bucketfs/versions").join(key);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            let id = n.strip_prefix('@')?.strip_suffix(".json")?;
            Some(id.to_string())
        })
        .collect();
    v.sort();
    v
}

/// The stored metadata of one version, if it is there.
pub fn meta(bucket: &Path, key: &str, id: &str) -> Option<serde_json::Value> {
    let p = bucket
        .join(".bucketfs/versions")
        .join(key)
        .join(format!("@{id}.json"));
    let text = fs::read_to_string(p).ok()?;
    serde_json::from_str(&text).ok()
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` and showing `diag()` after
/// `timeout`.
pub fn wait_until_with(
    what: &str,
    timeout: Duration,
    diag: impl Fn() -> String,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_until_with(what, timeout, String::new, cond);
}

/// `folder` with `n` files `f00`, `f01`, … of one byte each, through the mount.
pub fn folder_of_one_byte_files(sb: &Sandbox, folder: &str, n: usize) {
    fs::create_dir(sb.path(folder)).unwrap();
    for i in 0..n {
        fs::write(sb.path(&format!("{folder}/f{i:02}")), b"x").unwrap();
    }
}

/// A new bucket with `many/` of 20 one-byte files (and what `also` adds), mounted afresh: the
/// kernel's caches start empty, so every stat is a LOOKUP.
pub fn fresh_mount_over_many(sb: &Sandbox, also: impl FnOnce()) -> Mount {
    sb.create(&[]);
    let m = sb.mount(&[]);
    folder_of_one_byte_files(sb, "many", 20);
    also();
    m.unmount();
    sb.mount(&[])
}

/// Runs `script` with `sh -c` as uid/gid 65534 (nobody) via `setpriv`.
pub fn as_nobody(script: &str) -> (bool, String, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
