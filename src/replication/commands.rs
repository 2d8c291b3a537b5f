//! `bucketfs replicate` (S3 Batch Replication) and `bucketfs status` (S3 replication metrics).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use walkdir::WalkDir;

use super::stats::Stats;
use super::{BatchProgress, Engine, open_for_commands};
use crate::bucket::{FAILED, ObjectKey, VersionMeta};
use crate::config::{self, ReplicationConfig};

/// Which versions `bucketfs replicate` takes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// Versions made before the configuration was in force (never replicated live).
    Existing,
    /// Versions whose replication FAILED.
    Failed,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub queued: usize,
    pub replicated: usize,
    pub still_pending: usize,
}

/// How long `replicate` keeps retrying unavailable destinations before it reports them.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);

pub fn replicate(
    dir: &Path,
    config_file: Option<&Path>,
    batch: Batch,
) -> Result<BatchReport, String> {
    let opened = open_for_commands(dir)?;
    let (config, text) = match config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (config::load(path, dir).map_err(|e| e.to_string())?, text)
        }
        None => opened.config.ok_or_else(|| {
            format!(
                "no replication configuration is in force in {}: mount it with --config, or pass --config",
                dir.display()
            )
        })?,
    };
    let engine =
        Engine::new(Arc::clone(&opened.bucket), config, &text).map_err(|e| e.to_string())?;
    let tty = std::io::stderr().is_terminal();
    let show = |line: String| {
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    };
    // The scan feeds the workers directly; the bar shows what it has found so far.
    let progress = BatchProgress::default();
    let finished = AtomicBool::new(false);
    let line = |progress: &BatchProgress| {
        let found = progress.found.load(Ordering::Relaxed);
        let done = progress.done.load(Ordering::Relaxed);
        let deferred = progress.deferred.load(Ordering::Relaxed);
        format!(
            "{} {done}/{found} versions done, {deferred} waiting",
            bar(done + deferred, found)
        )
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let every = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            let mut last = Instant::now();
            while !finished.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
                if last.elapsed() >= every {
                    show(line(&progress));
                    last = Instant::now();
                }
            }
        });
        let result = engine.replicate_batch(scan(&engine, batch, &progress), &progress);
        finished.store(true, Ordering::Release);
        result
    })?;
    show(line(&progress));
    let queued = progress.found.into_inner();
    let mut replicated = progress.done.into_inner();
    let deferred = progress.deferred.into_inner();
    let mut still_pending = 0;
    if deferred > 0 {
        // Work for destinations that were unavailable went to the queue: retry it for a while.
        let before = opened.bucket.queue().map_err(|e| e.to_string())?.len();
        still_pending = engine
            .drain(Instant::now() + BATCH_DEADLINE, |waiting| {
                let left = opened.bucket.queue().map(|q| q.len()).unwrap_or(0);
                let done = before.saturating_sub(left);
                show(format!(
                    "{} {done}/{before} queued versions done, {waiting} waiting",
                    bar(done, before)
                ));
            })
            .map_err(|e| e.to_string())?;
        let left = opened.bucket.queue().map_err(|e| e.to_string())?.len();
        replicated += before.saturating_sub(left).min(deferred);
    }
    if tty {
        eprintln!();
    }
    Ok(BatchReport {
        queued,
        replicated,
        still_pending,
    })
}

fn bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!("[{}{}]", "#".repeat(filled), " ".repeat(WIDTH - filled))
}

