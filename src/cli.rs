//! The command line: parse, call into the library, print one clear line on failure.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::bucket::{Bucket, Durability};
use crate::fs::{BucketFs, FsOptions};
use crate::fuse::{FuseAdapter, MountConfig};

/// How long a published version may wait for stable storage without --sync (group commit).
pub const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "bucketfs",
    version,
    about = "An S3-style versioned bucket, mounted as a directory tree"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Create a new, empty bucket.
    Create {
        bucket_dir: PathBuf,
        /// Enable S3 Object Lock (retention and legal hold) on this bucket; cannot be turned off.
        #[arg(long)]
        object_lock: bool,
        /// uid of the bucket owner (default: the caller).
        #[arg(long)]
        owner: Option<u32>,
    },
    /// Mount a bucket (a missing or empty directory becomes a new bucket).
    Mount(MountArgs),
    /// Replicate what live replication skipped or failed (S3 Batch Replication).
    Replicate {
        bucket_dir: PathBuf,
        /// Versions made before the replication configuration was in force.
        #[arg(long, required_unless_present = "failed", conflicts_with = "failed")]
        existing: bool,
        /// Versions whose replication FAILED.
        #[arg(long)]
        failed: bool,
        /// Rules to use (default: the configuration in force in the bucket).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replication metrics per rule and destination (works while the bucket is mounted).
    Status { bucket_dir: PathBuf },
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    pub bucket_dir: PathBuf,
    pub mountpoint: PathBuf,
    /// replication.yaml: S3 replication rules for this bucket.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Serve in this process until unmounted or sent SIGINT/SIGTERM.
    #[arg(long)]
    pub foreground: bool,
    /// Let users other than the mounting one use the mount.
    #[arg(long)]
    pub allow_other: bool,
    #[arg(long)]
    pub read_only: bool,
    /// fsync every version at close (S3-strict durability; slower for small files).
    #[arg(long)]
    pub sync: bool,
    /// Allow shortening/removing GOVERNANCE retention and deleting GOVERNANCE-locked versions
    /// (S3's x-amz-bypass-governance-retention). COMPLIANCE and legal holds still apply.
    #[arg(long)]
    pub bypass_governance_retention: bool,
    /// Serve every read and write in the daemon instead of kernel passthrough.
    #[arg(long)]
    pub no_passthrough: bool,
    /// Read requests from /dev/fuse even when the kernel offers FUSE over io_uring (see
    /// README, "Requirements": per-CPU queues keep each request on the caller's CPU).
    #[arg(long)]
    pub no_io_uring: bool,
    /// Objects at least this big (bytes) opened for writing without O_TRUNC are changed in
    /// place, keeping the old bytes as a reverse delta, instead of being copied first (when the
    /// disk cannot reflink). 0 always, a huge value never.
    #[arg(long, default_value_t = crate::fs::DEFAULT_DELTA_THRESHOLD)]
    pub delta_threshold: u64,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Where the daemon logs (default: BUCKET_DIR/.bucketfs/bucketfs.log; stderr with --foreground).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Internal: set on the daemon process `bucketfs mount` starts.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

pub fn main() -> ExitCode {
    // The fail points named in FAILPOINTS, in a build for tests (Cargo.toml, `failpoints`).
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Create {
            bucket_dir,
            object_lock,
            owner,
        } => {
            init_logging(None);
            create(&bucket_dir, object_lock, owner)
        }
        Commands::Mount(args) if args.foreground || args.daemon_child => mount_foreground(&args),
        Commands::Mount(args) => mount_daemon(&args),
        Commands::Replicate {
            bucket_dir,
            existing,
            failed: _,
            config,
        } => {
            init_logging(None);
            replicate(&bucket_dir, config.as_deref(), existing)
        }
        Commands::Status { bucket_dir } => {
            init_logging(None);
            status(&bucket_dir)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("bucketfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(file: Option<&Path>) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::new().filter_or("BUCKETFS_LOG", "info"));
    if let Some(path) = file
        && let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        builder.target(env_logger::Target::Pipe(Box::new(f)));
        // A panic's message goes to stderr, which a daemon points at /dev/null: the log
        // gets it too, with the thread and where (the mount serves on: fuser's dispatch).
        let to_stderr = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            log::error!("thread {:?} {info}", thread.name().unwrap_or("unnamed"));
            to_stderr(info);
        }));
    }
    let _ = builder.try_init();
}

fn create(dir: &Path, object_lock: bool, owner: Option<u32>) -> Result<(), String> {
    // SAFETY: getuid has no preconditions.
    let owner = owner.unwrap_or_else(|| unsafe { libc::getuid() });
    Bucket::create(dir, owner, object_lock).map_err(|e| e.to_string())?;
    println!(
        "created bucket {}{}",
        dir.display(),
        if object_lock { " with Object Lock" } else { "" }
    );
    Ok(())
}

