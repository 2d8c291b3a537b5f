//! Checking and converting one rule on its own. Checks that compare rules with
//! each other, and the file-system checks, are in `validate.rs`.

use serde_saphyr::Spanned;

use crate::config::destination::bucket_name_from;
use crate::config::error::{ConfigError, Position, Reporter};
use crate::config::raw::{RawDestination, RawFilter, RawRule, RawTag, StatusBlock};
use crate::config::syntax::rule_label;
use crate::config::{Destination, Rule, RuleFilter, RuleStatus};

// S3's limits (API reference; SDK docs for ReplicationRule and Tag).
const MAX_ID_CHARS: usize = 255;
const MAX_PREFIX_CHARS: usize = 1024;
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;
/// RTC and its metrics threshold only come in one size.
const RTC_MINUTES: i64 = 15;
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
    "FSX_OPENZFS",
];

/// A converted rule plus what later checks need to point back into the file.
pub(crate) struct Checked {
    pub rule: Rule,
    /// `rule #N (ID "x")`, or `rule #N` when the file gives no ID.
    pub label: String,
    pub pos: Option<Position>,
    pub id_pos: Option<Position>,
    pub priority_pos: Option<Position>,
    pub schema_pos: Option<Position>,
    pub bucket_pos: Option<Position>,
}

/// Error context for one rule: which file, which rule.
struct Ctx<'a> {
    r: Reporter<'a>,
    label: &'a str,
    pos: Option<Position>,
}

