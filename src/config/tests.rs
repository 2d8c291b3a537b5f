use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use super::*;

const SEED_JSON: &str = include_str!("../../tests/data/seed-replica-modifications.json");
const GET_BUCKET_REPLICATION_JSON: &str =
    include_str!("../../tests/data/get-bucket-replication.json");
const SHIPPED_YAML: &str = include_str!("../../replication.yaml");

/// A source bucket that does not exist: rule checks without touching the disk.
fn nowhere() -> &'static Path {
    Path::new("/nonexistent-bucketfs-test/src-bucket")
}

fn parse(text: &str) -> Result<ReplicationConfig, ConfigError> {
    parse_str(text, "replication.yaml", nowhere())
}

fn ok(text: &str) -> ReplicationConfig {
    parse(text).unwrap_or_else(|e| panic!("expected to load, got: {e}\n---\n{text}"))
}

fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// --- log capture: warnings are part of the contract (missing DMR, missing destination).

struct Capture;
thread_local!(static LOGGED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) });

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        // Tests run on parallel threads; per-thread buffers keep them apart.
        LOGGED.with(|l| l.borrow_mut().push(r.args().to_string()));
    }
    fn flush(&self) {}
}

fn take_warnings() -> Vec<String> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        log::set_logger(&Capture).expect("no other logger in tests");
        log::set_max_level(log::LevelFilter::Warn);
    });
    LOGGED.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

// --- Known-good documents.

#[test]
fn seed_json_loads_unmodified() {
    take_warnings();
    let c = ok(SEED_JSON);
    assert_eq!(c.role.as_deref(), Some("IAM-Role-ARN"));
    let r = &c.rules[0];
    assert_eq!(r.id.as_deref(), Some("rule-1"), "missing ID is generated");
    assert_eq!(r.status, RuleStatus::Enabled);
    assert_eq!(r.priority, Some(1));
    assert_eq!(r.filter, RuleFilter::Prefix("Tax".into()));
    assert_eq!(r.destination.bucket_name, "DOC-EXAMPLE-BUCKET");
    assert!(r.replica_modifications);
    assert!(
        !r.delete_marker_replication,
        "missing DMR loads as Disabled"
    );
    assert!(!r.is_v1());
    let warnings = take_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("DeleteMarkerReplication")),
        "missing DMR must warn: {warnings:?}"
    );
}

#[test]
fn get_bucket_replication_wrapper_loads() {
    let c = ok(GET_BUCKET_REPLICATION_JSON);
    assert_eq!(c.rules.len(), 2);
    assert_eq!(c.rules[0].filter, RuleFilter::Empty);
    assert!(c.rules[0].delete_marker_replication);
    assert_eq!(
        c.rules[0].destination.storage_class.as_deref(),
        Some("STANDARD")
    );
    assert_eq!(
        c.rules[1].filter,
        RuleFilter::And {
            prefix: Some("Tax/".into()),
            tags: tags(&[("archive", "true")])
        }
    );
    assert_eq!(
        c.rules[1].destination.bucket_name,
        "doc-example-bucket-archive"
    );
}

#[test]
fn shipped_example_loads() {
    let c = ok(SHIPPED_YAML);
    assert_eq!(c.rules.len(), 1);
    let r = &c.rules[0];
    assert_eq!(r.filter, RuleFilter::Empty);
    assert!(r.delete_marker_replication);
    assert_eq!(r.destination.bucket_name, "demo-replica");
    assert_eq!(
        c.destination_dir("demo-replica"),
        nowhere().parent().unwrap().join("demo-replica")
    );
}

/// Every field S3 defines, set to values S3 accepts.
const ALL_FIELDS: &str = r#"
Role: arn:aws:iam::123456789012:role/r
Buckets: {dst: /srv/dst, rel: elsewhere/rel}
Rules:
  - ID: full
    Status: Enabled
    Priority: 7
    Filter: {And: {Prefix: a/, Tags: [{Key: k1, Value: v1}, {Key: k2, Value: ""}]}}
    DeleteMarkerReplication: {Status: Disabled}
    SourceSelectionCriteria:
      ReplicaModifications: {Status: Enabled}
      SseKmsEncryptedObjects: {Status: Enabled}
    ExistingObjectReplication: {Status: Enabled}
    Destination:
      Bucket: arn:aws-cn:s3:::dst
      StorageClass: GLACIER_IR
      Account: "123456789012"
      AccessControlTranslation: {Owner: Destination}
      EncryptionConfiguration: {ReplicaKmsKeyID: arn:aws:kms:r:1:key/k}
      ReplicationTime: {Status: Enabled, Time: {Minutes: 15}}
      Metrics: {Status: Enabled, EventThreshold: {Minutes: 15}}
