//! From the parsed document to a [`ReplicationConfig`]: unwrap, check each rule
//! (`rule.rs`), check the rules against each other, then check destinations on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use crate::config::ReplicationConfig;
use crate::config::destination::{self, PathState};
use crate::config::error::{ConfigError, Position, Reporter};
use crate::config::raw::{RawConfig, RawRule};
use crate::config::rule::{Checked, check_rule};

const MAX_RULES: usize = 1000;

type RawRules = Spanned<Vec<Spanned<RawRule>>>;
type RawBuckets = Spanned<BTreeMap<String, String>>;

/// The configuration proper, out of any `ReplicationConfiguration` wrapper.
struct Document {
    role: Option<String>,
    rules: Option<RawRules>,
    buckets: Option<RawBuckets>,
}

pub(crate) fn validate(
    raw: RawConfig,
    file: &str,
    source_bucket_dir: &Path,
) -> Result<ReplicationConfig, ConfigError> {
    let r = Reporter { file };
    let Document {
        role,
        rules,
        buckets,
    } = unwrap_document(raw, r)?;
    let rules = check_rule_count(rules, r)?;
    let mut checked = rules
        .into_iter()
        .enumerate()
        .map(|(i, raw)| check_rule(i, raw, r))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_ids(&checked, r)?;
    assign_missing_ids(&mut checked);
    check_unique_priorities(&checked, r)?;
    check_one_schema(&checked, r)?;
    check_v1_destinations(&checked, r)?;
    let buckets = resolve_buckets(buckets, source_bucket_dir, r)?;
    let config = ReplicationConfig {
        role,
        rules: Vec::new(),
        buckets,
        source_bucket_dir: source_bucket_dir.to_path_buf(),
    };
    check_destination_dirs(&config, &checked, r)?;
    Ok(ReplicationConfig {
        rules: checked.into_iter().map(|c| c.rule).collect(),
        ..config
    })
}

fn pos_of<T>(s: &Spanned<T>) -> Option<Position> {
    Position::from_location(s.referenced)
}

/// Accepts the bare configuration and the `get-bucket-replication` wrapper
/// `{ReplicationConfiguration: {...}}`; `Buckets` may sit inside or beside the wrapper.
fn unwrap_document(raw: RawConfig, r: Reporter) -> Result<Document, ConfigError> {
    let Some(inner) = raw.replication_configuration else {
        return Ok(Document {
            role: raw.role.map(|s| s.value),
            rules: raw.rules,
            buckets: raw.buckets,
        });
    };
    let pos = pos_of(&inner);
    let inner = *inner.value;
    if raw.role.is_some() || raw.rules.is_some() {
        return Err(r.invalid(
            pos,
            None,
            "ReplicationConfiguration",
            "given together with top-level `Role`/`Rules`; expected either the bare \
             configuration or one `ReplicationConfiguration` wrapping it",
        ));
    }
    if inner.replication_configuration.is_some() {
        return Err(r.invalid(
            pos,
            None,
            "ReplicationConfiguration.ReplicationConfiguration",
            "nested wrapper; expected `Role` and `Rules` inside `ReplicationConfiguration`",
        ));
    }
    let buckets = match (raw.buckets, inner.buckets) {
        (Some(b), Some(_)) => {
            return Err(r.invalid(
                pos_of(&b),
                None,
                "Buckets",
                "given both inside and beside `ReplicationConfiguration`; expected it once",
            ));
        }
        (a, b) => a.or(b),
    };
    Ok(Document {
        role: inner.role.map(|s| s.value),
        rules: inner.rules,
        buckets,
    })
}

fn check_rule_count(
    rules: Option<RawRules>,
    r: Reporter,
) -> Result<Vec<Spanned<RawRule>>, ConfigError> {
    let expected = "expected a list of 1 to 1000 rules";
    let Some(rules) = rules else {
        return Err(r.invalid(None, None, "Rules", format!("missing; {expected}")));
    };
    let n = rules.value.len();
    if n == 0 || n > MAX_RULES {
        return Err(r.invalid(
            pos_of(&rules),
            None,
            "Rules",
            format!("has {n} rules; {expected}"),
        ));
    }
    Ok(rules.value)
}

