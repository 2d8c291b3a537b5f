//! S3 object tags: validation and the URL-encoded `x-amz-tagging` form used
//! for the tagging xattr.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::bucket::meta_error::MetaError;

/// Insertion-ordered so `getfattr` output is stable and matches what was set.
pub type TagSet = Vec<(String, String)>;

pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_KEY_CHARS: usize = 128;
pub const MAX_TAG_VALUE_CHARS: usize = 256;

/// Punctuation S3 allows besides letters, digits and spaces.
pub const TAG_PUNCTUATION: &str = "+-=._:/@";

const RESERVED_PREFIX: &str = "aws:";

/// RFC 3986 unreserved characters stay literal; everything else (notably
/// `& = + %` and spaces) is escaped so the output cannot be mis-split.
const TAGGING_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Mirrors AWS's `[\p{L}\p{Z}\p{N}_.:/=+\-@]`. `\p{Z}` is approximated by
/// "whitespace that is not a control character", which is exactly Zs+Zl+Zp
/// and keeps `\t`/`\n` out. `is_alphabetic` is slightly wider than `\p{L}`
/// (it also admits Other_Alphabetic combining marks); without a Unicode
/// category table that is the closest std offers.
fn is_allowed_tag_char(c: char) -> bool {
    c.is_alphabetic()
        || c.is_numeric()
        || (c.is_whitespace() && !c.is_control())
        || TAG_PUNCTUATION.contains(c)
}

fn first_disallowed_char(s: &str) -> Option<String> {
    s.chars()
        .enumerate()
        .find(|&(_, c)| !is_allowed_tag_char(c))
        .map(|(i, c)| {
            format!(
                "character {c:?} (U+{:04X}) at character index {i} is not allowed; allowed are \
                 Unicode letters, digits, spaces and {}",
                c as u32,
                TAG_PUNCTUATION
                    .chars()
                    .map(String::from)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
}

pub fn validate_tag(key: &str, value: &str) -> Result<(), MetaError> {
    let key_err = |reason: String| MetaError::InvalidTagKey {
        key: key.to_owned(),
        reason,
    };
    // Limits are in Unicode scalar values, not bytes: S3 counts characters.
    let key_len = key.chars().count();
    if key_len == 0 {
        return Err(key_err("tag key is empty".to_owned()));
    }
    if key_len > MAX_TAG_KEY_CHARS {
        return Err(key_err(format!(
            "tag key is {key_len} characters long; at most {MAX_TAG_KEY_CHARS} are allowed"
        )));
    }
    // `get` rather than slicing: the 4th byte may fall inside a multibyte char.
    if key
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
    {
        return Err(key_err(
            "the \"aws:\" prefix (in any letter case) is reserved for AWS".to_owned(),
        ));
    }
    if let Some(reason) = first_disallowed_char(key) {
        return Err(key_err(reason));
    }

    let value_err = |reason: String| MetaError::InvalidTagValue {
        key: key.to_owned(),
        reason,
    };
    let value_len = value.chars().count();
    if value_len > MAX_TAG_VALUE_CHARS {
        return Err(value_err(format!(
            "tag value is {value_len} characters long; at most {MAX_TAG_VALUE_CHARS} are allowed"
        )));
    }
    if let Some(reason) = first_disallowed_char(value) {
        return Err(value_err(reason));
    }
    Ok(())
}

pub fn validate_tag_set(tags: &[(String, String)]) -> Result<(), MetaError> {
    if tags.len() > MAX_TAGS {
        return Err(MetaError::TooManyTags { count: tags.len() });
    }
    for (i, (key, value)) in tags.iter().enumerate() {
        validate_tag(key, value)?;
        // Quadratic is fine: at most 10 tags.
        if tags[..i].iter().any(|(k, _)| k == key) {
            return Err(MetaError::DuplicateTagKey(key.clone()));
        }
    }
    Ok(())
}

/// Form-style decoding as S3 applies to `x-amz-tagging`: `+` is a space and
/// `%XX` a byte. Unlike `percent_encoding::percent_decode`, a malformed
/// escape is an error rather than passed through, so typos are not stored.
fn form_decode(s: &str, what: &str) -> Result<String, MetaError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                // Checked digit-by-digit: `from_str_radix` alone would accept "+f".
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => out.push(b),
                    None => {
                        return Err(MetaError::InvalidTagging(format!(
                            "malformed percent-escape in {what} {s:?}: '%' must be followed by \
                             two hex digits (write a literal '%' as %25)"
                        )));
                    }
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        MetaError::InvalidTagging(format!("{what} {s:?} does not decode to valid UTF-8"))
    })
}