"#;

#[test]
fn every_field_loads() {
    let c = ok(ALL_FIELDS);
    let r = &c.rules[0];
    assert!(
        r.replica_modifications && r.sse_kms_encrypted_objects && r.existing_object_replication
    );
    assert!(!r.delete_marker_replication);
    let d = &r.destination;
    assert_eq!(d.bucket_name, "dst");
    assert_eq!(d.account.as_deref(), Some("123456789012"));
    assert_eq!(
        d.access_control_translation.as_ref().unwrap().owner,
        "Destination"
    );
    assert_eq!(
        d.encryption_configuration
            .as_ref()
            .unwrap()
            .replica_kms_key_id
            .as_deref(),
        Some("arn:aws:kms:r:1:key/k")
    );
    assert_eq!(d.replication_time.as_ref().unwrap().time.minutes, 15);
    assert_eq!(
        d.metrics.as_ref().unwrap().event_threshold.unwrap().minutes,
        15
    );
    assert_eq!(c.destination_dir("dst"), PathBuf::from("/srv/dst"));
    assert_eq!(
        c.destination_dir("rel"),
        nowhere().parent().unwrap().join("elsewhere/rel")
    );
}

#[test]
fn v1_rules_load_and_replicate_delete_markers() {
    let c = ok(
        "Rules:\n  - {Status: Enabled, Prefix: logs/, Destination: {Bucket: dst}}\n  - {Status: Disabled, Prefix: img/, Destination: {Bucket: dst}}\n",
    );
    assert!(c.rules.iter().all(Rule::is_v1));
    assert!(c.rules.iter().all(|r| r.delete_marker_replication));
    assert_eq!(c.rules[0].priority, None);
    assert_eq!(c.rules[0].filter, RuleFilter::V1Prefix("logs/".into()));
}

#[test]
fn null_filter_and_null_prefix_mean_everything() {
    let c = ok(
        "Rules:\n  - ID: a\n    Status: Enabled\n    Priority: 1\n    Filter:\n    Destination: {Bucket: dst}\n",
    );
    assert_eq!(c.rules[0].filter, RuleFilter::Empty);
    let c =
        ok("Rules:\n  - ID: a\n    Status: Enabled\n    Prefix:\n    Destination: {Bucket: dst}\n");
    assert_eq!(c.rules[0].filter, RuleFilter::V1Prefix(String::new()));
}

