//! The xattr contract (docs/SEMANTICS.md, "Extended attributes"): which `user.*` names mean
//! which S3 field, and how a get/set/remove changes an object's [`ObjectAttrs`].

use time::OffsetDateTime;

use crate::bucket::lock::{self, LockMode, Retention};
use crate::bucket::meta::ObjectAttrs;
use crate::bucket::{BucketError, acl, tags};
use crate::fs::error::{FsError, FsResult};

pub const TAG_PREFIX: &str = "user.s3.tag.";
pub const TAGGING: &str = "user.s3.tagging";
pub const ACL: &str = "user.s3.acl";
pub const LOCK_MODE: &str = "user.s3.object-lock-mode";
pub const LOCK_UNTIL: &str = "user.s3.object-lock-retain-until-date";
pub const LEGAL_HOLD: &str = "user.s3.object-lock-legal-hold";
pub const VERSION_ID: &str = "user.s3.version-id";
pub const ETAG: &str = "user.s3.etag";
pub const REPLICATION_STATUS: &str = "user.s3.replication-status";
pub const SSE: &str = "user.s3.server-side-encryption";
pub const DELETE_MARKER: &str = "user.s3.delete-marker";
const S3_PREFIX: &str = "user.s3.";
const USER_PREFIX: &str = "user.";

