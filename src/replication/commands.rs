//! `bucketfs replicate` (S3 Batch Replication) and `bucketfs status` (S3 replication metrics).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walkdir::WalkDir;

use super::stats::Stats;
use super::{Engine, open_for_commands};
use crate::bucket::{FAILED, ObjectKey, PENDING, VersionMeta};
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
    let queued = queue_batch(&engine, batch)?;
    let tty = std::io::stderr().is_terminal();
    let before = opened.bucket.queue().map_err(|e| e.to_string())?.len();
    let still_pending = engine
        .drain(Instant::now() + BATCH_DEADLINE, |waiting| {
            let left = opened.bucket.queue().map(|q| q.len()).unwrap_or(0);
            let done = before.saturating_sub(left);
            let line = format!(
                "{} {done}/{before} versions done, {waiting} waiting",
                bar(done, before)
            );
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        })
        .map_err(|e| e.to_string())?;
    if tty {
        eprintln!();
    }
    let left = opened.bucket.queue().map_err(|e| e.to_string())?.len();
    Ok(BatchReport {
        queued,
        replicated: before.saturating_sub(left),
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

/// Queues the batch's versions; returns how many.
fn queue_batch(engine: &Engine, batch: Batch) -> Result<usize, String> {
    let bucket = &engine.source;
    let mut queued = 0;
    let mut consider = |meta: VersionMeta| -> Result<(), String> {
        let states: BTreeMap<String, String> = match batch {
            Batch::Existing if meta.replication.is_none() && meta.replica_of.is_none() => engine
                .rules
                .destinations_of_version(&meta)
                .into_iter()
                .map(|d| (d, PENDING.to_string()))
                .collect(),
            Batch::Failed => {
                let mut states = meta.replication.clone().unwrap_or_default();
                let mut any = false;
                for s in states.values_mut().filter(|s| s.as_str() == FAILED) {
                    *s = PENDING.to_string();
                    any = true;
                }
                if !any {
                    return Ok(());
                }
                states
            }
            _ => return Ok(()),
        };
        if states.is_empty() {
            return Ok(());
        }
        let key = ObjectKey::new(meta.key.clone()).map_err(|e| e.to_string())?;
        bucket
            .requeue(&key, &meta.version_id, states)
            .map_err(|e| e.to_string())?;
        queued += 1;
        Ok(())
    };
    // Every key with history, then plain files that have none yet (version null).
    let versions_root = bucket.versions_root();
    for entry in WalkDir::new(&versions_root)
        .into_iter()
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy();
        if entry.file_type().is_file() && name.starts_with('@') && name.ends_with(".json") {
            let meta: VersionMeta =
                serde_json::from_slice(&std::fs::read(entry.path()).map_err(|e| e.to_string())?)
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            consider(meta)?;
        }
    }
    if batch == Batch::Existing {
        let root = bucket.root().to_path_buf();
        let walker = WalkDir::new(&root)
            .min_depth(1)
            .into_iter()
            .filter_entry(|e| e.depth() > 1 || e.file_name() != crate::bucket::key::META_DIR);
        for entry in walker.filter_map(Result::ok) {
            if entry.file_type().is_dir() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&root) else {
                continue;
            };
            let Some(key) = rel.to_str().and_then(|k| ObjectKey::new(k).ok()) else {
                continue;
            };
            if bucket.versions(&key).map(|v| v.len() == 1).unwrap_or(false)
                && !bucket.has_version(&key, crate::bucket::NULL_VERSION)
                && let Ok(Some(meta)) = bucket.current(&key)
                && meta.version_id == crate::bucket::NULL_VERSION
            {
                consider(meta)?;
            }
        }
    }
    Ok(queued)
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