fn check_unique_ids(rules: &[Checked], r: Reporter) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for c in rules {
        let Some(id) = c.rule.id.as_deref() else {
            continue;
        };
        if let Some(first) = seen.insert(id, &c.label) {
            return Err(r.invalid(
                c.id_pos.or(c.pos),
                Some(&c.label),
                "ID",
                format!("duplicate of {first}'s ID; expected every rule's ID to be unique"),
            ));
        }
    }
    Ok(())
}

/// S3 gives a rule without `ID` a generated one. Ours is `rule-N` (N = position) so
/// that it is the same on every load and log lines can be matched to the file; a
/// suffix avoids IDs the file already uses.
fn assign_missing_ids(rules: &mut [Checked]) {
    let mut taken: BTreeSet<String> = rules.iter().filter_map(|c| c.rule.id.clone()).collect();
    for (i, c) in rules.iter_mut().enumerate() {
        if c.rule.id.is_some() {
            continue;
        }
        let base = format!("rule-{}", i + 1);
        let id = std::iter::once(base.clone())
            .chain((2..).map(|k| format!("{base}-{k}")))
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or(base);
        taken.insert(id.clone());
        c.rule.id = Some(id);
    }
}

fn check_unique_priorities(rules: &[Checked], r: Reporter) -> Result<(), ConfigError> {
    let mut seen: HashMap<i64, &str> = HashMap::new();
    for c in rules {
        let Some(p) = c.rule.priority else { continue };
        if let Some(first) = seen.insert(p, &c.label) {
            return Err(r.invalid(
                c.priority_pos.or(c.pos),
                Some(&c.label),
                "Priority",
                format!(
                    "{p} is also {first}'s priority; expected every rule's Priority to be unique"
                ),
            ));
        }
    }
    Ok(())
}

/// S3 reads the whole configuration with one schema, decided by its shape: all rules
/// V1 (`Prefix` on the rule) or all V2 (`Filter`).
fn check_one_schema(rules: &[Checked], r: Reporter) -> Result<(), ConfigError> {
    let Some(first) = rules.first() else {
        return Ok(());
    };
    let schema = |c: &Checked| {
        if c.rule.is_v1() {
            ("V1", "Prefix")
        } else {
            ("V2", "Filter")
        }
    };
    let (want, want_field) = schema(first);
    match rules.iter().find(|c| c.rule.is_v1() != first.rule.is_v1()) {
        Some(c) => {
            let (got, field) = schema(c);
            Err(r.invalid(
                c.schema_pos.or(c.pos),
                Some(&c.label),
                field,
                format!(
                    "uses the {got} schema but {} uses the {want} schema (`{want_field}`); \
                     expected all rules to use one schema (prefer `Filter`, V2)",
                    first.label
                ),
            ))
        }
        None => Ok(()),
    }
}

/// V1 limits, as S3 enforces them: a single destination bucket, and prefixes that do
/// not overlap (V1 has no Priority to decide between overlapping rules).
fn check_v1_destinations(rules: &[Checked], r: Reporter) -> Result<(), ConfigError> {
    let v1: Vec<&Checked> = rules.iter().filter(|c| c.rule.is_v1()).collect();
    let Some(first) = v1.first() else {
        return Ok(());
    };
    let dest = &first.rule.destination.bucket_name;
    if let Some(c) = v1.iter().find(|c| c.rule.destination.bucket_name != *dest) {
        return Err(r.invalid(
            c.bucket_pos.or(c.pos),
            Some(&c.label),
            "Destination.Bucket",
            format!(
                "is {:?}, but {} replicates to {dest:?}; the V1 schema allows one destination \
                 bucket (use `Filter`, V2, for several)",
                c.rule.destination.bucket_name, first.label
            ),
        ));
    }
    for (i, a) in v1.iter().enumerate() {
        for b in &v1[..i] {
            check_no_overlap(a, b, r)?;
        }
    }
    Ok(())
}