#[test]
fn generated_ids_are_deterministic_and_avoid_taken_ones() {
    let text = "Rules:\n  - {Status: Enabled, Priority: 1, Filter: {}, Destination: {Bucket: dst}}\n  - {ID: rule-1, Status: Enabled, Priority: 2, Filter: {}, Destination: {Bucket: dst}}\n  - {Status: Enabled, Priority: 3, Filter: {}, Destination: {Bucket: dst}}\n";
    let ids = |c: ReplicationConfig| {
        c.rules
            .into_iter()
            .map(|r| r.id.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(ok(text)), ["rule-1-2", "rule-1", "rule-3"]);
    assert_eq!(ids(ok(text)), ids(ok(text)));
}

// --- Validation: each invalid document is refused, naming the field.

/// A V2 rule with the given extra/overriding flow-map entries.
fn v2(id: &str, priority: i64, rest: &str) -> String {
    format!("  - {{ID: {id}, Status: Enabled, Priority: {priority}, {rest}}}\n")
}

fn rules(list: &[String]) -> String {
    format!("Rules:\n{}", list.concat())
}

#[test]
fn invalid_configs_are_refused_naming_the_field() {
    let long = |n: usize| "x".repeat(n);
    let dst = "Destination: {Bucket: dst}";
    let f = "Filter: {}";
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("no Rules", "Role: r\n".into(), "Rules", "missing"),
        ("zero rules", "Rules: []\n".into(), "Rules", "has 0 rules"),
        (
            "1001 rules",
            rules(&(0..1001).map(|i| v2(&format!("r{i}"), i, &format!("{f}, {dst}"))).collect::<Vec<_>>()),
            "Rules",
            "has 1001 rules",
        ),
        ("ID too long", rules(&[v2(&long(256), 1, &format!("{f}, {dst}"))]), "ID", "at most 255"),
        ("ID empty", rules(&[v2("''", 1, &format!("{f}, {dst}"))]), "ID", "is empty"),
        (
            "duplicate ID",
            rules(&[v2("a", 1, &format!("{f}, {dst}")), v2("a", 2, &format!("{f}, {dst}"))]),
            "ID",
            "duplicate of rule #1",
        ),
        (
            "duplicate Priority",
            rules(&[v2("a", 1, &format!("{f}, {dst}")), v2("b", 1, &format!("{f}, {dst}"))]),
            "Priority",
            "also rule #1 (ID \"a\")'s priority",
        ),
        (
            "V2 without Priority",
            format!("Rules:\n  - {{ID: a, Status: Enabled, {f}, {dst}}}\n"),
            "Priority",
            "missing",
        ),
        ("negative Priority", rules(&[v2("a", -1, &format!("{f}, {dst}"))]), "Priority", ">= 0"),
        ("Prefix and Filter", rules(&[v2("a", 1, &format!("Prefix: x, {f}, {dst}"))]), "Prefix", "not both"),
        (
            "neither Prefix nor Filter",
            format!("Rules:\n  - {{ID: a, Status: Enabled, {dst}}}\n"),
            "Filter",
            "missing",
        ),
        (
            "Filter with two conditions",
            rules(&[v2("a", 1, &format!("Filter: {{Prefix: x, Tag: {{Key: k, Value: v}}}}, {dst}"))]),
            "Filter",
            "exactly one of",
        ),
        (
            "And with one tag",
            rules(&[v2("a", 1, &format!("Filter: {{And: {{Tags: [{{Key: k, Value: v}}]}}}}, {dst}"))]),
            "Filter.And",
            "at least 2",
        ),
        (
            "And with only a prefix",
            rules(&[v2("a", 1, &format!("Filter: {{And: {{Prefix: x}}}}, {dst}"))]),
            "Filter.And",
            "at least 2",
        ),
        (
            "And with a repeated tag key",
            rules(&[v2("a", 1, &format!("Filter: {{And: {{Tags: [{{Key: k, Value: 1}}, {{Key: k, Value: 2}}]}}}}, {dst}"))]),
            "Filter.And.Tags",
            "twice",
        ),
        (
            "Filter.Prefix too long",
            rules(&[v2("a", 1, &format!("Filter: {{Prefix: {}}}, {dst}", long(1025)))]),
            "Filter.Prefix",
            "at most 1024",
        ),
        (
            "V1 Prefix too long",
            format!("Rules:\n  - {{Status: Enabled, Prefix: {}, {dst}}}\n", long(1025)),
            "Prefix",
            "at most 1024",
        ),
        (
            "tag key too long",
            rules(&[v2("a", 1, &format!("Filter: {{Tag: {{Key: {}, Value: v}}}}, {dst}", long(129)))]),
            "Filter.Tag.Key",
            "1 to 128",
        ),
        (
            "tag key empty",
            rules(&[v2("a", 1, &format!("Filter: {{Tag: {{Key: '', Value: v}}}}, {dst}"))]),
            "Filter.Tag.Key",
            "1 to 128",
        ),
        (
            "tag value too long",
            rules(&[v2("a", 1, &format!("Filter: {{Tag: {{Key: k, Value: {}}}}}, {dst}", long(257)))]),
            "Filter.Tag.Value",
            "at most 256",
        ),
        (
            "And tag value too long",
            rules(&[v2("a", 1, &format!("Filter: {{And: {{Prefix: p, Tags: [{{Key: k, Value: v}}, {{Key: j, Value: {}}}]}}}}, {dst}", long(257)))]),
            "Filter.And.Tags[1].Value",
            "at most 256",
        ),
        (
            "DMR Enabled with Tag filter",
            rules(&[v2("a", 1, &format!("Filter: {{Tag: {{Key: k, Value: v}}}}, DeleteMarkerReplication: {{Status: Enabled}}, {dst}"))]),
            "DeleteMarkerReplication.Status",
            "tag",
        ),
        (
            "DMR Enabled with And-with-tags filter",
            rules(&[v2("a", 1, &format!("Filter: {{And: {{Prefix: p, Tags: [{{Key: k, Value: v}}]}}}}, DeleteMarkerReplication: {{Status: Enabled}}, {dst}"))]),
            "DeleteMarkerReplication.Status",
            "expected `Disabled`",
        ),
        (
            "V1 with DeleteMarkerReplication",
            format!("Rules:\n  - {{Status: Enabled, Prefix: x, DeleteMarkerReplication: {{Status: Enabled}}, {dst}}}\n"),
            "DeleteMarkerReplication",
            "V1 schema",
        ),
        (
            "V1 with ReplicaModifications",
            format!("Rules:\n  - {{Status: Enabled, Prefix: x, SourceSelectionCriteria: {{ReplicaModifications: {{Status: Enabled}}}}, {dst}}}\n"),
            "SourceSelectionCriteria.ReplicaModifications",
            "V1 schema",
        ),
        (
            "V1 with Priority",
            format!("Rules:\n  - {{Status: Enabled, Priority: 1, Prefix: x, {dst}}}\n"),
            "Priority",
            "V1 schema",
        ),
        (
            "V1 with ReplicationTime",
            "Rules:\n  - {Status: Enabled, Prefix: x, Destination: {Bucket: d, ReplicationTime: {Status: Enabled, Time: {Minutes: 15}}}}\n".into(),
            "Destination.ReplicationTime",
            "V1 schema",
        ),
        (
            "V1 and V2 rules mixed",
            format!("{}  - {{Status: Enabled, Prefix: x, {dst}}}\n", rules(&[v2("a", 1, &format!("{f}, {dst}"))])),
            "Prefix",
            "one schema",
        ),
        (
            "V1 with two destinations",
            "Rules:\n  - {Status: Enabled, Prefix: a, Destination: {Bucket: d1}}\n  - {Status: Enabled, Prefix: b, Destination: {Bucket: d2}}\n".into(),
            "Destination.Bucket",
            "one destination",
        ),
        (
            "V1 overlapping prefixes",
            "Rules:\n  - {Status: Enabled, Prefix: star, Destination: {Bucket: d}}\n  - {Status: Enabled, Prefix: starship, Destination: {Bucket: d}}\n".into(),
            "Prefix",
            "overlaps",
        ),
        (
            "bucket ARN of another service",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: 'arn:aws:iam::1:role/x'}}"))]),
            "Destination.Bucket",
            "arn:aws:s3:::BUCKET",
        ),
        (
            "bucket ARN with a path",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: 'arn:aws:s3:::a/b'}}"))]),
            "Destination.Bucket",
            "no `/`",
        ),
        (
            "bucket name ..",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: '..'}}"))]),
            "Destination.Bucket",
            "not `.` or `..`",
        ),
        (
            "unknown StorageClass",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: d, StorageClass: FAST}}"))]),
            "Destination.StorageClass",
            "expected one of STANDARD",
        ),
        (
            "owner override not Destination",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: d, Account: '1', AccessControlTranslation: {{Owner: Me}}}}"))]),
            "Destination.AccessControlTranslation.Owner",
            "expected `Destination`",
        ),
        (
            "owner override without Account",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: d, AccessControlTranslation: {{Owner: Destination}}}}"))]),
            "Destination.Account",
            "missing",
        ),
        (
            "SSE-KMS without replica key",
            rules(&[v2("a", 1, &format!("{f}, SourceSelectionCriteria: {{SseKmsEncryptedObjects: {{Status: Enabled}}}}, {dst}"))]),
            "Destination.EncryptionConfiguration.ReplicaKmsKeyID",
            "missing",
        ),
        (
            "RTC minutes not 15",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: d, ReplicationTime: {{Status: Enabled, Time: {{Minutes: 10}}}}, Metrics: {{Status: Enabled}}}}"))]),
            "Destination.ReplicationTime.Time.Minutes",
            "expected 15",
        ),
        (
            "RTC without Metrics",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: d, ReplicationTime: {{Status: Enabled, Time: {{Minutes: 15}}}}}}"))]),
            "Destination.Metrics",
            "missing or Disabled",
        ),
        (
            "EventThreshold without RTC",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: d, Metrics: {{Status: Enabled, EventThreshold: {{Minutes: 15}}}}}}"))]),
            "Destination.Metrics.EventThreshold",
            "ReplicationTime",
        ),
        (
            "EventThreshold minutes not 15",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: d, ReplicationTime: {{Status: Enabled, Time: {{Minutes: 15}}}}, Metrics: {{Status: Enabled, EventThreshold: {{Minutes: 5}}}}}}"))]),
            "Destination.Metrics.EventThreshold.Minutes",
            "expected 15",
        ),
        (
            "wrapper plus top-level Rules",
            format!("ReplicationConfiguration: {{Rules: []}}\n{}", rules(&[v2("a", 1, &format!("{f}, {dst}"))])),
            "ReplicationConfiguration",
            "either",
        ),
        (
            "Buckets inside and beside the wrapper",
            format!("Buckets: {{d: /x}}\nReplicationConfiguration:\n  Buckets: {{d: /y}}\n  {}", rules(&[v2("a", 1, &format!("{f}, {dst}"))]).replace('\n', "\n  ")),
            "Buckets",
            "once",
        ),
        (
            "Buckets key that is not a bucket name",
            format!("Buckets: {{'a/b': /x}}\n{}", rules(&[v2("a", 1, &format!("{f}, {dst}"))])),
            "Buckets.a/b",
            "no `/`",
        ),
        (
            "destination is the source bucket by name",
            rules(&[v2("a", 1, &format!("{f}, Destination: {{Bucket: 'arn:aws:s3:::src-bucket'}}"))]),
            "Destination.Bucket",
            "source bucket",
        ),
    ];
    for (name, text, field, needle) in cases {
        let err = match parse(&text) {
            Ok(_) => panic!("{name}: expected an error\n{text}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert_eq!(err.field(), Some(field), "{name}: wrong field in: {msg}");
        assert!(
            msg.contains(&format!("`{field}`")),
            "{name}: field not named in: {msg}"
        );
        assert!(msg.contains(needle), "{name}: {needle:?} not in: {msg}");
        assert!(
            msg.starts_with("replication.yaml"),
            "{name}: file not named in: {msg}"
        );
        if !["no Rules"].contains(&name) {
            assert!(err.position().is_some(), "{name}: no position in: {msg}");
        }
    }
}

#[test]
fn validation_errors_name_the_rule_and_position() {
    let text = "Rules:\n  - ID: first\n    Status: Enabled\n    Priority: 1\n    Filter: {}\n    Destination: {Bucket: d}\n  - ID: second\n    Status: Enabled\n    Priority: 1\n    Filter: {}\n    Destination: {Bucket: d}\n";
    let msg = parse(text).unwrap_err().to_string();
    assert!(
        msg.starts_with("replication.yaml:9:15: rule #2 (ID \"second\"): `Priority`: "),
        "{msg}"
    );
}

// --- Parse errors: positions from serde-saphyr, plus which rule.

#[test]
fn parse_errors_carry_line_column_rule_and_expectation() {
    let rule1 = "Rules:\n  - ID: a\n    Status: Enabled\n    Priority: 1\n    Filter: {}\n    Destination: {Bucket: d}\n";
    let cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "unknown rule field",
            format!("{rule1}    Bogus: 1\n"),
            "replication.yaml:7:5: rule #1 (ID \"a\"): ",
            &["`Bogus`", "expected one of"],
        ),
        (
            "unknown Destination field",
            format!("{rule1}  - ID: b\n    Status: Enabled\n    Priority: 2\n    Filter: {{}}\n    Destination: {{Buket: d}}\n"),
            "replication.yaml:11:19: rule #2 (ID \"b\"): ",
            &["`Buket`", "Bucket"],
        ),
        (
            "JSON value of the wrong type",
            "{\"Rules\": [{\"ID\": \"a\", \"Status\": \"Enabled\", \"Priority\": \"high\", \"Filter\": {}, \"Destination\": {\"Bucket\": \"d\"}}]}".into(),
            "replication.yaml:1:",
            &["rule #1 (ID \"a\"): `Priority`: ", "expected an integer"],
        ),
        (
            "lower-case status",
            rule1.replace("Status: Enabled", "Status: enabled"),
            "replication.yaml:3:13: rule #1 (ID \"a\"): `Status`: ",
            &["`enabled`", "expected one of Enabled, Disabled"],
        ),
        (
            "Priority not a number",
            rule1.replace("Priority: 1", "Priority: high"),
            "replication.yaml:4:15: rule #1 (ID \"a\"): `Priority`: ",
            &["expected an integer"],
        ),
        (
            "missing Destination",
            rule1.replace("    Destination: {Bucket: d}\n", ""),
            "replication.yaml:5:5: rule #1 (ID \"a\"): missing field",
            &["missing field `Destination`"],
        ),
        (
            "unknown top-level field after Rules is not blamed on a rule",
            format!("{rule1}Bogus: 1\n"),
            "replication.yaml:7:1: unknown field `Bogus`",
            &["Rules"],
        ),
        (
            "duplicate key",
            rule1.replace("    Priority: 1\n", "    Priority: 1\n    Priority: 2\n"),
            "replication.yaml:5:5: rule #1",
            &["duplicate", "Priority"],
        ),
        (
            "unclosed flow sequence",
            "Rules: [\n  {ID: a,\n".into(),
            "replication.yaml:",
            &[],
        ),
        (
            "broken JSON",
            "{\"Rules\": [{\"ID\": \"a\" \"Status\": \"Enabled\"}]}".into(),
            "replication.yaml:1:",
            &[],
        ),
    ];
    for (name, text, prefix, needles) in cases {
        let err = parse(&text).expect_err(name);
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{name}: {msg}");
        assert!(
            msg.starts_with(prefix),
            "{name}: {prefix:?} does not start {msg:?}"
        );
        assert!(err.position().is_some(), "{name}: no line:col in {msg}");
        let p = err.position().unwrap();
        assert!(
            msg.contains(&format!("{}:{}", p.line, p.column)),
            "{name}: {msg}"
        );
        for n in needles {
            assert!(msg.contains(n), "{name}: {n:?} not in {msg}");
        }
    }
}

