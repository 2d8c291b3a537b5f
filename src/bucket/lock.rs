//! S3 Object Lock: retention modes, retain-until dates, legal hold, and the
//! rules for changing retention and permanently deleting a locked version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{Duration, Month, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::bucket::meta_error::MetaError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exact match: S3 rejects `governance`, so accepting it here would let a
/// value through that replication to real S3 would then fail on.
impl FromStr for LockMode {
    type Err = MetaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "GOVERNANCE" => Ok(LockMode::Governance),
            "COMPLIANCE" => Ok(LockMode::Compliance),
            _ => Err(MetaError::InvalidLockMode(s.to_owned())),
        }
    }
}

/// Field names are Rust-style in stored metadata; the S3 JSON names (`Mode`,
/// `RetainUntilDate`) are accepted too so S3 API JSON can be stored as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    #[serde(alias = "Mode")]
    pub mode: LockMode,
    #[serde(alias = "RetainUntilDate", with = "rfc3339_serde")]
    pub retain_until: OffsetDateTime,
}

impl Retention {
    /// Retention protects up to, not including, `retain_until`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        now < self.retain_until
    }
}

/// Own serde glue because bucketfs does not enable time's `serde` feature.
mod rfc3339_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_retain_until(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_retain_until(&s).map_err(serde::de::Error::custom)
    }
}

/// RFC 3339 first; ISO 8601 as a fallback for forms such as
/// `20300101T000000Z` or `2030-01-01T00:00Z`. An offset is always required:
/// a lock date must not depend on the server's time zone.
pub fn parse_retain_until(s: &str) -> Result<OffsetDateTime, MetaError> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .map_err(|_| MetaError::InvalidRetainUntil(s.to_owned()))?;
    // Kept in UTC, and only within 0..=9999 there: RFC 3339 cannot represent
    // other years, so the date could not be written back to the xattr or the
    // metadata. `9999-12-31T23:59:59-14:00` is past 9999 in UTC; converting
    // it unchecked panicked (one setfattr took the whole mount down).
    t.checked_to_offset(UtcOffset::UTC)
        .filter(|utc| (0..=9999).contains(&utc.year()))
        .ok_or_else(|| MetaError::InvalidRetainUntil(s.to_owned()))
}

/// RFC 3339 in UTC (`...Z`), fractional seconds only when present.
pub fn format_retain_until(t: &OffsetDateTime) -> String {
    // Only fails for years outside 0..=9999 in UTC, which `parse_retain_until`
    // and `retain_until_from` never produce; Display beats panicking in a getter.
    let Some(utc) = t.checked_to_offset(UtcOffset::UTC) else {
        return t.to_string();
    };
    utc.format(&Rfc3339).unwrap_or_else(|_| utc.to_string())
}

pub fn parse_legal_hold(s: &str) -> Result<bool, MetaError> {
    match s {
        "ON" => Ok(true),
        "OFF" => Ok(false),
        _ => Err(MetaError::InvalidLegalHold(s.to_owned())),
    }
}

pub fn format_legal_hold(on: bool) -> &'static str {
    if on { "ON" } else { "OFF" }
}

/// May a version's retention go from `old` to `new` (None = no retention) at time `now`? S3 rules: a new date must be in the future; extending is always allowed; COMPLIANCE (while unexpired) can never be shortened, removed or switched to GOVERNANCE — by anyone; GOVERNANCE (while unexpired) can be shortened/removed/switched only with bypass_governance=true. Expired retention can be changed freely.
pub fn check_retention_change(
    old: Option<&Retention>,
    new: Option<&Retention>,
    now: OffsetDateTime,
    bypass_governance: bool,
) -> Result<(), MetaError> {
    if let Some(new) = new
        && !new.is_active(now)
    {
        return Err(MetaError::RetainUntilInPast(format_retain_until(
            &new.retain_until,
        )));
    }
    let Some(old) = old.filter(|o| o.is_active(now)) else {
        return Ok(());
    };
    let until = format_retain_until(&old.retain_until);
    let why = match new {
        None => Some(format!("cannot remove retention that runs until {until}")),
        Some(new) if new.mode != old.mode => Some(format!(
            "cannot switch mode from {} to {} before {until}",
            old.mode, new.mode
        )),
        Some(new) if new.retain_until < old.retain_until => Some(format!(
            "cannot shorten retain-until from {until} to {}",
            format_retain_until(&new.retain_until)
        )),
        Some(_) => None,
    };
    match (why, old.mode) {
        (None, _) => Ok(()),
        (Some(why), LockMode::Compliance) => Err(MetaError::ComplianceRetentionLocked(why)),
        (Some(_), LockMode::Governance) if bypass_governance => Ok(()),
        (Some(why), LockMode::Governance) => Err(MetaError::GovernanceRetentionLocked(why)),
    }
}

