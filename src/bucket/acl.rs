//! S3 object ACLs: canned names and explicit grants in S3's JSON shape (as
//! printed by `aws s3api get-object-acl`), for the ACL xattr.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bucket::meta_error::MetaError;

pub const MAX_GRANTS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acl {
    Canned(CannedAcl),
    Grants(Vec<Grant>),
}

impl Default for Acl {
    fn default() -> Self {
        Acl::Canned(CannedAcl::Private)
    }
}

/// Object canned ACLs. `log-delivery-write` is deliberately absent: S3 only
/// accepts it on buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CannedAcl {
    #[default]
    Private,
    PublicRead,
    PublicReadWrite,
    AuthenticatedRead,
    BucketOwnerRead,
    BucketOwnerFullControl,
    AwsExecRead,
}

impl CannedAcl {
    pub const ALL: [CannedAcl; 7] = [
        CannedAcl::Private,
        CannedAcl::PublicRead,
        CannedAcl::PublicReadWrite,
        CannedAcl::AuthenticatedRead,
        CannedAcl::BucketOwnerRead,
        CannedAcl::BucketOwnerFullControl,
        CannedAcl::AwsExecRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CannedAcl::Private => "private",
            CannedAcl::PublicRead => "public-read",
            CannedAcl::PublicReadWrite => "public-read-write",
            CannedAcl::AuthenticatedRead => "authenticated-read",
            CannedAcl::BucketOwnerRead => "bucket-owner-read",
            CannedAcl::BucketOwnerFullControl => "bucket-owner-full-control",
            CannedAcl::AwsExecRead => "aws-exec-read",
        }
    }
}