/// Parses the `x-amz-tagging` form. A pair without `=` is a key with an empty
/// value, as in URL query strings. Empty pairs (`a=1&&b=2`, trailing `&`) are
/// refused because they usually mean a mangled value rather than intent.
pub fn parse_tagging(s: &str) -> Result<TagSet, MetaError> {
    if s.is_empty() {
        return Ok(TagSet::new());
    }
    let mut tags = TagSet::new();
    for (i, pair) in s.split('&').enumerate() {
        if pair.is_empty() {
            return Err(MetaError::InvalidTagging(format!(
                "pair {} is empty (stray or doubled '&'); encode a literal '&' as %26",
                i + 1
            )));
        }
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        tags.push((
            form_decode(raw_key, "key")?,
            form_decode(raw_value, "value")?,
        ));
    }
    validate_tag_set(&tags)?;
    Ok(tags)
}

pub fn format_tagging(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, TAGGING_ENCODE_SET),
                utf8_percent_encode(v, TAGGING_ENCODE_SET)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Returns a new set so a refused change leaves the caller's stored set intact.
/// Takes a slice so `&TagSet` coerces without clippy's `ptr_arg`.
pub fn set_tag(tags: &[(String, String)], key: &str, value: &str) -> Result<TagSet, MetaError> {
    let mut out = tags.to_vec();
    match out.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value.to_owned(),
        None => out.push((key.to_owned(), value.to_owned())),
    }
    validate_tag_set(&out)?;
    Ok(out)
}