#[test]
fn unreadable_file_names_the_file() {
    let err = load(
        Path::new("/nonexistent-bucketfs-test/replication.yaml"),
        nowhere(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent-bucketfs-test/replication.yaml: cannot read")
    );
}

// --- Destinations on the real file system.

struct Fs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
}

fn fs() -> Fs {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let src = root.join("src-bucket");
    std::fs::create_dir_all(src.join(".bucketfs")).unwrap();
    std::fs::write(src.join(".bucketfs/format"), "1\n").unwrap();
    Fs {
        _tmp: tmp,
        root,
        src,
    }
}

fn to(bucket: &str, buckets: &str) -> String {
    format!(
        "{buckets}Rules:\n  - {{ID: a, Status: Enabled, Priority: 1, Filter: {{}}, DeleteMarkerReplication: {{Status: Enabled}}, Destination: {{Bucket: {bucket}}}}}\n"
    )
}

fn load_in(f: &Fs, text: &str) -> Result<ReplicationConfig, ConfigError> {
    let file = f.root.join("replication.yaml");
    std::fs::write(&file, text).unwrap();
    load(&file, &f.src)
}

#[test]
fn destination_that_is_a_bucket_or_empty_dir_loads() {
    let f = fs();
    std::fs::create_dir_all(f.root.join("replica/.bucketfs")).unwrap();
    std::fs::write(f.root.join("replica/.bucketfs/format"), "1\n").unwrap();
    std::fs::create_dir(f.root.join("empty")).unwrap();
    take_warnings();
    let c = load_in(&f, &to("replica", "")).unwrap();
    assert_eq!(c.destination_dir("replica"), f.root.join("replica"));
    load_in(&f, &to("empty", "")).unwrap();
    assert_eq!(take_warnings(), Vec::<String>::new());
}