/// Why a version may not be permanently deleted now, if it may not: legal hold ON, unexpired COMPLIANCE, unexpired GOVERNANCE without bypass. None = deletable.
///
/// All blocking reasons are reported, joined by "; ", so the user does not
/// clear one only to hit the next.
pub fn deletion_blocker(
    retention: Option<&Retention>,
    legal_hold: bool,
    now: OffsetDateTime,
    bypass_governance: bool,
) -> Option<String> {
    let mut reasons = Vec::new();
    if legal_hold {
        reasons.push("legal hold is ON (set it to OFF first; bypass does not apply)".to_owned());
    }
    if let Some(r) = retention.filter(|r| r.is_active(now)) {
        let until = format_retain_until(&r.retain_until);
        match r.mode {
            LockMode::Compliance => reasons.push(format!(
                "COMPLIANCE retention until {until} (cannot be bypassed by anyone)"
            )),
            LockMode::Governance if !bypass_governance => reasons.push(format!(
                "GOVERNANCE retention until {until} (needs bypass-governance-retention)"
            )),
            LockMode::Governance => {}
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Bucket default retention, turned into a per-version `Retention` at
/// version creation. Exactly one of `days`/`years` is set in a valid value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultRetention {
    #[serde(alias = "Mode")]
    pub mode: LockMode,
    #[serde(alias = "Days", default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    #[serde(alias = "Years", default, skip_serializing_if = "Option::is_none")]
    pub years: Option<u32>,
}

impl DefaultRetention {
    /// S3 requires exactly one of Days/Years, and a positive one.
    pub fn validate(&self) -> Result<(), MetaError> {
        match (self.days, self.years) {
            (Some(0), None) => Err(MetaError::InvalidDefaultRetention(
                "Days must be a positive integer".to_owned(),
            )),
            (None, Some(0)) => Err(MetaError::InvalidDefaultRetention(
                "Years must be a positive integer".to_owned(),
            )),
            (Some(_), None) | (None, Some(_)) => Ok(()),
            (Some(_), Some(_)) => Err(MetaError::InvalidDefaultRetention(
                "set either Days or Years, not both".to_owned(),
            )),
            (None, None) => Err(MetaError::InvalidDefaultRetention(
                "one of Days or Years is required".to_owned(),
            )),
        }
    }

    /// Years are calendar years (Feb 29 becomes Feb 28 in a non-leap year),
    /// days are 24-hour days. The result saturates at the latest
    /// representable instant instead of panicking on absurd values. If both
    /// fields are set (invalid), both are applied so the lock errs on longer.
    pub fn retain_until_from(&self, created: OffsetDateTime) -> OffsetDateTime {
        let mut t = created.to_offset(UtcOffset::UTC);
        if let Some(years) = self.years {
            t = add_calendar_years(t, years);
        }
        if let Some(days) = self.days {
            t = t.saturating_add(Duration::days(i64::from(days)));
        }
        t
    }

    pub fn retention_from(&self, created: OffsetDateTime) -> Retention {
        Retention {
            mode: self.mode,
            retain_until: self.retain_until_from(created),
        }
    }
}

fn latest_utc() -> OffsetDateTime {
    PrimitiveDateTime::MAX.assume_utc()
}

fn add_calendar_years(t: OffsetDateTime, years: u32) -> OffsetDateTime {
    let Some(year) = i32::try_from(years)
        .ok()
        .and_then(|y| t.year().checked_add(y))
    else {
        return latest_utc();
    };
    let t = if t.month() == Month::February && t.day() == 29 && !time::util::is_leap_year(year) {
        match t.replace_day(28) {
            Ok(t) => t,
            Err(_) => return latest_utc(),
        }
    } else {
        t
    };
    t.replace_year(year).unwrap_or_else(|_| latest_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2030-06-15 12:00:00 UTC);

    fn ret(mode: LockMode, until: OffsetDateTime) -> Retention {
        Retention {
            mode,
            retain_until: until,
        }
    }
    fn gov(until: OffsetDateTime) -> Retention {
        ret(LockMode::Governance, until)
    }
    fn comp(until: OffsetDateTime) -> Retention {
        ret(LockMode::Compliance, until)
    }

    #[test]
    fn lock_mode_strings() {
        assert_eq!("GOVERNANCE".parse(), Ok(LockMode::Governance));
        assert_eq!("COMPLIANCE".parse(), Ok(LockMode::Compliance));
        for bad in [
            "governance",
            "Compliance",
            " GOVERNANCE",
            "COMPLIANCE\n",
            "",
            "LEGAL",
        ] {
            assert_eq!(
                bad.parse::<LockMode>(),
                Err(MetaError::InvalidLockMode(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(LockMode::Governance.as_str(), "GOVERNANCE");
        assert_eq!(LockMode::Compliance.to_string(), "COMPLIANCE");
        assert_eq!(
            serde_json::to_string(&LockMode::Compliance).unwrap(),
            "\"COMPLIANCE\""
        );
    }

    #[test]
    fn legal_hold_strings() {
        assert_eq!(parse_legal_hold("ON"), Ok(true));
        assert_eq!(parse_legal_hold("OFF"), Ok(false));
        for bad in ["on", "Off", "true", "1", "", "ON "] {
            assert_eq!(
                parse_legal_hold(bad),
                Err(MetaError::InvalidLegalHold(bad.into()))
            );
        }
        assert_eq!(format_legal_hold(true), "ON");
        assert_eq!(format_legal_hold(false), "OFF");
    }

    #[test]
    fn retain_until_parsing() {
        let ok = [
            ("2030-01-01T00:00:00Z", datetime!(2030-01-01 00:00:00 UTC)),
            (
                "2030-01-01T00:00:00.000Z",
                datetime!(2030-01-01 00:00:00 UTC),
            ),
            (
                "2030-01-01T00:00:00.5Z",
                datetime!(2030-01-01 00:00:00.5 UTC),
            ),
            (
                "2030-01-01T02:00:00+02:00",
                datetime!(2030-01-01 00:00:00 UTC),
            ),
            (
                "2029-12-31T19:00:00-05:00",
                datetime!(2030-01-01 00:00:00 UTC),
            ),
            ("20300101T000000Z", datetime!(2030-01-01 00:00:00 UTC)),
            ("2030-01-01T00:00Z", datetime!(2030-01-01 00:00:00 UTC)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_retain_until(input), Ok(want), "{input}");
        }
        for bad in [
            "",
            "2030-01-01",
            "2030-01-01T00:00:00",
            "2030-13-01T00:00:00Z",
            "2030-02-30T00:00:00Z",
            "tomorrow",
            "1893456000",
            " 2030-01-01T00:00:00Z",
        ] {
            assert_eq!(
                parse_retain_until(bad),
                Err(MetaError::InvalidRetainUntil(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn retain_until_formatting() {
        assert_eq!(
            format_retain_until(&datetime!(2030-01-01 00:00:00 UTC)),
            "2030-01-01T00:00:00Z"
        );
        assert_eq!(
            format_retain_until(&datetime!(2030-01-01 02:00:00 +02:00)),
            "2030-01-01T00:00:00Z",
            "normalised to UTC"
        );
        assert_eq!(
            format_retain_until(&datetime!(2030-01-01 00:00:00.25 UTC)),
            "2030-01-01T00:00:00.25Z"
        );
        for t in [
            datetime!(2030-01-01 00:00:00 UTC),
            datetime!(2030-01-01 00:00:00.123456789 UTC),
            datetime!(9999-12-31 23:59:59 UTC),
        ] {
            assert_eq!(parse_retain_until(&format_retain_until(&t)), Ok(t));
        }
    }

    #[test]
    fn retention_serde() {
        let r = comp(datetime!(2030-01-01 00:00:00 UTC));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"mode":"COMPLIANCE","retain_until":"2030-01-01T00:00:00Z"}"#
        );
        assert_eq!(serde_json::from_str::<Retention>(&json).unwrap(), r);
        let s3 = r#"{"Mode":"COMPLIANCE","RetainUntilDate":"2030-01-01T00:00:00.000Z"}"#;
        assert_eq!(serde_json::from_str::<Retention>(s3).unwrap(), r);
        assert!(
            serde_json::from_str::<Retention>(r#"{"mode":"COMPLIANCE","retain_until":"soon"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<Retention>(
                r#"{"mode":"compliance","retain_until":"2030-01-01T00:00:00Z"}"#
            )
            .is_err()
        );
    }

    /// (name, old, new, bypass, expected)
    type ChangeCase = (
        &'static str,
        Option<Retention>,
        Option<Retention>,
        bool,
        Want,
    );
    /// (name, retention, legal hold, bypass, expected blocker)
    type DeleteCase = (
        &'static str,
        Option<Retention>,
        bool,
        bool,
        Option<&'static str>,
    );

    #[derive(Debug, PartialEq)]
    enum Want {
        Ok,
        Past,
        Compliance,
        Governance,
    }

    #[test]
    fn retention_change_table() {
        let later = datetime!(2031-01-01 00:00:00 UTC);
        let much_later = datetime!(2035-01-01 00:00:00 UTC);
        let sooner = datetime!(2030-07-01 00:00:00 UTC);
        let past = datetime!(2030-06-01 00:00:00 UTC);
        use Want::*;
        #[rustfmt::skip]
        let cases: Vec<ChangeCase> = vec![
            ("none -> none", None, None, false, Ok),
            ("none -> future gov", None, Some(gov(later)), false, Ok),
            ("none -> future comp", None, Some(comp(later)), false, Ok),
            ("none -> past", None, Some(gov(past)), false, Past),
            ("none -> exactly now", None, Some(gov(NOW)), false, Past),
            ("none -> past even with bypass", None, Some(comp(past)), true, Past),
            ("new date past beats lock error", Some(comp(later)), Some(comp(past)), true, Past),

            ("comp extend", Some(comp(later)), Some(comp(much_later)), false, Ok),
            ("comp same", Some(comp(later)), Some(comp(later)), false, Ok),
            ("comp shorten", Some(comp(later)), Some(comp(sooner)), false, Compliance),
            ("comp shorten with bypass", Some(comp(later)), Some(comp(sooner)), true, Compliance),
            ("comp remove", Some(comp(later)), None, false, Compliance),
            ("comp remove with bypass", Some(comp(later)), None, true, Compliance),
            ("comp -> gov", Some(comp(later)), Some(gov(much_later)), false, Compliance),
            ("comp -> gov with bypass", Some(comp(later)), Some(gov(much_later)), true, Compliance),

            ("gov extend", Some(gov(later)), Some(gov(much_later)), false, Ok),
            ("gov same", Some(gov(later)), Some(gov(later)), false, Ok),
            ("gov shorten", Some(gov(later)), Some(gov(sooner)), false, Governance),
            ("gov shorten with bypass", Some(gov(later)), Some(gov(sooner)), true, Ok),
            ("gov remove", Some(gov(later)), None, false, Governance),
            ("gov remove with bypass", Some(gov(later)), None, true, Ok),
            ("gov -> comp", Some(gov(later)), Some(comp(much_later)), false, Governance),
            ("gov -> comp with bypass", Some(gov(later)), Some(comp(much_later)), true, Ok),

            ("expired comp shorten", Some(comp(past)), Some(comp(sooner)), false, Ok),
            ("expired comp remove", Some(comp(past)), None, false, Ok),
            ("expired comp -> gov", Some(comp(past)), Some(gov(sooner)), false, Ok),
            ("comp expiring exactly now", Some(comp(NOW)), None, false, Ok),
            ("expired gov remove", Some(gov(past)), None, false, Ok),
            ("expired gov -> comp", Some(gov(past)), Some(comp(later)), false, Ok),
        ];
        for (name, old, new, bypass, want) in cases {
            let got = match check_retention_change(old.as_ref(), new.as_ref(), NOW, bypass) {
                Result::Ok(()) => Ok,
                Err(MetaError::RetainUntilInPast(_)) => Past,
                Err(MetaError::ComplianceRetentionLocked(_)) => Compliance,
                Err(MetaError::GovernanceRetentionLocked(_)) => Governance,
                Err(e) => panic!("{name}: unexpected {e:?}"),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn retention_change_messages() {
        let later = datetime!(2031-01-01 00:00:00 UTC);
        let sooner = datetime!(2030-07-01 00:00:00 UTC);
        let check = |old: Retention, new: Option<Retention>| {
            check_retention_change(Some(&old), new.as_ref(), NOW, false)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            check(comp(later), Some(comp(sooner))),
            "COMPLIANCE retention is locked: cannot shorten retain-until from \
             2031-01-01T00:00:00Z to 2030-07-01T00:00:00Z; it can only be extended, \
             by anyone, until it expires"
        );
        assert_eq!(
            check(comp(later), None),
            "COMPLIANCE retention is locked: cannot remove retention that runs until \
             2031-01-01T00:00:00Z; it can only be extended, by anyone, until it expires"
        );
        assert!(check(comp(later), Some(gov(later))).contains(
            "cannot switch mode from COMPLIANCE to GOVERNANCE before 2031-01-01T00:00:00Z"
        ));
        assert_eq!(
            check(gov(later), Some(gov(sooner))),
            "GOVERNANCE retention is locked: cannot shorten retain-until from \
             2031-01-01T00:00:00Z to 2030-07-01T00:00:00Z; this needs \
             bypass-governance-retention (otherwise it can only be extended until it expires)"
        );
        assert_eq!(
            check_retention_change(None, Some(&gov(NOW)), NOW, false)
                .unwrap_err()
                .to_string(),
            "retain-until date 2030-06-15T12:00:00Z is not in the future; \
             a new retention date must be later than now"
        );
    }

    #[test]
    fn deletion_blocker_table() {
        let later = datetime!(2031-01-01 00:00:00 UTC);
        let past = datetime!(2030-01-01 00:00:00 UTC);
        #[rustfmt::skip]
        let cases: Vec<DeleteCase> = vec![
            ("nothing", None, false, false, None),
            ("nothing, bypass", None, false, true, None),
            ("legal hold", None, true, false,
                Some("legal hold is ON (set it to OFF first; bypass does not apply)")),
            ("legal hold ignores bypass", None, true, true,
                Some("legal hold is ON (set it to OFF first; bypass does not apply)")),
            ("active comp", Some(comp(later)), false, false,
                Some("COMPLIANCE retention until 2031-01-01T00:00:00Z (cannot be bypassed by anyone)")),
            ("active comp, bypass", Some(comp(later)), false, true,
                Some("COMPLIANCE retention until 2031-01-01T00:00:00Z (cannot be bypassed by anyone)")),
            ("active gov", Some(gov(later)), false, false,
                Some("GOVERNANCE retention until 2031-01-01T00:00:00Z (needs bypass-governance-retention)")),
            ("active gov, bypass", Some(gov(later)), false, true, None),
            ("expired comp", Some(comp(past)), false, false, None),
            ("expired gov", Some(gov(past)), false, false, None),
            ("comp expiring exactly now", Some(comp(NOW)), false, false, None),
            ("expired comp + hold", Some(comp(past)), true, false,
                Some("legal hold is ON (set it to OFF first; bypass does not apply)")),
            ("gov bypassed + hold", Some(gov(later)), true, true,
                Some("legal hold is ON (set it to OFF first; bypass does not apply)")),
            ("hold + comp", Some(comp(later)), true, false,
                Some("legal hold is ON (set it to OFF first; bypass does not apply); \
                      COMPLIANCE retention until 2031-01-01T00:00:00Z (cannot be bypassed by anyone)")),
        ];
        for (name, r, hold, bypass, want) in cases {
            assert_eq!(
                deletion_blocker(r.as_ref(), hold, NOW, bypass).as_deref(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn default_retention() {
        let created = datetime!(2030-06-15 12:34:56 UTC);
        let d = |days, years| DefaultRetention {
            mode: LockMode::Governance,
            days,
            years,
        };
        let cases = [
            (d(Some(1), None), datetime!(2030-06-16 12:34:56 UTC)),
            (d(Some(30), None), datetime!(2030-07-15 12:34:56 UTC)),
            (d(None, Some(1)), datetime!(2031-06-15 12:34:56 UTC)),
            (d(None, Some(10)), datetime!(2040-06-15 12:34:56 UTC)),
            (d(Some(u32::MAX), None), PrimitiveDateTime::MAX.assume_utc()),
            (d(None, Some(u32::MAX)), PrimitiveDateTime::MAX.assume_utc()),
            (d(None, Some(8000)), PrimitiveDateTime::MAX.assume_utc()),
        ];
        for (dr, want) in cases {
            assert_eq!(dr.retain_until_from(created), want, "{dr:?}");
        }
        // Offsets do not shift the instant; the result is in UTC.
        assert_eq!(
            d(Some(1), None).retain_until_from(datetime!(2030-06-15 14:34:56 +02:00)),
            datetime!(2030-06-16 12:34:56 UTC)
        );
        // Leap day: calendar years, clamped to Feb 28.
        let leap = datetime!(2028-02-29 00:00:00 UTC);
        assert_eq!(
            d(None, Some(1)).retain_until_from(leap),
            datetime!(2029-02-28 00:00:00 UTC)
        );
        assert_eq!(
            d(None, Some(4)).retain_until_from(leap),
            datetime!(2032-02-29 00:00:00 UTC)
        );
        let r = DefaultRetention {
            mode: LockMode::Compliance,
            days: Some(2),
            years: None,
        }
        .retention_from(created);
        assert_eq!(r, comp(datetime!(2030-06-17 12:34:56 UTC)));

        assert_eq!(d(Some(1), None).validate(), Result::Ok(()));
        assert_eq!(d(None, Some(1)).validate(), Result::Ok(()));
        for (bad, why) in [
            (d(None, None), "one of Days or Years is required"),
            (d(Some(1), Some(1)), "set either Days or Years, not both"),
            (d(Some(0), None), "Days must be a positive integer"),
            (d(None, Some(0)), "Years must be a positive integer"),
        ] {
            assert_eq!(
                bad.validate(),
                Err(MetaError::InvalidDefaultRetention(why.into()))
            );
        }

        let json = r#"{"Mode":"GOVERNANCE","Days":30}"#;
        let parsed: DefaultRetention = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, d(Some(30), None));
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            r#"{"mode":"GOVERNANCE","days":30}"#
        );
    }

    /// Any text a user can set as `user.s3.object-lock-retain-until-date` or
    /// `...-legal-hold`: an answer, never a panic (`9999-12-31T23:59:59-14:00`,
    /// past 9999 in UTC, took the mount down), and a date accepted is written
    /// back as one that reads the same instant.
    #[test]
    fn mutated_lock_values_are_answered_and_accepted_dates_round_trip() {
        let corpus = [
            "2030-01-01T00:00:00Z",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59+14:00",
            "0000-01-01T00:00:00+01:00",
            "0000-01-01T00:00:00-23:59",
            "2099-02-29T00:00:00Z",
            "2030-01-01T00:00:00.123456789+05:30",
            "2030-001T00:00Z",
            "+002030-01-01T00:00:00.000000000Z",
            "2030-W01-1T00:00Z",
            "ON",
            "OFF",
        ];
        for text in crate::mutate::Mutator::inputs(7, &corpus, "0123456789TZ+-:.W", 40_000) {
            if let Ok(t) = parse_retain_until(&text) {
                let written = format_retain_until(&t);
                assert_eq!(
                    parse_retain_until(&written).ok(),
                    Some(t),
                    "{text:?} -> {written}"
                );
            }
            let _ = parse_legal_hold(&text);
        }
        assert!(parse_retain_until("9999-12-31T23:59:59-14:00").is_err());
        assert!(parse_retain_until("9999-12-31T23:59:59+14:00").is_ok());
    }
}