fn replicate(dir: &Path, config: Option<&Path>, existing: bool) -> Result<(), String> {
    use crate::replication::commands::{Batch, replicate};
    let batch = if existing {
        Batch::Existing
    } else {
        Batch::Failed
    };
    let report = replicate(dir, config, batch)?;
    println!(
        "{} versions queued, {} replicated, {} still waiting for an unavailable destination",
        report.queued, report.replicated, report.still_pending
    );
    if report.still_pending > 0 {
        return Err(
            "some destinations are unavailable; their work stays PENDING and the mount retries it"
                .into(),
        );
    }
    Ok(())
}

fn status(dir: &Path) -> Result<(), String> {
    let rows = crate::replication::commands::status(dir)?;
    crate::replication::commands::print_status(&rows, &mut std::io::stdout())
        .map_err(|e| e.to_string())
}

/// Starts the daemon and returns once it reports the mount ready (or why it failed).
fn mount_daemon(args: &MountArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--daemon-child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    match line.trim_end() {
        "ready" => Ok(()),
        msg if !msg.is_empty() => {
            let _ = child.wait();
            Err(msg.trim_start_matches("error: ").to_string())
        }
        _ => {
            let status = child.wait().map_err(|e| e.to_string())?;
            Err(format!(
                "the daemon exited ({status}) before {} was mounted; see {}",
                args.mountpoint.display(),
                log_path(args).display()
            ))
        }
    }
}

impl MountArgs {
    fn with_absolute_paths(&self) -> Result<MountArgs, String> {
        let absolute =
            |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(MountArgs {
            bucket_dir: absolute(&self.bucket_dir)?,
            mountpoint: absolute(&self.mountpoint)?,
            config: self.config.as_deref().map(absolute).transpose()?,
            log_file: self.log_file.as_deref().map(absolute).transpose()?,
            ..self.clone()
        })
    }
}

fn log_path(args: &MountArgs) -> PathBuf {
    args.log_file.clone().unwrap_or_else(|| {
        args.bucket_dir
            .join(crate::bucket::key::META_DIR)
            .join("bucketfs.log")
    })
}

fn mount_foreground(args: &MountArgs) -> Result<(), String> {
    if args.daemon_child {
        let result = serve(args, || {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "ready");
            let _ = out.flush();
            redirect_stdout_to_null();
        });
        if let Err(msg) = &result {
            // Before "ready" the parent is listening; afterwards stdout is /dev/null.
            println!("error: {msg}");
            log::error!("{msg}");
        }
        return result;
    }
    serve(args, || {})
}

fn redirect_stdout_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto stdout with a valid descriptor.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
    }
}

/// Mounts, calls `ready`, and serves until unmounted or signalled.
fn serve(args: &MountArgs, ready: impl FnOnce()) -> Result<(), String> {
    // The daemon works from inside the bucket (see `Bucket::open_or_create_as_working_dir`),
    // so every path it was given is made absolute first.
    let args = &args.with_absolute_paths()?;
    let signals = block_termination_signals();
    check_mountpoint(&args.mountpoint)?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let durability = if args.sync {
        Durability::Strict
    } else {
        Durability::GroupCommit
    };

    // Log before opening the bucket where possible: opening runs crash recovery.
    let log = if args.daemon_child {
        Some(log_path(args))
    } else {
        args.log_file.clone()
    };
    let log_now = log
        .as_ref()
        .is_none_or(|p| p.parent().is_some_and(Path::is_dir));
    if log_now {
        init_logging(log.as_deref());
    }
    // Refused before anything is created or mounted.
    let config = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some((
                crate::config::load(path, &args.bucket_dir).map_err(|e| e.to_string())?,
                text,
            ))
        }
        None => None,
    };
    let bucket = Bucket::open_or_create_as_working_dir(&args.bucket_dir, uid, durability)
        .map_err(|e| format!("bucket {}: {e}", args.bucket_dir.display()))?;
    if !log_now {
        init_logging(log.as_deref());
    }

    let bucket = Arc::new(bucket);
    // The configuration given to this mount is the one in force (S3 keeps it on the bucket).
    let replication = match config {
        Some((config, text)) if !args.read_only => Some(
            crate::replication::Engine::new(Arc::clone(&bucket), config, &text)
                .map_err(|e| e.to_string())?
                .start(),
        ),
        _ => {
            if !args.read_only {
                bucket
                    .store_replication_config(None)
                    .map_err(|e| e.to_string())?;
            }
            None
        }
    };
    let fs = Arc::new(BucketFs::new(
        Arc::clone(&bucket),
        FsOptions {
            read_only: args.read_only,
            bypass_governance: args.bypass_governance_retention,
            delta_threshold: args.delta_threshold,
            ..FsOptions::default()
        },
    ));
    let mount = MountConfig {
        allow_other: args.allow_other,
        read_only: args.read_only,
        threads: args.threads,
        passthrough: !args.no_passthrough,
        io_uring: !args.no_io_uring,
        fs_name: format!("bucketfs:{}", args.bucket_dir.display()),
    };
    let adapter = FuseAdapter::new(fs, &mount);
    let (session, mut unmounter) =
        crate::fuse::mount(adapter, &args.mountpoint, &mount).map_err(|e| {
            format!(
                "cannot mount {}: {e}{}",
                args.mountpoint.display(),
                mount_hint(&e)
            )
        })?;
    let committer = bucket.start_committer(GROUP_COMMIT_INTERVAL);
    let _stager = bucket.start_stager();
    let mountpoint = args.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Some(sig) = wait_for_signal(&signals) {
                log::info!("signal {sig}: unmounting {}", mountpoint.display());
                if unmount_waiting_while_busy(&mut unmounter, &mountpoint) {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    // `mount` returns once the serving threads are up, so what it reports (e.g. io_uring in
    // use) is already true when it returns.
    let result = session.run_notifying(|| {
        log::info!(
            "mounted {} at {} (the bucket's paths in this log are relative to it)",
            args.bucket_dir.display(),
            args.mountpoint.display()
        );
        ready();
    });
    drop(replication); // its queue is durable: a restart picks it up
    drop(committer); // last group commit
    log::info!("unmounted {}", args.mountpoint.display());
    result.map_err(|e| format!("serving {}: {e}", args.mountpoint.display()))
}

fn check_mountpoint(mountpoint: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?;
    if !m.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        ));
    }
    let canonical = mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?;
    if let Some(parent) = canonical.parent()
        && let Ok(pm) = std::fs::metadata(parent)
        && pm.dev() != m.dev()
    {
        return Err(format!(
            "mountpoint {} is busy: something is already mounted there",
            mountpoint.display()
        ));
    }
    Ok(())
}