#[test]
fn missing_destination_only_warns() {
    let f = fs();
    take_warnings();
    load_in(&f, &to("not-yet", "")).unwrap();
    let w = take_warnings();
    assert!(
        w.iter().any(|w| w.contains("\"not-yet\" does not exist")),
        "{w:?}"
    );
}

#[test]
fn destination_paths_that_are_not_buckets_are_refused() {
    let f = fs();
    std::fs::write(f.root.join("file"), "x").unwrap();
    std::fs::create_dir_all(f.root.join("junk")).unwrap();
    std::fs::write(f.root.join("junk/x"), "x").unwrap();
    std::fs::create_dir_all(f.src.join("inner")).unwrap();
    let src = f.src.display().to_string();
    let link = f.root.join("alias");
    std::os::unix::fs::symlink(&f.src, &link).unwrap();
    let cases = [
        ("plain file", to("file", ""), "not a directory"),
        (
            "non-empty non-bucket dir",
            to("junk", ""),
            "without `.bucketfs/format`",
        ),
        (
            "mapped onto the source",
            to("d", &format!("Buckets: {{d: '{src}'}}\n")),
            "own directory",
        ),
        ("symlink to the source", to("alias", ""), "own directory"),
        (
            "inside the source",
            to("d", &format!("Buckets: {{d: '{src}/inner'}}\n")),
            "inside the source",
        ),
        (
            "missing, inside the source",
            to("d", &format!("Buckets: {{d: '{src}/new'}}\n")),
            "inside the source",
        ),
        (
            "containing the source",
            to("d", &format!("Buckets: {{d: '{}'}}\n", f.root.display())),
            "contains the source",
        ),
        (
            "source by name",
            to("src-bucket", ""),
            "source bucket \"src-bucket\" itself",
        ),
    ];
    for (name, text, needle) in cases {
        let err = load_in(&f, &text).expect_err(name);
        let msg = err.to_string();
        assert_eq!(err.field(), Some("Destination.Bucket"), "{name}: {msg}");
        assert!(msg.contains(needle), "{name}: {needle:?} not in {msg}");
        assert!(msg.contains("rule #1 (ID \"a\")"), "{name}: {msg}");
    }
}

