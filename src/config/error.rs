//! The one error type of the config module.

use std::fmt;

/// A 1-based line and column in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl Position {
    /// `None` for serde-saphyr's "unknown" location (line 0), which it reports for
    /// values that went through serde's internal buffering.
    pub(crate) fn from_location(loc: serde_saphyr::Location) -> Option<Position> {
        let line = u32::try_from(loc.line()).ok()?;
        let column = u32::try_from(loc.column()).ok()?;
        (line > 0).then_some(Position { line, column })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Everything that can go wrong loading `replication.yaml`.
///
/// Every message starts with `FILE:LINE:COLUMN:` (or `FILE:` when the position is
/// unknown), then names the rule (`rule #N (ID "x")`) and the field where that applies.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read replication config: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML/JSON, or does not have the shape of a
    /// ReplicationConfiguration (unknown field, wrong type, missing field, ...).
    #[error("{file}{}: {}{}{message}", at(.pos), rule_prefix(.rule), field_prefix(.field))]
    Syntax {
        file: String,
        pos: Option<Position>,
        /// The rule the error lies in, when it could be told.
        rule: Option<String>,
        /// The key whose value is wrong, when serde-saphyr's message does not name it.
        field: Option<String>,
        message: String,
    },
    /// Well-formed, but breaks one of S3's (or bucketfs's) rules.
    #[error("{file}{}: {}`{field}`: {message}", at(.pos), rule_prefix(.rule))]
    Invalid {
        file: String,
        pos: Option<Position>,
        rule: Option<String>,
        /// Dotted S3 field path, e.g. `Filter.And.Tags` or `Destination.Bucket`.
        field: String,
        /// What was found and what was expected.
        message: String,
    },
}

impl ConfigError {
    /// The offending field: its S3 path for validation errors, its key for a
    /// wrongly typed value.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::Syntax { field, .. } => field.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// Where in the file the problem is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            ConfigError::Syntax { pos, .. } | ConfigError::Invalid { pos, .. } => *pos,
            ConfigError::Read { .. } => None,
        }
    }
}

fn at(pos: &Option<Position>) -> String {
    pos.map(|p| format!(":{p}")).unwrap_or_default()
}

fn field_prefix(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!("`{f}`: "))
        .unwrap_or_default()
}

fn rule_prefix(rule: &Option<String>) -> String {
    rule.as_ref().map(|r| format!("{r}: ")).unwrap_or_default()
}

/// Builds `Invalid` errors for one file without repeating the file name everywhere.
#[derive(Clone, Copy)]
pub(crate) struct Reporter<'a> {
    pub file: &'a str,
}

impl Reporter<'_> {
    pub fn invalid(
        &self,
        pos: Option<Position>,
        rule: Option<&str>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            pos,
            rule: rule.map(str::to_owned),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}
