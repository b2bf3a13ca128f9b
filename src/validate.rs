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