// --- Matching and precedence.

fn rule(id: &str, priority: Option<i64>, filter: RuleFilter, dest: &str) -> Rule {
    Rule {
        id: Some(id.into()),
        status: RuleStatus::Enabled,
        priority,
        filter,
        destination: Destination {
            bucket_name: dest.into(),
            storage_class: None,
            account: None,
            access_control_translation: None,
            encryption_configuration: None,
            replication_time: None,
            metrics: None,
        },
        delete_marker_replication: false,
        replica_modifications: false,
        sse_kms_encrypted_objects: false,
        existing_object_replication: false,
    }
}

/// Filter, object key, object tags, expected match.
type MatchCase<'a> = (RuleFilter, &'a str, &'a [(&'a str, &'a str)], bool);

#[test]
fn matches_table() {
    let and = RuleFilter::And {
        prefix: Some("docs/".into()),
        tags: tags(&[("a", "1"), ("b", "2")]),
    };
    let cases: &[MatchCase] = &[
        (RuleFilter::Empty, "anything", &[], true),
        (RuleFilter::V1Prefix(String::new()), "x", &[], true),
        (RuleFilter::V1Prefix("logs/".into()), "logs/a", &[], true),
        (RuleFilter::Prefix("logs/".into()), "logs/a", &[], true),
        (RuleFilter::Prefix("logs/".into()), "log/a", &[], false),
        (RuleFilter::Prefix("Tax".into()), "tax/a", &[], false),
        (
            RuleFilter::Tag {
                key: "a".into(),
                value: "1".into(),
            },
            "k",
            &[("a", "1")],
            true,
        ),
        (
            RuleFilter::Tag {
                key: "a".into(),
                value: "1".into(),
            },
            "k",
            &[("a", "2")],
            false,
        ),
        (
            RuleFilter::Tag {
                key: "a".into(),
                value: "1".into(),
            },
            "k",
            &[],
            false,
        ),
        (
            and.clone(),
            "docs/x",
            &[("b", "2"), ("a", "1"), ("c", "3")],
            true,
        ),
        (and.clone(), "docs/x", &[("a", "1")], false),
        (and.clone(), "other/x", &[("a", "1"), ("b", "2")], false),
        (
            RuleFilter::And {
                prefix: None,
                tags: tags(&[("a", "1"), ("b", "2")]),
            },
            "z",
            &[("a", "1"), ("b", "2")],
            true,
        ),
    ];
    for (filter, key, object_tags, want) in cases {
        let r = rule("r", Some(1), filter.clone(), "d");
        assert_eq!(
            r.matches(key, &tags(object_tags)),
            *want,
            "{filter:?} on {key} {object_tags:?}"
        );
    }
}