fn check_no_overlap(a: &Checked, b: &Checked, r: Reporter) -> Result<(), ConfigError> {
    let prefix = |c: &Checked| match &c.rule.filter {
        crate::config::RuleFilter::V1Prefix(p) => p.clone(),
        _ => String::new(),
    };
    let (pa, pb) = (prefix(a), prefix(b));
    if pa.starts_with(&pb) || pb.starts_with(&pa) {
        return Err(r.invalid(
            a.schema_pos.or(a.pos),
            Some(&a.label),
            "Prefix",
            format!(
                "{pa:?} overlaps {}'s prefix {pb:?}; V1 rules for one destination need \
                 non-overlapping prefixes (use `Filter` and `Priority`, V2, to rank overlapping rules)",
                b.label
            ),
        ));
    }
    Ok(())
}

fn resolve_buckets(
    buckets: Option<RawBuckets>,
    source_bucket_dir: &Path,
    r: Reporter,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let Some(buckets) = buckets else {
        return Ok(BTreeMap::new());
    };
    let pos = pos_of(&buckets);
    let mut out = BTreeMap::new();
    for (name, path) in buckets.value {
        destination::check_bucket_name(&name)
            .map_err(|m| r.invalid(pos, None, &format!("Buckets.{name}"), m))?;
        if path.is_empty() {
            return Err(r.invalid(
                pos,
                None,
                &format!("Buckets.{name}"),
                "is empty; expected the path of the bucket's directory",
            ));
        }
        out.insert(name, destination::resolve_mapped(source_bucket_dir, &path));
    }
    Ok(out)
}

/// The on-disk checks: never replicate a bucket into itself (or into/around its own
/// directory, which would feed replicas back as new objects), and refuse paths that
/// hold something other than a bucket. A missing destination only warns: it may be
/// created after the config is written.
fn check_destination_dirs(
    config: &ReplicationConfig,
    rules: &[Checked],
    r: Reporter,
) -> Result<(), ConfigError> {
    let source_name = config.source_bucket_dir.file_name();
    let source_canon = destination::canonical(&config.source_bucket_dir);
    let mut warned = BTreeSet::new();
    for c in rules {
        let name = &c.rule.destination.bucket_name;
        let path = config.destination_dir(name);
        let err = |msg: String| {
            r.invalid(
                c.bucket_pos.or(c.pos),
                Some(&c.label),
                "Destination.Bucket",
                msg,
            )
        };
        if source_name.is_some_and(|s| s == name.as_str()) {
            return Err(err(format!(
                "names the source bucket {name:?} itself; expected a different bucket \
                 (a bucket replicating into itself would loop)"
            )));
        }
        if let (Some(src), Some(dst)) = (&source_canon, destination::canonical(&path)) {
            check_not_nested(src, &dst)
                .map_err(|m| err(format!("resolves to {}, {m}", dst.display())))?;
        }
        match destination::inspect(&path) {
            PathState::Bucket => {}
            PathState::NotABucket(why) => {
                return Err(err(format!(
                    "resolves to {}, but {why}; expected a bucketfs bucket (a directory \
                     with `.bucketfs/format`) or an empty directory",
                    path.display()
                )));
            }
            PathState::Missing if c.rule.is_enabled() && warned.insert(name.clone()) => {
                log::warn!(
                    "{}: {}: destination bucket {name:?} does not exist at {}; replication \
                     to it will fail until it is created",
                    r.file,
                    c.label,
                    path.display()
                );
            }
            PathState::Missing => {}
        }
    }
    Ok(())
}

fn check_not_nested(source: &Path, dest: &Path) -> Result<(), &'static str> {
    if dest == source {
        Err("the source bucket's own directory; expected a different bucket")
    } else if dest.starts_with(source) {
        Err(
            "inside the source bucket; expected a directory outside it (replicas would be replicated again)",
        )
    } else if source.starts_with(dest) {
        Err("which contains the source bucket; expected a directory outside it")
    } else {
        Ok(())
    }
}
