//! Reading a row's columns the same way whether it came back in binary (a prepared
//! statement's [`Row`]) or as text (a [`SimpleQueryRow`], from the simple-query protocol that
//! lets one round trip carry several statements, such as a commit and the next claim).

use postgres::{Row, SimpleQueryRow};
use uuid::Uuid;

use crate::error::{Error, Result};

/// A row whose columns are read by name. Only the types the engine's decoders need.
pub(crate) trait Cols {
    fn opt_str(&self, column: &str) -> Result<Option<String>>;
    fn opt_i32(&self, column: &str) -> Result<Option<i32>>;
    fn opt_i64(&self, column: &str) -> Result<Option<i64>>;
    fn opt_bool(&self, column: &str) -> Result<Option<bool>>;
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>>;

    fn str(&self, column: &str) -> Result<String> {
        present(self.opt_str(column)?, column)
    }
    fn i32(&self, column: &str) -> Result<i32> {
        present(self.opt_i32(column)?, column)
    }
    fn i64(&self, column: &str) -> Result<i64> {
        present(self.opt_i64(column)?, column)
    }
    fn bool(&self, column: &str) -> Result<bool> {
        present(self.opt_bool(column)?, column)
    }
    fn uuid(&self, column: &str) -> Result<Uuid> {
        present(self.opt_uuid(column)?, column)
    }
}

fn present<T>(value: Option<T>, column: &str) -> Result<T> {
    value.ok_or_else(|| Error::UnexpectedData(format!("column {column} is null")))
}

impl Cols for Row {
    fn opt_str(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn opt_i32(&self, column: &str) -> Result<Option<i32>> {
        Ok(self.try_get(column)?)
    }
    fn opt_i64(&self, column: &str) -> Result<Option<i64>> {
        Ok(self.try_get(column)?)
    }
    fn opt_bool(&self, column: &str) -> Result<Option<bool>> {
        Ok(self.try_get(column)?)
    }
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>> {
        Ok(self.try_get(column)?)
    }
}

impl Cols for SimpleQueryRow {
    fn opt_str(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?.map(str::to_owned))
    }
    fn opt_i32(&self, column: &str) -> Result<Option<i32>> {
        parsed(self, column, |t| t.parse().ok())
    }
    fn opt_i64(&self, column: &str) -> Result<Option<i64>> {
        parsed(self, column, |t| t.parse().ok())
    }
    fn opt_bool(&self, column: &str) -> Result<Option<bool>> {
        parsed(self, column, |t| match t {
            "t" => Some(true),
            "f" => Some(false),
            _ => None,
        })
    }
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>> {
        parsed(self, column, |t| Uuid::parse_str(t).ok())
    }
}

fn parsed<T>(
    row: &SimpleQueryRow,
    column: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    match row.try_get(column)? {
        None => Ok(None),
        Some(text) => parse(text).map(Some).ok_or_else(|| {
            Error::UnexpectedData(format!(
                "column {column} holds {text:?}, not the type expected"
            ))
        }),
    }
}

/// `text` as an SQL string literal, whatever the server's `standard_conforming_strings`:
/// an escape string (`E'...'`) with its backslashes and quotes doubled. For the few engine
/// values (handler and worker names) sent inside simple-query text.
pub(crate) fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::literal;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("plain"), "E'plain'");
        assert_eq!(literal("it's"), "E'it''s'");
        assert_eq!(literal(r"a\b"), r"E'a\\b'");
        assert_eq!(literal(r"\'; DROP"), r"E'\\''; DROP'");
    }
}