#[test]
fn priority_decides_only_within_one_destination() {
    // The S3 user guide's example: `star`/1 and `starship`/2; `starship-x` follows rule 2.
    let mut disabled = rule("off", Some(9), RuleFilter::Empty, "d");
    disabled.status = RuleStatus::Disabled;
    let c = ReplicationConfig {
        role: None,
        rules: vec![
            rule("star", Some(1), RuleFilter::Prefix("star".into()), "d"),
            rule(
                "starship",
                Some(2),
                RuleFilter::Prefix("starship".into()),
                "d",
            ),
            disabled,
            rule("other", Some(0), RuleFilter::Prefix("st".into()), "e"),
        ],
        buckets: BTreeMap::new(),
        source_bucket_dir: PathBuf::from("/b/src"),
    };
    let winner =
        |dest: &str, key: &str| c.winning_rule(dest, key, &[]).and_then(|r| r.id.as_deref());
    let cases = [
        ("d", "starship-x", Some("starship")),
        ("d", "star-x", Some("star")),
        ("d", "moon", None),
        ("e", "starship-x", Some("other")),
        ("f", "starship-x", None),
    ];
    for (dest, key, want) in cases {
        assert_eq!(winner(dest, key), want, "{dest} {key}");
    }
    let all: Vec<_> = c
        .winning_rules("starship-x", &[])
        .into_iter()
        .filter_map(|r| r.id.as_deref())
        .collect();
    assert_eq!(all, ["starship", "other"]);
    assert_eq!(
        c.rules_for_destination("d").count(),
        2,
        "disabled rules are left out"
    );
    assert_eq!(c.destination_dir("d"), PathBuf::from("/b/d"));
}