pub fn remove_tag(tags: &[(String, String)], key: &str) -> Option<TagSet> {
    let pos = tags.iter().position(|(k, _)| k == key)?;
    let mut out = tags.to_vec();
    out.remove(pos);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: usize, c: char) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    fn set(pairs: &[(&str, &str)]) -> TagSet {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn n_tags(n: usize) -> TagSet {
        (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect()
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Ok,
        Key,
        Value,
    }

    #[test]
    fn validate_tag_table() {
        let cases: Vec<(&str, String, String, Want)> = vec![
            ("simple", "env".into(), "prod".into(), Want::Ok),
            ("empty value allowed", "env".into(), String::new(), Want::Ok),
            ("empty key", String::new(), "v".into(), Want::Key),
            ("key 128 ascii", s(128, 'a'), "v".into(), Want::Ok),
            ("key 129 ascii", s(129, 'a'), "v".into(), Want::Key),
            // 'é' is 2 bytes: 128 chars = 256 bytes must still pass.
            ("key 128 é", s(128, 'é'), "v".into(), Want::Ok),
            ("key 129 é", s(129, 'é'), "v".into(), Want::Key),
            ("key 65 é is 130 bytes", s(65, 'é'), "v".into(), Want::Ok),
            ("value 256 ascii", "k".into(), s(256, 'b'), Want::Ok),
            ("value 257 ascii", "k".into(), s(257, 'b'), Want::Value),
            ("value 256 é", "k".into(), s(256, 'é'), Want::Ok),
            ("value 257 é", "k".into(), s(257, 'é'), Want::Value),
            ("value 256 CJK", "k".into(), s(256, '日'), Want::Ok),
            ("aws: prefix", "aws:foo".into(), "v".into(), Want::Key),
            ("AWS: prefix", "AWS:foo".into(), "v".into(), Want::Key),
            ("Aws: prefix", "Aws:foo".into(), "v".into(), Want::Key),
            ("exactly aws:", "aws:".into(), "v".into(), Want::Key),
            ("aws without colon", "aws".into(), "v".into(), Want::Ok),
            ("awsfoo", "awsfoo".into(), "v".into(), Want::Ok),
            ("aws: inside key", "x-aws:foo".into(), "v".into(), Want::Ok),
            (
                "aws: prefix in value is fine",
                "k".into(),
                "aws:x".into(),
                Want::Ok,
            ),
            (
                "multibyte first chars",
                "éws:x".into(),
                "v".into(),
                Want::Ok,
            ),
            ("plus", "a+b".into(), "+".into(), Want::Ok),
            ("minus", "a-b".into(), "-".into(), Want::Ok),
            ("equals", "a=b".into(), "=".into(), Want::Ok),
            ("dot", "a.b".into(), ".".into(), Want::Ok),
            ("underscore", "a_b".into(), "_".into(), Want::Ok),
            ("colon", "a:b".into(), ":".into(), Want::Ok),
            ("slash", "a/b".into(), "/".into(), Want::Ok),
            ("at", "a@b".into(), "@".into(), Want::Ok),
            ("space", "a b".into(), " ".into(), Want::Ok),
            (
                "nbsp is a Unicode space",
                "a\u{a0}b".into(),
                "v".into(),
                Want::Ok,
            ),
            (
                "ideographic space",
                "k".into(),
                "a\u{3000}b".into(),
                Want::Ok,
            ),
            ("digits", "123".into(), "456".into(), Want::Ok),
            ("unicode digits", "٣".into(), "३".into(), Want::Ok),
            ("unicode letters", "ключ".into(), "値".into(), Want::Ok),
            ("star in key", "a*b".into(), "v".into(), Want::Key),
            ("star in value", "k".into(), "a*b".into(), Want::Value),
            ("newline in key", "a\nb".into(), "v".into(), Want::Key),
            ("newline in value", "k".into(), "a\n".into(), Want::Value),
            ("tab in value", "k".into(), "a\tb".into(), Want::Value),
            ("NUL in value", "k".into(), "a\0".into(), Want::Value),
            ("ampersand in key", "a&b".into(), "v".into(), Want::Key),
            ("percent in value", "k".into(), "100%".into(), Want::Value),
            ("comma", "k".into(), "a,b".into(), Want::Value),
            ("hash", "a#".into(), "v".into(), Want::Key),
            ("emoji", "k".into(), "🙂".into(), Want::Value),
            ("backslash", "a\\b".into(), "v".into(), Want::Key),
        ];
        for (name, key, value, want) in cases {
            let got = match validate_tag(&key, &value) {
                Ok(()) => Want::Ok,
                Err(MetaError::InvalidTagKey { key: k, .. }) => {
                    assert_eq!(k, key, "{name}: error names the key");
                    Want::Key
                }
                Err(MetaError::InvalidTagValue { key: k, .. }) => {
                    assert_eq!(k, key, "{name}: error names the key");
                    Want::Value
                }
                Err(e) => panic!("{name}: unexpected error {e:?}"),
            };
            assert_eq!(got, want, "{name}: key={key:?} value={value:?}");
        }
    }

    #[test]
    fn validate_tag_messages() {
        let e = validate_tag(&s(129, 'é'), "v").unwrap_err().to_string();
        assert!(e.contains("129 characters long; at most 128"), "{e}");
        let e = validate_tag("k", &s(257, 'x')).unwrap_err().to_string();
        assert!(e.contains("257 characters long; at most 256"), "{e}");
        let e = validate_tag("ab*", "v").unwrap_err().to_string();
        assert!(
            e.contains("'*' (U+002A) at character index 2 is not allowed"),
            "{e}"
        );
        assert!(e.contains("+ - = . _ : / @"), "{e}");
        let e = validate_tag("k", "x\n").unwrap_err().to_string();
        assert!(e.contains("'\\n' (U+000A) at character index 1"), "{e}");
        let e = validate_tag("AWS:x", "v").unwrap_err().to_string();
        assert!(e.contains("\"aws:\" prefix"), "{e}");
        assert_eq!(
            validate_tag("", "v").unwrap_err().to_string(),
            "invalid tag key \"\": tag key is empty (keys are 1..=128 Unicode characters)"
        );
    }

    #[test]
    fn validate_tag_set_table() {
        assert_eq!(validate_tag_set(&[]), Ok(()));
        assert_eq!(validate_tag_set(&n_tags(10)), Ok(()));
        assert_eq!(
            validate_tag_set(&n_tags(11)),
            Err(MetaError::TooManyTags { count: 11 })
        );
        assert_eq!(
            validate_tag_set(&set(&[("a", "1"), ("b", "2"), ("a", "3")])),
            Err(MetaError::DuplicateTagKey("a".into()))
        );
        // Keys are case-sensitive, so these are distinct.
        assert_eq!(validate_tag_set(&set(&[("a", "1"), ("A", "2")])), Ok(()));
        assert!(matches!(
            validate_tag_set(&set(&[("a", "1"), ("b*", "2")])),
            Err(MetaError::InvalidTagKey { key, .. }) if key == "b*"
        ));
        assert_eq!(
            MetaError::TooManyTags { count: 11 }.to_string(),
            "too many tags: 11 given, at most 10 are allowed per object"
        );
    }

    #[test]
    fn parse_tagging_table() {
        let ok: Vec<(&str, TagSet)> = vec![
            ("", vec![]),
            ("a=1", set(&[("a", "1")])),
            ("a=1&b=2", set(&[("a", "1"), ("b", "2")])),
            ("b=2&a=1", set(&[("b", "2"), ("a", "1")])),
            ("a=", set(&[("a", "")])),
            ("a", set(&[("a", "")])),
            ("a+b=c+d", set(&[("a b", "c d")])),
            ("a%20b=c%20d", set(&[("a b", "c d")])),
            ("k=a%2Bb", set(&[("k", "a+b")])),
            ("k=a%2bb", set(&[("k", "a+b")])),
            ("k=x%3Dy", set(&[("k", "x=y")])),
            ("k=x=y", set(&[("k", "x=y")])),
            ("k=%C3%A9t%C3%A9", set(&[("k", "été")])),
            ("k=été", set(&[("k", "été")])),
            ("k=a%2Fb%3Ac%40d", set(&[("k", "a/b:c@d")])),
        ];
        for (input, want) in ok {
            assert_eq!(parse_tagging(input), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn parse_tagging_errors() {
        let bad_form = [
            "a=1&", "&a=1", "a=1&&b=2", "&", "k=%", "k=%4", "k=%zz", "k=%+f", "%=v",
        ];
        for input in bad_form {
            assert!(
                matches!(parse_tagging(input), Err(MetaError::InvalidTagging(_))),
                "input {input:?} gave {:?}",
                parse_tagging(input)
            );
        }
        // Bytes that decode but are not UTF-8.
        assert!(matches!(
            parse_tagging("k=%FF"),
            Err(MetaError::InvalidTagging(m)) if m.contains("UTF-8")
        ));
        // Form is fine but the decoded content is not a valid tag set.
        assert_eq!(
            parse_tagging("a=1&a=2"),
            Err(MetaError::DuplicateTagKey("a".into()))
        );
        assert!(matches!(
            parse_tagging("k=a%26b"),
            Err(MetaError::InvalidTagValue { .. })
        ));
        assert!(matches!(
            parse_tagging("aws%3Ax=1"),
            Err(MetaError::InvalidTagKey { .. })
        ));
        assert!(matches!(
            parse_tagging("=v"),
            Err(MetaError::InvalidTagKey { .. })
        ));
        let eleven = format_tagging(&n_tags(11));
        assert_eq!(
            parse_tagging(&eleven),
            Err(MetaError::TooManyTags { count: 11 })
        );
        assert_eq!(parse_tagging(&format_tagging(&n_tags(10))), Ok(n_tags(10)));
    }

    #[test]
    fn format_tagging_exact() {
        assert_eq!(format_tagging(&[]), "");
        assert_eq!(
            format_tagging(&set(&[("a b", "x+y"), ("k", "=/:@")])),
            "a%20b=x%2By&k=%3D%2F%3A%40"
        );
        assert_eq!(format_tagging(&set(&[("é", "-._")])), "%C3%A9=-._");
        // Not valid as tags, but format must still escape them so a caller's
        // mistake surfaces as a validation error, not a mis-split pair.
        assert_eq!(format_tagging(&set(&[("a&b", "c%d")])), "a%26b=c%25d");
    }

    #[test]
    fn tagging_round_trips() {
        let sets = vec![
            vec![],
            set(&[("a", "")]),
            set(&[("key with spaces", "value with spaces")]),
            set(&[("a=b", "c=d"), ("x+y", "1+1=2")]),
            set(&[("path/to:thing@host", "_.-")]),
            set(&[("ключ", "値"), ("été", "naïve")]),
            set(&[("k", "a\u{3000}b")]),
            set(&[(&s(128, 'é'), &s(256, '日'))]),
            n_tags(10),
        ];
        for tags in sets {
            let text = format_tagging(&tags);
            assert_eq!(parse_tagging(&text), Ok(tags.clone()), "via {text:?}");
        }
        // '&' and '%' cannot be tag characters, so round-trip the raw form
        // layer separately to show escaping is lossless.
        assert_eq!(
            form_decode(
                &utf8_percent_encode("a&b=c%d+e f", TAGGING_ENCODE_SET).to_string(),
                "v"
            ),
            Ok("a&b=c%d+e f".to_owned())
        );
    }

    #[test]
    fn set_tag_cases() {
        let base = set(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            set_tag(&base, "a", "9"),
            Ok(set(&[("a", "9"), ("b", "2")])),
            "replace keeps position"
        );
        assert_eq!(
            set_tag(&base, "c", "3"),
            Ok(set(&[("a", "1"), ("b", "2"), ("c", "3")]))
        );
        assert_eq!(base, set(&[("a", "1"), ("b", "2")]), "input untouched");
        let ten = n_tags(10);
        assert_eq!(
            set_tag(&ten, "new", "v"),
            Err(MetaError::TooManyTags { count: 11 })
        );
        let mut want = n_tags(10);
        want[3].1 = "replaced".into();
        assert_eq!(
            set_tag(&ten, "k3", "replaced"),
            Ok(want),
            "replace at 10 is fine"
        );
        assert!(matches!(
            set_tag(&base, "aws:x", "v"),
            Err(MetaError::InvalidTagKey { .. })
        ));
        assert!(matches!(
            set_tag(&base, "a", "bad*"),
            Err(MetaError::InvalidTagValue { .. })
        ));
    }

    #[test]
    fn remove_tag_cases() {
        let base = set(&[("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(remove_tag(&base, "b"), Some(set(&[("a", "1"), ("c", "3")])));
        assert_eq!(remove_tag(&base, "B"), None, "case-sensitive");
        assert_eq!(remove_tag(&base, "zz"), None);
        assert_eq!(remove_tag(&set(&[("a", "1")]), "a"), Some(vec![]));
    }

    /// Any `user.s3.tagging` value: an answer, never a panic, and a tag set accepted is
    /// written back as one that reads the same set.
    #[test]
    fn mutated_tagging_values_are_answered_and_accepted_sets_round_trip() {
        let corpus = [
            "k=v&a=b",
            "%zz=1",
            "%",
            "=&&=",
            "a%3Db=c%26d",
            "aws:x=1",
            "k=%F0%9F%98%80",
            "%C3%A9=%E2%82%AC",
            "k=+v+",
            "a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9&j=10",
        ];
        for text in crate::mutate::Mutator::inputs(11, &corpus, "abcAZ09=&%+:/@._-", 40_000) {
            if let Ok(tags) = parse_tagging(&text) {
                let written = format_tagging(&tags);
                assert_eq!(
                    parse_tagging(&written).ok(),
                    Some(tags),
                    "{text:?} -> {written}"
                );
            }
        }
    }
}