impl Ctx<'_> {
    fn err(&self, pos: Option<Position>, field: &str, msg: impl Into<String>) -> ConfigError {
        self.r
            .invalid(pos.or(self.pos), Some(self.label), field, msg)
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Option<Position> {
    Position::from_location(s.referenced)
}

fn enabled(block: &Option<StatusBlock>) -> bool {
    matches!(block, Some(b) if b.status == RuleStatus::Enabled)
}

pub(crate) fn check_rule(
    index: usize,
    raw: Spanned<RawRule>,
    r: Reporter<'_>,
) -> Result<Checked, ConfigError> {
    let pos = pos_of(&raw);
    let raw = raw.value;
    let label = rule_label(index, raw.id.as_ref().map(|s| s.value.as_str()));
    let cx = Ctx {
        r,
        label: &label,
        pos,
    };
    check_id(&cx, raw.id.as_ref())?;
    let (filter, schema_pos) = check_schema(&cx, &raw)?;
    let v1 = matches!(filter, RuleFilter::V1Prefix(_));
    if v1 {
        reject_v2_fields(&cx, &raw)?;
    }
    let priority = check_priority(&cx, &raw, v1)?;
    let delete_marker_replication = v1 || check_delete_markers(&cx, &raw, &filter)?;
    let (replica_modifications, sse_kms) = raw
        .source_selection_criteria
        .as_ref()
        .map(|s| {
            let s = &s.value;
            (
                enabled(&s.replica_modifications),
                enabled(&s.sse_kms_encrypted_objects),
            )
        })
        .unwrap_or_default();
    let bucket_pos = pos_of(&raw.destination.value.bucket);
    let destination = check_destination(&cx, raw.destination, sse_kms)?;
    let existing = enabled(&raw.existing_object_replication.map(|s| s.value));
    let id_pos = raw.id.as_ref().and_then(pos_of);
    Ok(Checked {
        rule: Rule {
            id: raw.id.map(|s| s.value),
            status: raw.status,
            priority,
            filter,
            destination,
            delete_marker_replication,
            replica_modifications,
            sse_kms_encrypted_objects: sse_kms,
            existing_object_replication: existing,
        },
        id_pos,
        priority_pos: raw.priority.as_ref().and_then(pos_of),
        schema_pos,
        bucket_pos,
        label,
        pos,
    })
}

fn check_id(cx: &Ctx, id: Option<&Spanned<String>>) -> Result<(), ConfigError> {
    let Some(id) = id else { return Ok(()) };
    let n = id.value.chars().count();
    if n == 0 {
        return Err(cx.err(
            pos_of(id),
            "ID",
            "is empty; expected 1 to 255 characters, or no `ID` at all to have one generated",
        ));
    }
    if n > MAX_ID_CHARS {
        return Err(cx.err(
            pos_of(id),
            "ID",
            format!("is {n} characters long; expected at most {MAX_ID_CHARS}"),
        ));
    }
    Ok(())
}

/// V1 (`Prefix` on the rule) or V2 (`Filter`): exactly one of the two.
fn check_schema(cx: &Ctx, raw: &RawRule) -> Result<(RuleFilter, Option<Position>), ConfigError> {
    match (&raw.prefix.0, &raw.filter.0) {
        (Some(p), Some(_)) => Err(cx.err(
            pos_of(p),
            "Prefix",
            "a rule takes either `Prefix` (V1 schema) or `Filter` (V2 schema), not both; \
             move the prefix into `Filter: {Prefix: ...}`",
        )),
        (None, None) => Err(cx.err(
            None,
            "Filter",
            "missing; expected `Filter` (V2 schema; `Filter: {}` selects the whole bucket) \
             or `Prefix` directly on the rule (V1 schema)",
        )),
        (Some(p), None) => {
            let prefix = p.value.clone().unwrap_or_default();
            check_prefix(cx, pos_of(p), "Prefix", &prefix)?;
            Ok((RuleFilter::V1Prefix(prefix), pos_of(p)))
        }
        (None, Some(f)) => Ok((check_filter(cx, pos_of(f), f.value.as_ref())?, pos_of(f))),
    }
}

/// The V1 schema predates these fields; S3 refuses them there ("cannot be used for
/// this version of Cross Region Replication configuration schema").
fn reject_v2_fields(cx: &Ctx, raw: &RawRule) -> Result<(), ConfigError> {
    let rm = raw
        .source_selection_criteria
        .as_ref()
        .filter(|s| s.value.replica_modifications.is_some());
    let present: [(&str, Option<Option<Position>>); 6] = [
        ("Priority", raw.priority.as_ref().map(pos_of)),
        (
            "DeleteMarkerReplication",
            raw.delete_marker_replication.as_ref().map(pos_of),
        ),
        (
            "SourceSelectionCriteria.ReplicaModifications",
            rm.map(pos_of),
        ),
        (
            "ExistingObjectReplication",
            raw.existing_object_replication.as_ref().map(pos_of),
        ),
        (
            "Destination.ReplicationTime",
            raw.destination.value.replication_time.as_ref().map(pos_of),
        ),
        (
            "Destination.Metrics",
            raw.destination.value.metrics.as_ref().map(pos_of),
        ),
    ];
    match present.into_iter().find(|(_, p)| p.is_some()) {
        Some((field, pos)) => Err(cx.err(
            pos.flatten(),
            field,
            format!(
                "cannot be used with the V1 schema (`Prefix` directly on the rule); \
                 expected `Filter: {{Prefix: ...}}` (V2 schema) to use `{field}`"
            ),
        )),
        None => Ok(()),
    }
}

fn check_priority(cx: &Ctx, raw: &RawRule, v1: bool) -> Result<Option<i64>, ConfigError> {
    match &raw.priority {
        None if v1 => Ok(None),
        None => Err(cx.err(
            None,
            "Priority",
            "missing; a rule with `Filter` (V2 schema) needs a `Priority`: \
             an integer >= 0, unique among the rules (higher wins)",
        )),
        Some(p) if p.value < 0 => Err(cx.err(
            pos_of(p),
            "Priority",
            format!("is {}; expected an integer >= 0", p.value),
        )),
        Some(p) => Ok(Some(p.value)),
    }
}

/// V2 only. S3 requires the field with a Filter; we default it to Disabled (loudly)
/// because AWS's own documented examples, such as the replica-modification-sync
/// one, leave it out.
fn check_delete_markers(cx: &Ctx, raw: &RawRule, filter: &RuleFilter) -> Result<bool, ConfigError> {
    let Some(dmr) = &raw.delete_marker_replication else {
        log::warn!(
            "{}: {}: no `DeleteMarkerReplication`; delete markers will NOT be replicated \
             (add `DeleteMarkerReplication: {{Status: Enabled}}` to replicate deletes)",
            cx.r.file,
            cx.label
        );
        return Ok(false);
    };
    let on = dmr.value.status == RuleStatus::Enabled;
    let tag_based = match filter {
        RuleFilter::Tag { .. } => true,
        RuleFilter::And { tags, .. } => !tags.is_empty(),
        _ => false,
    };
    if on && tag_based {
        return Err(cx.err(
            pos_of(dmr),
            "DeleteMarkerReplication.Status",
            "is Enabled, but the rule filters on tags and a delete marker has no tags, \
             so S3 does not replicate delete markers for tag-based rules; expected `Disabled`",
        ));
    }
    Ok(on)
}

fn check_filter(
    cx: &Ctx,
    pos: Option<Position>,
    filter: Option<&RawFilter>,
) -> Result<RuleFilter, ConfigError> {
    let Some(f) = filter else {
        return Ok(RuleFilter::Empty);
    };
    let given: Vec<&str> = [
        f.prefix.as_ref().map(|_| "`Prefix`"),
        f.tag.as_ref().map(|_| "`Tag`"),
        f.and.as_ref().map(|_| "`And`"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(cx.err(
            pos,
            "Filter",
            format!(
                "has {}; expected exactly one of `Prefix`, `Tag` or `And` \
                 (combine conditions inside `And`)",
                given.join(" and ")
            ),
        ));
    }
    if let Some(p) = &f.prefix {
        check_prefix(cx, pos, "Filter.Prefix", p)?;
        return Ok(RuleFilter::Prefix(p.clone()));
    }
    if let Some(t) = &f.tag {
        let (key, value) = check_tag(cx, pos, "Filter.Tag", t)?;
        return Ok(RuleFilter::Tag { key, value });
    }
    match &f.and {
        Some(and) => check_and(cx, pos, and.prefix.as_ref(), &and.tags),
        None => Ok(RuleFilter::Empty),
    }
}

/// S3 rejects an `And` holding a single condition (MalformedXML): one condition
/// belongs directly in `Filter`.
fn check_and(
    cx: &Ctx,
    pos: Option<Position>,
    prefix: Option<&String>,
    tags: &[RawTag],
) -> Result<RuleFilter, ConfigError> {
    let conditions = usize::from(prefix.is_some()) + tags.len();
    if conditions < 2 {
        return Err(cx.err(
            pos,
            "Filter.And",
            format!(
                "has {conditions} condition(s); expected at least 2 (a `Prefix` and/or `Tags`). \
                 For a single condition use `Filter: {{Prefix: ...}}` or `Filter: {{Tag: ...}}`"
            ),
        ));
    }
    if let Some(p) = prefix {
        check_prefix(cx, pos, "Filter.And.Prefix", p)?;
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(tags.len());
    for (i, t) in tags.iter().enumerate() {
        let (key, value) = check_tag(cx, pos, &format!("Filter.And.Tags[{i}]"), t)?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(cx.err(
                pos,
                "Filter.And.Tags",
                format!("has tag key {key:?} twice; expected each key at most once"),
            ));
        }
        out.push((key, value));
    }
    Ok(RuleFilter::And {
        prefix: prefix.cloned(),
        tags: out,
    })
}

fn check_prefix(cx: &Ctx, pos: Option<Position>, field: &str, p: &str) -> Result<(), ConfigError> {
    let n = p.chars().count();
    if n > MAX_PREFIX_CHARS {
        return Err(cx.err(
            pos,
            field,
            format!("is {n} characters long; expected at most {MAX_PREFIX_CHARS}"),
        ));
    }
    Ok(())
}

fn check_tag(
    cx: &Ctx,
    pos: Option<Position>,
    field: &str,
    t: &RawTag,
) -> Result<(String, String), ConfigError> {
    let k = t.key.chars().count();
    if k == 0 || k > MAX_TAG_KEY_CHARS {
        return Err(cx.err(
            pos,
            &format!("{field}.Key"),
            format!("is {k} characters long; expected 1 to {MAX_TAG_KEY_CHARS}"),
        ));
    }
    let v = t.value.chars().count();
    if v > MAX_TAG_VALUE_CHARS {
        return Err(cx.err(
            pos,
            &format!("{field}.Value"),
            format!("is {v} characters long; expected at most {MAX_TAG_VALUE_CHARS}"),
        ));
    }
    Ok((t.key.clone(), t.value.clone()))
}

fn check_destination(
    cx: &Ctx,
    raw: Spanned<RawDestination>,
    sse_kms: bool,
) -> Result<Destination, ConfigError> {
    let dest_pos = pos_of(&raw);
    let d = raw.value;
    let bucket_name = bucket_name_from(&d.bucket.value)
        .map_err(|m| cx.err(pos_of(&d.bucket), "Destination.Bucket", m))?;
    if let Some(sc) = &d.storage_class
        && !STORAGE_CLASSES.contains(&sc.value.as_str())
    {
        return Err(cx.err(
            pos_of(sc),
            "Destination.StorageClass",
            format!(
                "is {:?}; expected one of {}",
                sc.value,
                STORAGE_CLASSES.join(", ")
            ),
        ));
    }
    if let Some(act) = &d.access_control_translation {
        check_owner_override(cx, dest_pos, &act.owner, d.account.is_some())?;
    }
    if sse_kms {
        let key = d
            .encryption_configuration
            .as_ref()
            .and_then(|e| e.replica_kms_key_id.as_ref());
        if key.is_none() {
            return Err(cx.err(
                dest_pos,
                "Destination.EncryptionConfiguration.ReplicaKmsKeyID",
                "missing; `SourceSelectionCriteria.SseKmsEncryptedObjects` is Enabled, \
                 which needs the KMS key to encrypt replicas with",
            ));
        }
    }
    check_rtc(cx, &d)?;
    Ok(Destination {
        bucket_name,
        storage_class: d.storage_class.map(|s| s.value),
        account: d.account,
        access_control_translation: d.access_control_translation,
        encryption_configuration: d.encryption_configuration,
        replication_time: d.replication_time.map(|s| s.value),
        metrics: d.metrics.map(|s| s.value),
    })
}

fn check_owner_override(
    cx: &Ctx,
    pos: Option<Position>,
    owner: &str,
    has_account: bool,
) -> Result<(), ConfigError> {
    if owner != "Destination" {
        return Err(cx.err(
            pos,
            "Destination.AccessControlTranslation.Owner",
            format!("is {owner:?}; expected `Destination` (the only value S3 accepts)"),
        ));
    }
    if !has_account {
        return Err(cx.err(
            pos,
            "Destination.Account",
            "missing; `AccessControlTranslation` needs the destination owner's `Account`",
        ));
    }
    Ok(())
}

/// Replication Time Control and its Metrics, as S3 checks them.
fn check_rtc(cx: &Ctx, d: &RawDestination) -> Result<(), ConfigError> {
    let rtc = d.replication_time.as_ref();
    let rtc_on = rtc.is_some_and(|t| t.value.status == RuleStatus::Enabled);
    if let Some(t) = rtc {
        if t.value.time.minutes != RTC_MINUTES {
            return Err(cx.err(
                pos_of(t),
                "Destination.ReplicationTime.Time.Minutes",
                format!(
                    "is {}; expected {RTC_MINUTES}, the only value S3 accepts",
                    t.value.time.minutes
                ),
            ));
        }
        let metrics_on = d
            .metrics
            .as_ref()
            .is_some_and(|m| m.value.status == RuleStatus::Enabled);
        if rtc_on && !metrics_on {
            return Err(cx.err(
                pos_of(t),
                "Destination.Metrics",
                "missing or Disabled; `ReplicationTime` Enabled needs `Metrics: {Status: Enabled, EventThreshold: {Minutes: 15}}`",
            ));
        }
    }
    let Some(m) = &d.metrics else { return Ok(()) };
    let Some(threshold) = m.value.event_threshold else {
        return Ok(());
    };
    if !rtc_on {
        return Err(cx.err(
            pos_of(m),
            "Destination.Metrics.EventThreshold",
            "given, but `ReplicationTime` is missing or Disabled; S3 only allows an event \
             threshold together with Replication Time Control",
        ));
    }
    if threshold.minutes != RTC_MINUTES {
        return Err(cx.err(
            pos_of(m),
            "Destination.Metrics.EventThreshold.Minutes",
            format!(
                "is {}; expected {RTC_MINUTES}, the only value S3 accepts",
                threshold.minutes
            ),
        ));
    }
    Ok(())
}