/// How long a signal's unmount is retried while the mount is busy. A file closed just before
/// the signal keeps the mount busy until the kernel's RELEASE of it has been served, which
/// takes milliseconds; a file still open in a program is not waited for longer than this.
const UNMOUNT_BUSY_GRACE: Duration = Duration::from_secs(2);

/// Unmounts, retrying while the mount is busy for [`UNMOUNT_BUSY_GRACE`]. On failure the
/// mount keeps serving (nothing is lost) and the next signal tries again.
fn unmount_waiting_while_busy(unmounter: &mut crate::fuse::Unmounter, mountpoint: &Path) -> bool {
    let deadline = Instant::now() + UNMOUNT_BUSY_GRACE;
    loop {
        match unmounter.unmount() {
            Ok(()) => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let why = if e.raw_os_error() == Some(libc::EBUSY) {
                    ": a file or directory in it is still open (close them and signal again, \
                     or umount)"
                } else {
                    ""
                };
                log::error!(
                    "unmount of {} failed: {e}{why}; still mounted and serving",
                    mountpoint.display()
                );
                return false;
            }
        }
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in this thread and every thread it starts, so one thread can
/// wait for them and unmount cleanly.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// What a user can do about a refused mount: the bare errno says nothing about where.
fn mount_hint(e: &std::io::Error) -> String {
    let dev = std::path::Path::new("/dev/fuse");
    // SAFETY: access(2) on a NUL-terminated path; it only checks permissions.
    let usable = unsafe { libc::access(c"/dev/fuse".as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    hint_for(e.kind(), dev.exists(), usable).unwrap_or_default()
}

fn hint_for(kind: std::io::ErrorKind, dev_exists: bool, dev_usable: bool) -> Option<String> {
    if !dev_exists {
        return Some(" (/dev/fuse is missing: load the fuse module, `modprobe fuse`)".into());
    }
    (kind == std::io::ErrorKind::PermissionDenied && !dev_usable).then(|| {
        " (this user cannot open /dev/fuse for reading and writing: it is usually mode 0666; \
         or mount as root)"
            .into()
    })
}

fn wait_for_signal(set: &libc::sigset_t) -> Option<i32> {
    let mut sig = 0;
    // SAFETY: the set is initialised and its signals are blocked in every thread.
    (unsafe { libc::sigwait(set, &mut sig) } == 0).then_some(sig)
}

#[cfg(test)]
mod tests {
    use super::hint_for;
    use std::io::ErrorKind;

    #[test]
    fn a_refused_mount_says_what_to_do_about_dev_fuse_and_nothing_otherwise() {
        let denied = hint_for(ErrorKind::PermissionDenied, true, false).unwrap();
        assert!(denied.contains("cannot open /dev/fuse"), "{denied}");
        assert!(
            hint_for(ErrorKind::NotFound, false, false)
                .unwrap()
                .contains("modprobe fuse")
        );
        // A usable /dev/fuse: the refusal is the mount's own (fusermount3 says why).
        assert_eq!(hint_for(ErrorKind::PermissionDenied, true, true), None);
        assert_eq!(hint_for(ErrorKind::Other, true, false), None);
    }
}