/// The batch's versions with the destinations each must go to, streamed: every key with
/// history (its versions oldest first, so they reach the replica in order), then plain files
/// that have none yet (version null). Counts them in `progress.found`.
fn scan<'a>(
    engine: &'a Engine,
    batch: Batch,
    progress: &'a BatchProgress,
) -> impl Iterator<Item = Result<(VersionMeta, Vec<String>), String>> + 'a {
    let bucket = &engine.source;
    let plan = move |meta: &VersionMeta| -> Vec<String> {
        match batch {
            Batch::Existing if meta.replication.is_none() && meta.replica_of.is_none() => {
                engine.rules.destinations_of_version(meta)
            }
            Batch::Failed => meta
                .replication
                .iter()
                .flatten()
                .filter(|(_, s)| s.as_str() == FAILED)
                .map(|(d, _)| d.clone())
                .collect(),
            _ => Vec::new(),
        }
    };
    let keep = move |meta: VersionMeta| {
        let dests = plan(&meta);
        if dests.is_empty() {
            return None;
        }
        progress.found.fetch_add(1, Ordering::Relaxed);
        Some(Ok((meta, dests)))
    };
    let stored = WalkDir::new(bucket.versions_root())
        .sort_by(|a, b| version_order(a.file_name()).cmp(&version_order(b.file_name())))
        .into_iter()
        .filter_map(Result::ok)
        .flat_map(move |entry| {
            let name = entry.file_name().to_string_lossy();
            if !entry.file_type().is_file() {
                return Vec::new();
            }
            if !name.starts_with('@') {
                // A deleted key's tombstone: its version and delete marker, no files of theirs.
                return bucket
                    .tombstone_versions(entry.path())
                    .into_iter()
                    .filter_map(keep)
                    .collect();
            }
            if !name.ends_with(".json") {
                return Vec::new();
            }
            let meta = std::fs::read(entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()))
                .and_then(|bytes| {
                    serde_json::from_slice::<VersionMeta>(&bytes)
                        .map_err(|e| format!("{}: {e}", entry.path().display()))
                });
            match meta {
                Ok(meta) => keep(meta).into_iter().collect(),
                Err(e) => vec![Err(e)],
            }
        });
    let root = bucket.root().to_path_buf();
    let unversioned = (batch == Batch::Existing)
        .then(|| {
            WalkDir::new(root.clone())
                .min_depth(1)
                .into_iter()
                .filter_entry(|e| e.depth() > 1 || e.file_name() != crate::bucket::key::META_DIR)
        })
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(move |entry| {
            if entry.file_type().is_dir() {
                return None;
            }
            let rel = entry.path().strip_prefix(&root).ok()?;
            let key = rel.to_str().and_then(|k| ObjectKey::new(k).ok())?;
            keep(bucket.unversioned_without_history(&key)?)
        });
    stored.chain(unversioned)
}

/// Versions in creation order within a key's folder: `null` (before versioning) first, then
/// ULIDs by name.
fn version_order(name: &std::ffi::OsStr) -> (bool, &std::ffi::OsStr) {
    (!name.as_encoded_bytes().starts_with(b"@null."), name)
}

/// One row of `bucketfs status`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub rule: String,
    pub destination: String,
    pub pending_ops: u64,
    pub pending_bytes: u64,
    pub failed_ops: u64,
    pub completed_ops: u64,
    /// p50, p99, max replication latency in ms.
    pub latency_ms: Option<(u64, u64, u64)>,
}

pub fn status(dir: &Path) -> Result<Vec<StatusRow>, String> {
    let opened = open_for_commands(dir)?;
    let Some((config, _)) = opened.config else {
        return Err(format!(
            "no replication configuration is in force in {}",
            dir.display()
        ));
    };
    let bucket = &opened.bucket;
    let stats = Stats::load(&bucket.stats_path());
    let mut rows: BTreeMap<(String, String), StatusRow> = BTreeMap::new();
    for rule in config.rules.iter().filter(|r| r.is_enabled()) {
        let dest = rule.destination.bucket_name.clone();
        let id = rule.id.clone().unwrap_or_default();
        let d = stats.destinations.get(&dest).cloned().unwrap_or_default();
        rows.insert(
            (id.clone(), dest.clone()),
            StatusRow {
                rule: id,
                destination: dest,
                failed_ops: d.failed,
                completed_ops: d.completed,
                latency_ms: d.percentiles(),
                ..Default::default()
            },
        );
    }
    for (_, entry) in bucket.queue().map_err(|e| e.to_string())? {
        let Ok(key) = ObjectKey::new(entry.key.clone()) else {
            continue;
        };
        let Ok(meta) = bucket.meta(&key, &entry.version_id) else {
            continue;
        };
        for dest in meta.pending_destinations() {
            let rule = rule_for(&config, &dest, &meta);
            if let Some(row) = rows.get_mut(&(rule, dest)) {
                row.pending_ops += 1;
                row.pending_bytes += if meta.delete_marker { 0 } else { meta.size };
            }
        }
    }
    Ok(rows.into_values().collect())
}

fn rule_for(config: &ReplicationConfig, dest: &str, meta: &VersionMeta) -> String {
    config
        .winning_rule(dest, &meta.key, &meta.tags)
        .or_else(|| config.rules_for_destination(dest).next())
        .and_then(|r| r.id.clone())
        .unwrap_or_default()
}

pub fn print_status(rows: &[StatusRow], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:<20} {:>11} {:>13} {:>10} {:>9} {:>22}",
        "RULE",
        "DESTINATION",
        "PENDING OPS",
        "PENDING BYTES",
        "COMPLETED",
        "FAILED",
        "LATENCY p50/p99/max"
    )?;
    for r in rows {
        let latency = r
            .latency_ms
            .map_or("-".to_string(), |(a, b, c)| format!("{a}/{b}/{c} ms"));
        writeln!(
            out,
            "{:<20} {:<20} {:>11} {:>13} {:>10} {:>9} {:>22}",
            r.rule,
            r.destination,
            r.pending_ops,
            r.pending_bytes,
            r.completed_ops,
            r.failed_ops,
            latency
        )?;
    }
    Ok(())
}
