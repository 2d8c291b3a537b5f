//! What `bucketfs status` reports besides the queue: per destination, completed and failed
//! operations, bytes, and replication latency (the metrics S3 Replication Time Control has).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Latencies kept per destination for the percentiles: recent ones only, so memory stays flat.
const LATENCY_SAMPLES: usize = 2048;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DestinationStats {
    pub completed: u64,
    pub failed: u64,
    pub bytes: u64,
    /// Milliseconds from a version's Last-Modified to its replica being complete.
    pub latencies_ms: VecDeque<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub destinations: BTreeMap<String, DestinationStats>,
}

impl Stats {
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }

    pub fn completed(&mut self, dest: &str, last_modified_ns: i64, bytes: u64) {
        let d = self.destinations.entry(dest.to_string()).or_default();
        d.completed += 1;
        d.bytes += bytes;
        let latency = (crate::bucket::meta::now_ns() - last_modified_ns).max(0) / 1_000_000;
        if d.latencies_ms.len() == LATENCY_SAMPLES {
            d.latencies_ms.pop_front();
        }
        d.latencies_ms.push_back(latency as u64);
    }

    pub fn failed(&mut self, dest: &str) {
        self.destinations
            .entry(dest.to_string())
            .or_default()
            .failed += 1;
    }
}

impl DestinationStats {
    /// (p50, p99, max) latency in ms, if any replication completed.
    pub fn percentiles(&self) -> Option<(u64, u64, u64)> {
        let mut v: Vec<u64> = self.latencies_ms.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.99), *v.last().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let d = DestinationStats {
            latencies_ms: (1..=100).collect(),
            ..Default::default()
        };
        assert_eq!(d.percentiles(), Some((51, 99, 100)));
        assert_eq!(DestinationStats::default().percentiles(), None);
    }
}