#[test]
fn winner_is_a_matching_rule_with_maximal_priority() {
    // A small exhaustive property check: for every subset of 4 rules and several
    // keys, the winner matches and no matching rule outranks it.
    let pool = [
        rule("a", Some(3), RuleFilter::Prefix("a".into()), "d"),
        rule("b", Some(1), RuleFilter::Prefix("ab".into()), "d"),
        rule("c", Some(2), RuleFilter::Empty, "d"),
        rule(
            "t",
            Some(4),
            RuleFilter::Tag {
                key: "k".into(),
                value: "v".into(),
            },
            "d",
        ),
    ];
    for mask in 0u8..16 {
        let rules: Vec<Rule> = (0..4)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| pool[i].clone())
            .collect();
        let c = ReplicationConfig {
            role: None,
            rules,
            buckets: BTreeMap::new(),
            source_bucket_dir: PathBuf::from("/s"),
        };
        for key in ["", "a", "ab", "abc", "b"] {
            for t in [vec![], tags(&[("k", "v")])] {
                let matching: Vec<&Rule> = c.rules.iter().filter(|r| r.matches(key, &t)).collect();
                match c.winning_rule("d", key, &t) {
                    None => assert!(matching.is_empty()),
                    Some(w) => {
                        assert!(w.matches(key, &t));
                        assert!(matching.iter().all(|r| r.priority <= w.priority));
                    }
                }
            }
        }
    }
}

/// Any text in place of replication.yaml: an error that names the file (and, where it gives
/// one, a line inside the text), or a config; never a panic.
#[test]
fn mutated_configs_are_answered_with_the_place_of_the_error() {
    let corpus = [SEED_JSON, GET_BUCKET_REPLICATION_JSON, SHIPPED_YAML];
    let alphabet = "{}[]:,\"-# \n\tabcPrefixTagIDStatusEnabled0123456789";
    let mut loaded = 0;
    for text in crate::mutate::Mutator::inputs(17, &corpus, alphabet, 6_000) {
        match parse(&text) {
            Ok(_) => loaded += 1,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("replication.yaml"), "{msg}\n---\n{text}");
                let lines = text.lines().count() + 1;
                if let Some(line) = msg
                    .strip_prefix("replication.yaml:")
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|l| l.parse::<usize>().ok())
                {
                    assert!(line <= lines, "line {line} of {lines}: {msg}\n---\n{text}");
                }
            }
        }
    }
    // The mutants are not all broken: some still load, so the checks above see both sides.
    assert!(loaded > 0);
}
