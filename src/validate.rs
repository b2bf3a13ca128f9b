//! Rules for the names users give us. Checked once, at the API boundary, so that the rest of
//! the crate can use names in SQL and notifications without further thought.

use crate::error::{Error, Result};

/// Longest accepted schema name; the notification channel appends a suffix and must stay
/// within PostgreSQL's 63-byte identifier limit.
pub(crate) const MAX_SCHEMA_LEN: usize = 48;
/// Longest accepted topic, handler or step name.
pub(crate) const MAX_NAME_LEN: usize = 200;
/// Default limit on a payload, a context or a return value, in bytes of JSON.
pub(crate) const DEFAULT_MAX_JSON_BYTES: usize = 2 * 1024 * 1024;

/// JSON the engine stores must stay under `limit` bytes; `what` describes it for the error.
pub(crate) fn size(what: impl FnOnce() -> String, json: &str, limit: usize) -> Result<()> {
    if json.len() > limit {
        return Err(Error::TooLarge {
            what: what(),
            size: json.len(),
            limit,
        });
    }
    Ok(())
}

/// JSON bound for a `jsonb` column (payloads) must not hold the escape `\u0000`: PostgreSQL
/// refuses it (SQLSTATE 22P05), and a step whose message could never be written would be
/// retried forever.
pub(crate) fn storable(what: impl FnOnce() -> String, json: &str) -> Result<()> {
    if nul_escapes(json).next().is_some() {
        return Err(Error::NotStorable {
            what: what(),
            reason: "it contains the character U+0000, which PostgreSQL does not accept in json",
        });
    }
    Ok(())
}

/// Replaces every `\u0000` escape in `json` with `\ufffd` (the replacement character), so
/// that a failure's text (which can come from anywhere) can always be stored.
pub(crate) fn scrub_nul(json: String) -> String {
    let found: Vec<usize> = nul_escapes(&json).collect();
    if found.is_empty() {
        return json;
    }
    let mut out = json;
    for at in found {
        // `\u0000` and `\ufffd` have the same length: positions stay valid.
        out.replace_range(at + 2..at + 6, "fffd");
    }
    out
}

/// Byte offsets of the `\u0000` escapes in a JSON text. A backslash in valid JSON always
/// starts an escape, so reading escapes pairwise never mistakes an escaped backslash
/// followed by `u0000` for one.
fn nul_escapes(json: &str) -> impl Iterator<Item = usize> + '_ {
    let bytes = json.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] != b'\\' {
                i += 1;
                continue;
            }
            let at = i;
            i += 2;
            if bytes.get(at + 1) == Some(&b'u') {
                i += 4;
                if bytes.get(at + 2..at + 6) == Some(b"0000".as_slice()) {
                    return Some(at);
                }
            }
        }
        None
    })
}

/// Longest accepted idempotency key, in characters.
pub(crate) const MAX_KEY_LEN: usize = 500;

/// An idempotency key: 1 to [`MAX_KEY_LEN`] characters, none of them U+0000 (which
/// PostgreSQL's text refuses).
pub(crate) fn idempotency_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "it is empty"
    } else if key.chars().count() > MAX_KEY_LEN {
        "it is longer than 500 characters"
    } else if key.contains('\0') {
        "it contains the character U+0000"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        kind: "idempotency key",
        name: key.to_owned(),
        reason,
    })
}

/// A schema name must be a plain lowercase SQL identifier, so it never needs quoting.
pub(crate) fn schema(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            kind: "schema",
            name: name.to_owned(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("it is empty"),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return bad("it must start with a lowercase ascii letter or '_'");
        }
        Some(_) => {}
    }
    if name.len() > MAX_SCHEMA_LEN {
        return bad("it is longer than 48 bytes");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return bad("only lowercase ascii letters, digits and '_' are allowed");
    }
    if name.starts_with("pg_") {
        return bad("names starting with 'pg_' are reserved by postgres");
    }
    Ok(())
}

/// Topic, handler and step names: non-empty, bounded, printable.
pub(crate) fn name(kind: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 200 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if name.trim() != name {
        return bad("it has leading or trailing whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_and_scrubbed_but_escaped_backslashes_are_not() {
        let nul = serde_json::to_string(&serde_json::json!({ "a": "x\u{0}y" })).unwrap();
        assert_eq!(nul, r#"{"a":"x\u0000y"}"#);
        assert!(storable(|| "the payload".into(), &nul).is_err());
        let scrubbed = scrub_nul(nul);
        assert_eq!(scrubbed, r#"{"a":"x\ufffdy"}"#);
        let back: serde_json::Value = serde_json::from_str(&scrubbed).unwrap();
        assert_eq!(back["a"], "x\u{fffd}y");
        // A literal backslash followed by "u0000" is not the character.
        let text = serde_json::to_string("\\u0000 and \\\u{0}").unwrap();
        assert_eq!(nul_escapes(&text).count(), 1, "{text}");
        let plain = serde_json::to_string("\\u0000").unwrap();
        assert!(storable(|| "x".into(), &plain).is_ok());
        assert_eq!(scrub_nul(plain.clone()), plain);
        let err = storable(|| "the payload for topic \"t\"".into(), r#""\u0000""#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the payload for topic \"t\" cannot be stored: it contains the character U+0000, \
             which PostgreSQL does not accept in json"
        );
    }

    #[test]
    fn schema_names() {
        assert!(schema("scoop").is_ok());
        assert!(schema("_a1_b").is_ok());
        for bad in [
            "",
            "Scoop",
            "1abc",
            "a-b",
            "a b",
            "a;drop",
            "pg_x",
            &"a".repeat(49),
        ] {
            let err = schema(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid schema name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn other_names() {
        assert!(name("topic", "orders.created v2").is_ok());
        assert!(name("topic", "").is_err());
        assert!(name("topic", " x").is_err());
        assert!(name("topic", "a\nb").is_err());
        assert!(name("topic", &"x".repeat(201)).is_err());
    }
}