impl fmt::Display for CannedAcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exact, case-sensitive match, like S3's `x-amz-acl`.
impl FromStr for CannedAcl {
    type Err = MetaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CannedAcl::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| MetaError::UnknownCannedAcl(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Grant {
    pub grantee: Grantee,
    pub permission: Permission,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Type")]
pub enum Grantee {
    CanonicalUser {
        #[serde(rename = "ID")]
        id: String,
        /// Kept only so JSON pasted from `get-object-acl` survives a round trip;
        /// never used for access decisions.
        #[serde(
            rename = "DisplayName",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        display_name: Option<String>,
    },
    Group {
        #[serde(rename = "URI")]
        uri: GranteeGroup,
    },
    AmazonCustomerByEmail {
        #[serde(rename = "EmailAddress")]
        email_address: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GranteeGroup {
    #[serde(rename = "http://acs.amazonaws.com/groups/global/AllUsers")]
    AllUsers,
    #[serde(rename = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")]
    AuthenticatedUsers,
    #[serde(rename = "http://acs.amazonaws.com/groups/s3/LogDelivery")]
    LogDelivery,
}

impl GranteeGroup {
    pub const ALL: [GranteeGroup; 3] = [
        GranteeGroup::AllUsers,
        GranteeGroup::AuthenticatedUsers,
        GranteeGroup::LogDelivery,
    ];

    pub fn uri(self) -> &'static str {
        match self {
            GranteeGroup::AllUsers => "http://acs.amazonaws.com/groups/global/AllUsers",
            GranteeGroup::AuthenticatedUsers => {
                "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
            }
            GranteeGroup::LogDelivery => "http://acs.amazonaws.com/groups/s3/LogDelivery",
        }
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        GranteeGroup::ALL.into_iter().find(|g| g.uri() == uri)
    }
}

/// `Write` exists because it is an S3 permission (on buckets), but
/// `parse_acl` refuses it since it has no meaning on an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Permission {
    Read,
    Write,
    ReadAcp,
    WriteAcp,
    FullControl,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::Read,
        Permission::Write,
        Permission::ReadAcp,
        Permission::WriteAcp,
        Permission::FullControl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "READ",
            Permission::Write => "WRITE",
            Permission::ReadAcp => "READ_ACP",
            Permission::WriteAcp => "WRITE_ACP",
            Permission::FullControl => "FULL_CONTROL",
        }
    }

    /// FULL_CONTROL implies every other permission.
    pub fn covers(self, wanted: Permission) -> bool {
        self == wanted || self == Permission::FullControl
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const OBJECT_PERMISSIONS: &str = "READ, READ_ACP, WRITE_ACP, FULL_CONTROL";
const GRANTEE_TYPES: &str = "CanonicalUser, Group, AmazonCustomerByEmail";

/// Accepts a canned name, a JSON array of grants, or an AccessControlPolicy
/// object (`{"Grants": [...], "Owner": {...}}`). The Owner is dropped: in
/// bucketfs ownership lives in the version metadata, not in the ACL xattr.
pub fn parse_acl(s: &str) -> Result<Acl, MetaError> {
    // xattr tools commonly append '\n' or a C string's NUL.
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if !(s.starts_with('[') || s.starts_with('{')) {
        return s.parse().map(Acl::Canned);
    }
    let json: Value =
        serde_json::from_str(s).map_err(|e| MetaError::InvalidAclJson(e.to_string()))?;
    let raw_grants = match json {
        Value::Array(a) => a,
        Value::Object(mut policy) => match policy.remove("Grants") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(MetaError::InvalidAclJson(format!(
                    "\"Grants\" must be an array, got {}",
                    json_kind(&other)
                )));
            }
            None => {
                return Err(MetaError::InvalidAclJson(
                    "object has no \"Grants\" array".to_owned(),
                ));
            }
        },
        _ => unreachable!("first non-blank char was '[' or '{{' and the JSON parsed"),
    };
    if raw_grants.len() > MAX_GRANTS {
        return Err(MetaError::TooManyGrants(raw_grants.len()));
    }
    raw_grants
        .iter()
        .enumerate()
        .map(|(i, g)| {
            parse_grant(g).map_err(|why| MetaError::InvalidGrant(format!("grant[{i}]: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Acl::Grants)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, field: &str, ctx: &str) -> Result<&'a str, String> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "{ctx} field \"{field}\" must be a string, got {}",
            json_kind(other)
        )),
        None => Err(format!("{ctx} is missing the \"{field}\" field")),
    }
}

/// Hand-rolled rather than serde-derived so errors name the offending field
/// and list the accepted values instead of serde's generic "unknown variant".
/// Unknown extra fields are ignored so `get-object-acl` output is accepted.
fn parse_grant(g: &Value) -> Result<Grant, String> {
    let Value::Object(g) = g else {
        return Err(format!("must be an object, got {}", json_kind(g)));
    };
    let grantee = match g.get("Grantee") {
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(format!(
                "\"Grantee\" must be an object, got {}",
                json_kind(other)
            ));
        }
        None => return Err("missing the \"Grantee\" field".to_owned()),
    };
    let grantee = match str_field(grantee, "Type", "Grantee")? {
        "CanonicalUser" => {
            let id = str_field(grantee, "ID", "CanonicalUser grantee")?;
            if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "CanonicalUser ID {id:?} must be non-empty with no whitespace or control characters"
                ));
            }
            let display_name = match grantee.get("DisplayName") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(format!(
                        "CanonicalUser grantee field \"DisplayName\" must be a string, got {}",
                        json_kind(other)
                    ));
                }
            };
            Grantee::CanonicalUser {
                id: id.to_owned(),
                display_name,
            }
        }
        "Group" => {
            let uri = str_field(grantee, "URI", "Group grantee")?;
            let group = GranteeGroup::from_uri(uri).ok_or_else(|| {
                format!(
                    "unknown group URI {uri:?}; known groups are {}",
                    GranteeGroup::ALL.map(GranteeGroup::uri).join(", ")
                )
            })?;
            Grantee::Group { uri: group }
        }
        "AmazonCustomerByEmail" => {
            let email = str_field(grantee, "EmailAddress", "AmazonCustomerByEmail grantee")?;
            let valid = email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && !domain.is_empty() && !domain.contains('@')
            }) && !email.chars().any(|c| c.is_whitespace() || c.is_control());
            if !valid {
                return Err(format!(
                    "EmailAddress {email:?} is not an email address (expected local@domain)"
                ));
            }
            Grantee::AmazonCustomerByEmail {
                email_address: email.to_owned(),
            }
        }
        other => {
            return Err(format!(
                "unknown grantee Type {other:?}; expected one of {GRANTEE_TYPES} (case-sensitive)"
            ));
        }
    };
    let permission = match str_field(g, "Permission", "grant")? {
        "WRITE" => {
            return Err(format!(
                "permission WRITE does not apply to objects; expected one of {OBJECT_PERMISSIONS}"
            ));
        }
        p => Permission::ALL
            .into_iter()
            .find(|q| q.as_str() == p)
            .ok_or_else(|| {
                format!(
                    "unknown permission {p:?}; expected one of {OBJECT_PERMISSIONS} (case-sensitive)"
                )
            })?,
    };
    Ok(Grant {
        grantee,
        permission,
    })
}