/// What an xattr name means.
#[derive(Debug, PartialEq, Eq)]
pub enum Name<'a> {
    Tag(&'a str),
    Tagging,
    Acl,
    LockMode,
    LockUntil,
    LegalHold,
    /// Computed by bucketfs; never set by users.
    Computed(&'a str),
    /// Any other `user.*` attribute: object user metadata (name without `user.`).
    User(&'a str),
    /// `user.s3.*` names bucketfs does not define.
    UnknownS3(&'a str),
    /// Every namespace but `user.` (`security.*`, `system.*` with the POSIX ACLs,
    /// `trusted.*`): never stored, not even readable, as on a filesystem mounted without ACL
    /// or security-label support.
    OtherNamespace(&'a str),
}

pub fn classify(name: &str) -> Name<'_> {
    match name {
        TAGGING => Name::Tagging,
        ACL => Name::Acl,
        LOCK_MODE => Name::LockMode,
        LOCK_UNTIL => Name::LockUntil,
        LEGAL_HOLD => Name::LegalHold,
        VERSION_ID | ETAG | REPLICATION_STATUS | SSE | DELETE_MARKER => Name::Computed(name),
        _ => {
            if let Some(tag) = name.strip_prefix(TAG_PREFIX) {
                Name::Tag(tag)
            } else if name.starts_with(S3_PREFIX) {
                Name::UnknownS3(name)
            } else if let Some(user) = name.strip_prefix(USER_PREFIX) {
                Name::User(user)
            } else {
                Name::OtherNamespace(name)
            }
        }
    }
}

/// Rules that depend on the bucket and the mount, not on the object.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub object_lock_enabled: bool,
    pub bypass_governance: bool,
}

/// Reads a settable attribute from `attrs`; computed ones are answered by the caller.
pub fn get(attrs: &ObjectAttrs, name: &str) -> FsResult<Vec<u8>> {
    let missing = || FsError::NoAttr(name.to_string());
    match classify(name) {
        Name::Tag(k) => attrs
            .tags
            .iter()
            .find(|(tk, _)| tk == k)
            .map(|(_, v)| v.clone().into_bytes())
            .ok_or_else(missing),
        Name::Tagging => Ok(tags::format_tagging(&attrs.tags).into_bytes()),
        Name::Acl => Ok(attrs.acl.to_xattr_string().into_bytes()),
        Name::LockMode => attrs
            .retention
            .as_ref()
            .map(|r| r.mode.as_str().as_bytes().to_vec())
            .ok_or_else(missing),
        Name::LockUntil => attrs
            .retention
            .as_ref()
            .map(|r| lock::format_retain_until(&r.retain_until).into_bytes())
            .ok_or_else(missing),
        Name::LegalHold => Ok(if attrs.legal_hold { "ON" } else { "OFF" }.into()),
        Name::User(n) => attrs.user_metadata.get(n).cloned().ok_or_else(missing),
        Name::Computed(_) | Name::UnknownS3(_) => Err(missing()),
        Name::OtherNamespace(n) => Err(FsError::AttrUnsupported(n.to_string())),
    }
}

/// The names `listxattr` shows: what `cp --preserve=xattr` / `rsync -X` should copy. Computed
/// and aggregate names (tagging, version id, ETag, status) are readable by name only.
pub fn list(attrs: &ObjectAttrs) -> Vec<String> {
    let mut names: Vec<String> = attrs
        .tags
        .iter()
        .map(|(k, _)| format!("{TAG_PREFIX}{k}"))
        .collect();
    if attrs.acl != acl::Acl::default() {
        names.push(ACL.into());
    }
    if attrs.retention.is_some() {
        names.push(LOCK_MODE.into());
        names.push(LOCK_UNTIL.into());
    }
    if attrs.legal_hold {
        names.push(LEGAL_HOLD.into());
    }
    names.extend(
        attrs
            .user_metadata
            .keys()
            .map(|k| format!("{USER_PREFIX}{k}")),
    );
    names
}

/// Applies `setxattr(name, value)` to `attrs`; on error `attrs` is unchanged.
pub fn set(attrs: &mut ObjectAttrs, name: &str, value: &[u8], policy: Policy) -> FsResult<()> {
    let text = || {
        std::str::from_utf8(value)
            // `setfattr -v` and `echo` users often leave a newline or a C string NUL.
            .map(|s| s.trim_end_matches(|c: char| c.is_whitespace() || c == '\0'))
            .map_err(|_| FsError::InvalidValue {
                name: name.to_string(),
                reason: "the value is not UTF-8 text".into(),
            })
    };
    let now = OffsetDateTime::now_utc();
    match classify(name) {
        Name::Tag(k) => {
            // The tag itself first: a bad key is EINVAL even when the set is full.
            tags::validate_tag(k, text()?).map_err(BucketError::from)?;
            attrs.tags = tags::set_tag(&attrs.tags, k, text()?).map_err(BucketError::from)?;
        }
        Name::Tagging => {
            attrs.tags = tags::parse_tagging(text()?).map_err(BucketError::from)?;
        }
        Name::Acl => attrs.acl = acl::parse_acl(text()?).map_err(BucketError::from)?,
        Name::LockMode => {
            require_lock(policy)?;
            let mode: LockMode = text()?.parse().map_err(BucketError::from)?;
            match attrs.retention.as_ref().filter(|r| r.is_active(now)) {
                Some(active) => {
                    let changed = Retention {
                        mode,
                        retain_until: active.retain_until,
                    };
                    change_retention(attrs, Some(changed), policy, now)?;
                }
                // No date yet: the mode waits, protecting nothing, for
                // user.s3.object-lock-retain-until-date.
                None => {
                    attrs.retention = Some(Retention {
                        mode,
                        retain_until: now,
                    })
                }
            }
        }
        Name::LockUntil => {
            require_lock(policy)?;
            let until = lock::parse_retain_until(text()?).map_err(BucketError::from)?;
            let mode = attrs
                .retention
                .as_ref()
                .map_or(LockMode::Governance, |r| r.mode);
            change_retention(
                attrs,
                Some(Retention {
                    mode,
                    retain_until: until,
                }),
                policy,
                now,
            )?;
        }
        Name::LegalHold => {
            require_lock(policy)?;
            attrs.legal_hold = lock::parse_legal_hold(text()?).map_err(BucketError::from)?;
        }
        Name::User(n) => {
            attrs.user_metadata.insert(n.to_string(), value.to_vec());
        }
        Name::Computed(n) => return Err(FsError::ReadOnlyAttr(n.to_string())),
        Name::UnknownS3(n) | Name::OtherNamespace(n) => {
            return Err(FsError::AttrUnsupported(n.to_string()));
        }
    }
    Ok(())
}

/// Applies `removexattr(name)` to `attrs`.
pub fn remove(attrs: &mut ObjectAttrs, name: &str, policy: Policy) -> FsResult<()> {
    let missing = || FsError::NoAttr(name.to_string());
    match classify(name) {
        Name::Tag(k) => attrs.tags = tags::remove_tag(&attrs.tags, k).ok_or_else(missing)?,
        Name::Tagging => attrs.tags.clear(),
        Name::Acl => attrs.acl = acl::Acl::default(),
        Name::LockMode | Name::LockUntil => {
            require_lock(policy)?;
            if attrs.retention.is_none() {
                return Err(missing());
            }
            change_retention(attrs, None, policy, OffsetDateTime::now_utc())?;
        }
        Name::LegalHold => {
            require_lock(policy)?;
            attrs.legal_hold = false;
        }
        Name::User(n) => {
            attrs.user_metadata.remove(n).ok_or_else(missing)?;
        }
        Name::Computed(n) => return Err(FsError::ReadOnlyAttr(n.to_string())),
        Name::UnknownS3(n) | Name::OtherNamespace(n) => {
            return Err(FsError::AttrUnsupported(n.to_string()));
        }
    }
    Ok(())
}

fn require_lock(policy: Policy) -> FsResult<()> {
    if policy.object_lock_enabled {
        Ok(())
    } else {
        Err(FsError::Unsupported(
            "Object Lock on a bucket created without --object-lock".into(),
        ))
    }
}

fn change_retention(
    attrs: &mut ObjectAttrs,
    new: Option<Retention>,
    policy: Policy,
    now: OffsetDateTime,
) -> FsResult<()> {
    lock::check_retention_change(
        attrs.retention.as_ref(),
        new.as_ref(),
        now,
        policy.bypass_governance,
    )
    .map_err(BucketError::from)?;
    attrs.retention = new;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKED: Policy = Policy {
        object_lock_enabled: true,
        bypass_governance: false,
    };

    #[test]
    fn names_are_classified() {
        assert_eq!(classify("user.s3.tag.project"), Name::Tag("project"));
        assert_eq!(classify("user.s3.tagging"), Name::Tagging);
        assert_eq!(classify("user.s3.etag"), Name::Computed("user.s3.etag"));
        assert_eq!(classify("user.mime"), Name::User("mime"));
        assert_eq!(classify("user.s3.bogus"), Name::UnknownS3("user.s3.bogus"));
        assert_eq!(classify("trusted.x"), Name::OtherNamespace("trusted.x"));
        assert_eq!(
            classify("system.posix_acl_access"),
            Name::OtherNamespace("system.posix_acl_access")
        );
    }

    #[test]
    fn tags_set_get_remove() {
        let mut a = ObjectAttrs::default();
        set(&mut a, "user.s3.tag.project", b"apollo\n", LOCKED).unwrap();
        assert_eq!(get(&a, "user.s3.tag.project").unwrap(), b"apollo");
        assert_eq!(get(&a, TAGGING).unwrap(), b"project=apollo");
        set(&mut a, TAGGING, b"a=1&b=two%20words", LOCKED).unwrap();
        assert_eq!(get(&a, "user.s3.tag.b").unwrap(), b"two words");
        assert!(get(&a, "user.s3.tag.project").is_err());
        remove(&mut a, "user.s3.tag.a", LOCKED).unwrap();
        assert_eq!(list(&a), vec!["user.s3.tag.b".to_string()]);
        assert_eq!(
            remove(&mut a, "user.s3.tag.a", LOCKED).unwrap_err().errno(),
            libc::ENODATA
        );
    }

    #[test]
    fn other_namespaces_are_unsupported_and_unknown_s3_names_absent() {
        let a = ObjectAttrs::default();
        let errno = |name| get(&a, name).unwrap_err().errno();
        assert_eq!(errno("security.selinux"), libc::EOPNOTSUPP);
        assert_eq!(errno("system.posix_acl_access"), libc::EOPNOTSUPP);
        assert_eq!(errno("user.s3.bogus"), libc::ENODATA);
        assert_eq!(errno("user.missing"), libc::ENODATA);
    }

    #[test]
    fn refusals_leave_attrs_unchanged() {
        let mut a = ObjectAttrs::default();
        for i in 0..10 {
            set(&mut a, &format!("user.s3.tag.k{i}"), b"v", LOCKED).unwrap();
        }
        let before = a.clone();
        assert_eq!(
            set(&mut a, "user.s3.tag.k10", b"v", LOCKED)
                .unwrap_err()
                .errno(),
            libc::E2BIG
        );
        assert_eq!(
            set(&mut a, ACL, b"public-everything", LOCKED)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            set(&mut a, LOCK_UNTIL, b"2001-01-01T00:00:00Z", LOCKED)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            set(&mut a, VERSION_ID, b"x", LOCKED).unwrap_err().errno(),
            libc::EPERM
        );
        assert_eq!(a, before);
    }

    #[test]
    fn compliance_cannot_be_shortened_or_removed() {
        let mut a = ObjectAttrs::default();
        set(&mut a, LOCK_MODE, b"COMPLIANCE", LOCKED).unwrap();
        set(&mut a, LOCK_UNTIL, b"2099-01-01T00:00:00Z", LOCKED).unwrap();
        let bypass = Policy {
            bypass_governance: true,
            ..LOCKED
        };
        assert_eq!(
            set(&mut a, LOCK_UNTIL, b"2098-01-01T00:00:00Z", bypass)
                .unwrap_err()
                .errno(),
            libc::EPERM
        );
        assert_eq!(
            remove(&mut a, LOCK_MODE, bypass).unwrap_err().errno(),
            libc::EPERM
        );
        set(&mut a, LOCK_UNTIL, b"2100-01-01T00:00:00Z", LOCKED).unwrap();
        assert_eq!(get(&a, LOCK_UNTIL).unwrap(), b"2100-01-01T00:00:00Z");
    }

    #[test]
    fn object_lock_needs_a_lock_bucket() {
        let mut a = ObjectAttrs::default();
        let plain = Policy {
            object_lock_enabled: false,
            bypass_governance: false,
        };
        assert_eq!(
            set(&mut a, LEGAL_HOLD, b"ON", plain).unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
    }
}
