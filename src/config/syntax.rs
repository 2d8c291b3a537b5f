//! Turning serde-saphyr's parse errors into [`ConfigError::Syntax`].
//!
//! serde-saphyr already says *where* (line:column) and *what was expected*; what it
//! cannot say is which rule that position belongs to. We recover that by re-reading
//! the text leniently (every field optional, unknown fields ignored) and recording
//! where each rule starts.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::{MessageFormatter, Spanned};

use crate::config::error::{ConfigError, Position};

pub(crate) fn syntax_error(text: &str, file: &str, err: &serde_saphyr::Error) -> ConfigError {
    let inner = err.without_snippet();
    let pos = inner.location().and_then(Position::from_location);
    // The formatter's contract asks callers to neutralise control characters
    // before printing: they could come from the user's own file.
    let message: String = serde_saphyr::DefaultMessageFormatter
        .format_message(inner)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let field = pos
        .and_then(|p| key_before(text, p))
        .filter(|k| !message.contains(&format!("`{k}`")));
    ConfigError::Syntax {
        file: file.to_owned(),
        pos,
        rule: pos.and_then(|p| rule_at(text, p)),
        field,
        message: explain(message),
    }
}

/// serde's scalar errors ("invalid i64") say what Rust type was wanted, not what a
/// config author should write.
fn explain(message: String) -> String {
    if let Some(dup) = message.strip_prefix("duplicate mapping key: ") {
        let key = dup.split(", set DuplicateKeyPolicy").next().unwrap_or(dup);
        return format!("duplicate key `{key}`; expected each key at most once");
    }
    let integer = ["invalid i64", "invalid u64", "invalid i32", "invalid u32"];
    if integer.iter().any(|m| message.starts_with(m)) {
        format!("{message}: expected an integer")
    } else {
        message
    }
}

/// The mapping key whose value starts at `pos` (`Priority` in `Priority: high` or
/// `{Priority: high}`), so that type errors name their field as well.
fn key_before(text: &str, pos: Position) -> Option<String> {
    let line = text
        .lines()
        .nth(usize::try_from(pos.line).ok()?.checked_sub(1)?)?;
    let before: String = line
        .chars()
        .take(usize::try_from(pos.column).ok()?.saturating_sub(1))
        .collect();
    let before = before.trim_end().strip_suffix(':')?;
    let key: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '"' || *c == '\'')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .filter(|c| *c != '"' && *c != '\'')
        .collect();
    (!key.is_empty()).then_some(key)
}

/// `rule #N (ID "x")`, the label used in every message about a rule.
pub(crate) fn rule_label(index: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("rule #{} (ID {id:?})", index + 1),
        None => format!("rule #{}", index + 1),
    }
}

#[derive(Deserialize)]
struct Outline {
    #[serde(rename = "ReplicationConfiguration")]
    inner: Option<Box<Outline>>,
    #[serde(rename = "Rules")]
    rules: Option<Vec<Spanned<OutlineRule>>>,
}

#[derive(Deserialize)]
struct OutlineRule {
    #[serde(rename = "ID")]
    id: Option<LenientId>,
}

/// The ID as a string when it is one; anything else must not make the outline fail.
#[derive(Deserialize)]
#[serde(untagged)]
enum LenientId {
    Text(String),
    Other(IgnoredAny),
}

/// The label of the rule that `pos` falls in, if the text is regular enough to tell.
fn rule_at(text: &str, pos: Position) -> Option<String> {
    // Lenient about duplicate keys too, so a duplicate can still be placed in its rule.
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::FirstWins;
    let mut outline: Outline = serde_saphyr::from_str_with_options(text, options).ok()?;
    while let Some(inner) = outline.inner {
        outline = *inner;
    }
    let starts: Vec<(Position, Option<String>)> = outline
        .rules?
        .into_iter()
        .map(|r| {
            let id = match r.value.id {
                Some(LenientId::Text(s)) => Some(s),
                _ => None,
            };
            Position::from_location(r.referenced).map(|p| (p, id))
        })
        .collect::<Option<_>>()?;
    let index = starts.iter().rposition(|(start, _)| *start <= pos)?;
    let (start, id) = &starts[index];
    // The last rule has no successor to bound it: a top-level key after `Rules` sits
    // left of the rule's first key, and must not be blamed on the rule.
    let is_last = index + 1 == starts.len();
    if is_last && pos.line != start.line && pos.column < start.column {
        return None;
    }
    Some(rule_label(index, id.as_deref()))
}