impl Acl {
    /// Canned name, or a compact JSON array that `parse_acl` accepts back.
    pub fn to_xattr_string(&self) -> String {
        match self {
            Acl::Canned(c) => c.as_str().to_owned(),
            Acl::Grants(grants) => serde_json::to_string(grants)
                .expect("grants contain only strings and unit enums, which always serialize"),
        }
    }

    /// S3 replicates an object whose owner is not the bucket owner only if the bucket owner may read the object and its ACL.
    ///
    /// Grants to the AllUsers and AuthenticatedUsers groups count as well,
    /// because the bucket owner is a member of both and S3 evaluates the ACL
    /// as a whole; permissions may come from several grants. Email grants
    /// cannot be resolved to a canonical ID here and so never count.
    pub fn grants_owner_read_and_read_acp(&self, bucket_owner_id: &str) -> bool {
        match self {
            Acl::Canned(c) => *c == CannedAcl::BucketOwnerFullControl,
            Acl::Grants(grants) => {
                let has = |wanted: Permission| {
                    grants.iter().any(|g| {
                        let applies = match &g.grantee {
                            Grantee::CanonicalUser { id, .. } => id == bucket_owner_id,
                            Grantee::Group { uri } => matches!(
                                uri,
                                GranteeGroup::AllUsers | GranteeGroup::AuthenticatedUsers
                            ),
                            Grantee::AmazonCustomerByEmail { .. } => false,
                        };
                        applies && g.permission.covers(wanted)
                    })
                };
                has(Permission::Read) && has(Permission::ReadAcp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be";
    const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

    fn user(id: &str, p: Permission) -> Grant {
        Grant {
            grantee: Grantee::CanonicalUser {
                id: id.to_owned(),
                display_name: None,
            },
            permission: p,
        }
    }

    fn group(g: GranteeGroup, p: Permission) -> Grant {
        Grant {
            grantee: Grantee::Group { uri: g },
            permission: p,
        }
    }

    fn user_json(id: &str, p: &str) -> String {
        format!(r#"{{"Grantee":{{"Type":"CanonicalUser","ID":"{id}"}},"Permission":"{p}"}}"#)
    }

    #[test]
    fn every_canned_acl() {
        let table = [
            ("private", CannedAcl::Private),
            ("public-read", CannedAcl::PublicRead),
            ("public-read-write", CannedAcl::PublicReadWrite),
            ("authenticated-read", CannedAcl::AuthenticatedRead),
            ("bucket-owner-read", CannedAcl::BucketOwnerRead),
            (
                "bucket-owner-full-control",
                CannedAcl::BucketOwnerFullControl,
            ),
            ("aws-exec-read", CannedAcl::AwsExecRead),
        ];
        assert_eq!(table.len(), CannedAcl::ALL.len());
        for (name, canned) in table {
            assert_eq!(canned.as_str(), name);
            assert_eq!(canned.to_string(), name);
            assert_eq!(name.parse::<CannedAcl>(), Ok(canned));
            assert_eq!(parse_acl(name), Ok(Acl::Canned(canned)));
            assert_eq!(Acl::Canned(canned).to_xattr_string(), name);
            // Serde must use the same S3 names, since stored metadata is JSON.
            assert_eq!(
                serde_json::to_string(&canned).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert_eq!(Acl::default(), Acl::Canned(CannedAcl::Private));
    }

    #[test]
    fn canned_acl_trimming_and_unknown() {
        assert_eq!(
            parse_acl("  public-read\n"),
            Ok(Acl::Canned(CannedAcl::PublicRead))
        );
        assert_eq!(parse_acl("private\0"), Ok(Acl::Canned(CannedAcl::Private)));
        for bad in [
            "",
            "Private",
            "PUBLIC-READ",
            "public_read",
            "log-delivery-write",
            "public-read write",
        ] {
            assert_eq!(
                parse_acl(bad),
                Err(MetaError::UnknownCannedAcl(bad.trim().to_owned())),
                "{bad:?}"
            );
        }
        let msg = parse_acl("log-delivery-write").unwrap_err().to_string();
        assert!(msg.contains("bucket-only"), "{msg}");
        assert!(msg.contains("bucket-owner-full-control"), "{msg}");
    }

    #[test]
    fn json_grants_valid() {
        let cases: Vec<(String, Vec<Grant>)> = vec![
            ("[]".into(), vec![]),
            (format!("[{}]", user_json(OWNER, "READ")), vec![user(OWNER, Permission::Read)]),
            (
                format!(
                    "[{},{},{}]",
                    user_json("u1", "READ_ACP"),
                    user_json("u2", "WRITE_ACP"),
                    user_json("u3", "FULL_CONTROL")
                ),
                vec![
                    user("u1", Permission::ReadAcp),
                    user("u2", Permission::WriteAcp),
                    user("u3", Permission::FullControl),
                ],
            ),
            (
                format!(r#"[{{"Grantee":{{"Type":"Group","URI":"{ALL_USERS}"}},"Permission":"READ"}}]"#),
                vec![group(GranteeGroup::AllUsers, Permission::Read)],
            ),
            (
                r#"[{"Grantee":{"Type":"Group","URI":"http://acs.amazonaws.com/groups/global/AuthenticatedUsers"},"Permission":"READ"},
                   {"Grantee":{"Type":"Group","URI":"http://acs.amazonaws.com/groups/s3/LogDelivery"},"Permission":"READ_ACP"}]"#
                    .into(),
                vec![
                    group(GranteeGroup::AuthenticatedUsers, Permission::Read),
                    group(GranteeGroup::LogDelivery, Permission::ReadAcp),
                ],
            ),
            (
                r#"[{"Grantee":{"Type":"AmazonCustomerByEmail","EmailAddress":"a@example.com"},"Permission":"READ"}]"#.into(),
                vec![Grant {
                    grantee: Grantee::AmazonCustomerByEmail {
                        email_address: "a@example.com".into(),
                    },
                    permission: Permission::Read,
                }],
            ),
            // Shape printed by `aws s3api get-object-acl`, with Owner and DisplayName.
            (
                format!(
                    r#"{{"Owner":{{"DisplayName":"me","ID":"{OWNER}"}},
                        "Grants":[{{"Grantee":{{"DisplayName":"me","ID":"{OWNER}","Type":"CanonicalUser"}},"Permission":"FULL_CONTROL"}}]}}"#
                ),
                vec![Grant {
                    grantee: Grantee::CanonicalUser {
                        id: OWNER.into(),
                        display_name: Some("me".into()),
                    },
                    permission: Permission::FullControl,
                }],
            ),
            (r#"  {"Grants": []}  "#.into(), vec![]),
        ];
        for (input, want) in cases {
            let acl = parse_acl(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(acl, Acl::Grants(want.clone()), "{input}");
            let text = acl.to_xattr_string();
            assert!(!text.contains('\n'), "compact: {text}");
            assert_eq!(parse_acl(&text), Ok(acl.clone()), "round trip via {text}");
            // Stored metadata round trip via serde.
            let stored = serde_json::to_string(&acl).unwrap();
            assert_eq!(serde_json::from_str::<Acl>(&stored).unwrap(), acl);
        }
    }

    #[test]
    fn xattr_string_is_s3_shape() {
        let acl = Acl::Grants(vec![
            user("abc", Permission::Read),
            group(GranteeGroup::AllUsers, Permission::ReadAcp),
        ]);
        assert_eq!(
            acl.to_xattr_string(),
            format!(
                r#"[{{"Grantee":{{"Type":"CanonicalUser","ID":"abc"}},"Permission":"READ"}},{{"Grantee":{{"Type":"Group","URI":"{ALL_USERS}"}},"Permission":"READ_ACP"}}]"#
            )
        );
    }

    #[test]
    fn json_grants_invalid() {
        // (input, expected variant tag, substring of the message)
        let cases: Vec<(String, &str, &str)> = vec![
            ("[".into(), "json", "EOF"),
            ("{}".into(), "json", "no \"Grants\""),
            (r#"{"Grants": {}}"#.into(), "json", "must be an array, got an object"),
            ("[1]".into(), "grant", "grant[0]: must be an object, got a number"),
            (r#"[{"Permission":"READ"}]"#.into(), "grant", "missing the \"Grantee\""),
            (
                r#"[{"Grantee":{"Type":"CanonicalUser","ID":"x"}}]"#.into(),
                "grant",
                "missing the \"Permission\"",
            ),
            (
                r#"[{"Grantee":{"ID":"x"},"Permission":"READ"}]"#.into(),
                "grant",
                "missing the \"Type\"",
            ),
            (
                r#"[{"Grantee":{"Type":"CanonicalUser"},"Permission":"READ"}]"#.into(),
                "grant",
                "missing the \"ID\"",
            ),
            (format!("[{}]", user_json("", "READ")), "grant", "must be non-empty"),
            (format!("[{}]", user_json("a b", "READ")), "grant", "no whitespace"),
            (
                r#"[{"Grantee":{"Type":"CanonicalUser","ID":7},"Permission":"READ"}]"#.into(),
                "grant",
                "\"ID\" must be a string, got a number",
            ),
            (
                r#"[{"Grantee":{"Type":"Role","ID":"x"},"Permission":"READ"}]"#.into(),
                "grant",
                "unknown grantee Type \"Role\"",
            ),
            (
                r#"[{"Grantee":{"Type":"canonicaluser","ID":"x"},"Permission":"READ"}]"#.into(),
                "grant",
                "unknown grantee Type",
            ),
            (
                r#"[{"Grantee":{"Type":"Group","URI":"http://acs.amazonaws.com/groups/global/Everyone"},"Permission":"READ"}]"#.into(),
                "grant",
                "unknown group URI",
            ),
            (
                r#"[{"Grantee":{"Type":"Group","URI":"https://acs.amazonaws.com/groups/global/AllUsers"},"Permission":"READ"}]"#.into(),
                "grant",
                "unknown group URI",
            ),
            (
                r#"[{"Grantee":{"Type":"AmazonCustomerByEmail","EmailAddress":"nobody"},"Permission":"READ"}]"#.into(),
                "grant",
                "not an email address",
            ),
            (format!("[{}]", user_json("x", "WRITE")), "grant", "WRITE does not apply to objects"),
            (format!("[{}]", user_json("x", "read")), "grant", "unknown permission \"read\""),
            (format!("[{}]", user_json("x", "DELETE")), "grant", "unknown permission"),
            (
                format!("[{},{}]", user_json("x", "READ"), user_json("y", "WRITE")),
                "grant",
                "grant[1]:",
            ),
            ("\"private\"".into(), "canned", ""),
        ];
        for (input, kind, needle) in cases {
            let err = parse_acl(&input).expect_err(&input);
            let kind_ok = matches!(
                (&err, kind),
                (MetaError::InvalidAclJson(_), "json")
                    | (MetaError::InvalidGrant(_), "grant")
                    | (MetaError::UnknownCannedAcl(_), "canned")
            );
            assert!(kind_ok, "{input}: wanted {kind}, got {err:?}");
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn grant_count_limit() {
        let grants = |n: usize| {
            let items: Vec<String> = (0..n)
                .map(|i| user_json(&format!("u{i}"), "READ"))
                .collect();
            format!("[{}]", items.join(","))
        };
        match parse_acl(&grants(100)) {
            Ok(Acl::Grants(g)) => assert_eq!(g.len(), 100),
            other => panic!("100 grants: {other:?}"),
        }
        assert_eq!(parse_acl(&grants(101)), Err(MetaError::TooManyGrants(101)));
        assert_eq!(
            parse_acl(&format!(r#"{{"Grants":{}}}"#, grants(101))),
            Err(MetaError::TooManyGrants(101))
        );
        assert_eq!(
            MetaError::TooManyGrants(101).to_string(),
            "too many grants: 101 given, at most 100 are allowed per ACL"
        );
    }

    #[test]
    fn owner_read_and_read_acp() {
        use Permission::*;
        let other = "someone-else";
        let cases: Vec<(&str, Acl, bool)> = vec![
            (
                "full-control canned",
                Acl::Canned(CannedAcl::BucketOwnerFullControl),
                true,
            ),
            ("private", Acl::Canned(CannedAcl::Private), false),
            (
                "bucket-owner-read lacks READ_ACP",
                Acl::Canned(CannedAcl::BucketOwnerRead),
                false,
            ),
            ("public-read", Acl::Canned(CannedAcl::PublicRead), false),
            (
                "public-read-write",
                Acl::Canned(CannedAcl::PublicReadWrite),
                false,
            ),
            (
                "authenticated-read",
                Acl::Canned(CannedAcl::AuthenticatedRead),
                false,
            ),
            ("aws-exec-read", Acl::Canned(CannedAcl::AwsExecRead), false),
            ("no grants", Acl::Grants(vec![]), false),
            (
                "FULL_CONTROL",
                Acl::Grants(vec![user(OWNER, FullControl)]),
                true,
            ),
            (
                "READ + READ_ACP",
                Acl::Grants(vec![user(OWNER, Read), user(OWNER, ReadAcp)]),
                true,
            ),
            ("READ only", Acl::Grants(vec![user(OWNER, Read)]), false),
            (
                "READ_ACP only",
                Acl::Grants(vec![user(OWNER, ReadAcp)]),
                false,
            ),
            (
                "READ + WRITE_ACP",
                Acl::Grants(vec![user(OWNER, Read), user(OWNER, WriteAcp)]),
                false,
            ),
            (
                "other user full control",
                Acl::Grants(vec![user(other, FullControl)]),
                false,
            ),
            (
                "split across users",
                Acl::Grants(vec![user(OWNER, Read), user(other, ReadAcp)]),
                false,
            ),
            (
                "AllUsers READ + owner READ_ACP",
                Acl::Grants(vec![
                    group(GranteeGroup::AllUsers, Read),
                    user(OWNER, ReadAcp),
                ]),
                true,
            ),
            (
                "AuthenticatedUsers FULL_CONTROL",
                Acl::Grants(vec![group(GranteeGroup::AuthenticatedUsers, FullControl)]),
                true,
            ),
            (
                "LogDelivery does not include the owner",
                Acl::Grants(vec![group(GranteeGroup::LogDelivery, FullControl)]),
                false,
            ),
            (
                "email cannot be matched",
                Acl::Grants(vec![Grant {
                    grantee: Grantee::AmazonCustomerByEmail {
                        email_address: "owner@example.com".into(),
                    },
                    permission: FullControl,
                }]),
                false,
            ),
        ];
        for (name, acl, want) in cases {
            assert_eq!(acl.grants_owner_read_and_read_acp(OWNER), want, "{name}");
        }
    }

    #[test]
    fn permission_covers() {
        for p in Permission::ALL {
            assert!(Permission::FullControl.covers(p));
            assert!(p.covers(p));
        }
        assert!(!Permission::Read.covers(Permission::ReadAcp));
        assert!(!Permission::WriteAcp.covers(Permission::FullControl));
    }

    /// Any `user.s3.acl` value: an answer, never a panic, and an ACL accepted is written
    /// back as one that reads the same.
    #[test]
    fn mutated_acl_values_are_answered_and_accepted_acls_round_trip() {
        let corpus = [
            "private",
            "public-read",
            "bucket-owner-full-control",
            r#"[{"Grantee":{"Type":"CanonicalUser","ID":"x"},"Permission":"READ"}]"#,
            r#"{"Grants":[{"Grantee":{"Type":"Group","URI":"http://acs.amazonaws.com/groups/global/AllUsers"},"Permission":"READ"}],"Owner":{"ID":"o"}}"#,
            r#"[{"Grantee":{"Type":"AmazonCustomerByEmail","EmailAddress":"a@b"},"Permission":"FULL_CONTROL"}]"#,
            r#"{"Grants":null}"#,
            r#"[{"Grantee":{}}]"#,
            "[]",
            "1e999",
        ];
        let alphabet = "{}[]\":,IDTypeURIRAE_";
        for text in crate::mutate::Mutator::inputs(13, &corpus, alphabet, 40_000) {
            if let Ok(acl) = parse_acl(&text) {
                let written = acl.to_xattr_string();
                assert_eq!(parse_acl(&written).ok(), Some(acl), "{text:?} -> {written}");
            }
        }
    }
}
