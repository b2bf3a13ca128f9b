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
    /// A `text[]` without NULL elements.
    fn str_array(&self, column: &str) -> Result<Vec<String>>;
    /// A `uuid[]` without NULL elements.
    fn uuid_array(&self, column: &str) -> Result<Vec<Uuid>>;

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
    fn str_array(&self, column: &str) -> Result<Vec<String>> {
        Ok(self.try_get(column)?)
    }
    fn uuid_array(&self, column: &str) -> Result<Vec<Uuid>> {
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
    fn str_array(&self, column: &str) -> Result<Vec<String>> {
        present(parsed(self, column, text_array)?, column)
    }
    fn uuid_array(&self, column: &str) -> Result<Vec<Uuid>> {
        let ids = parsed(self, column, |t| {
            (text_array(t)?.iter())
                .map(|id| Uuid::parse_str(id).ok())
                .collect::<Option<Vec<_>>>()
        })?;
        present(ids, column)
    }
}

/// Parses PostgreSQL's text output of a one-dimensional array without NULLs: `{a,"b c"}`.
/// Elements are quoted when they hold a delimiter, a quote, a backslash or spaces, or are
/// empty or `NULL`; inside quotes, a backslash escapes the next character.
fn text_array(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut element = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => element.push(chars.next()?),
                    c => element.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                element.push(c);
                chars.next();
            }
            if element == "NULL" {
                return None;
            }
        }
        out.push(element);
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
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

/// The first row a simple query returned (of its first statement that returned any).
pub(crate) fn first_row(
    messages: Vec<postgres::SimpleQueryMessage>,
) -> Option<postgres::SimpleQueryRow> {
    messages.into_iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })
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

/// A timestamp as an SQL expression, exactly (to the microsecond), whatever the session's time
/// zone; `NULL` for none.
fn time_literal(v: Option<std::time::SystemTime>) -> String {
    match v {
        None => "NULL".to_owned(),
        Some(t) => {
            let us = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
            };
            format!("(timestamptz 'epoch' + {us} * interval '1 microsecond')")
        }
    }
}

/// Parameters rendered as SQL literals, in order, for `EXECUTE name(...)` in simple-query
/// text (the statement was prepared with the types in its `PREPARE`, which the literals are
/// coerced to). A text holding U+0000 cannot travel inside query text: [`Literals::done`]
/// then says so, and the caller runs the statement with bound parameters instead.
#[derive(Debug, Default)]
pub(crate) struct Literals {
    out: String,
    count: usize,
    unsendable: bool,
}

impl Literals {
    fn next(&mut self) -> &mut String {
        if self.count > 0 {
            self.out.push_str(", ");
        }
        self.count += 1;
        &mut self.out
    }

    fn quoted(&mut self, text: &str) -> String {
        if text.contains('\0') {
            self.unsendable = true;
        }
        literal(text)
    }

    pub(crate) fn text(&mut self, v: &str) -> &mut Self {
        let q = self.quoted(v);
        self.next().push_str(&q);
        self
    }

    pub(crate) fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub(crate) fn int(&mut self, v: i64) -> &mut Self {
        let text = v.to_string();
        self.next().push_str(&text);
        self
    }

    pub(crate) fn opt_int(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    pub(crate) fn opt_bool(&mut self, v: Option<bool>) -> &mut Self {
        let text = match v {
            Some(true) => "true",
            Some(false) => "false",
            None => "NULL",
        };
        self.next().push_str(text);
        self
    }

    pub(crate) fn uuid(&mut self, v: &Uuid) -> &mut Self {
        let text = format!("'{v}'");
        self.next().push_str(&text);
        self
    }

    /// A timestamp, exactly (to the microsecond), whatever the session's time zone.
    pub(crate) fn opt_time(&mut self, v: Option<std::time::SystemTime>) -> &mut Self {
        let text = time_literal(v);
        self.next().push_str(&text);
        self
    }

    /// An array of `kind` (`text`, `int4`, `uuid`) from its elements' literals.
    fn array(&mut self, kind: &str, elements: Vec<String>) -> &mut Self {
        let text = if elements.is_empty() {
            format!("'{{}}'::{kind}[]")
        } else {
            format!("ARRAY[{}]::{kind}[]", elements.join(", "))
        };
        self.next().push_str(&text);
        self
    }

    pub(crate) fn text_array(&mut self, v: &[&str]) -> &mut Self {
        let elements = v.iter().map(|t| self.quoted(t)).collect();
        self.array("text", elements)
    }

    pub(crate) fn opt_text_array(&mut self, v: &[Option<String>]) -> &mut Self {
        let elements = v
            .iter()
            .map(|t| match t {
                Some(t) => self.quoted(t),
                None => "NULL".to_owned(),
            })
            .collect();
        self.array("text", elements)
    }

    pub(crate) fn opt_int_array(&mut self, v: &[Option<i32>]) -> &mut Self {
        let elements = v
            .iter()
            .map(|i| i.map_or_else(|| "NULL".to_owned(), |i| i.to_string()))
            .collect();
        self.array("int4", elements)
    }

    pub(crate) fn opt_uuid_array(&mut self, v: &[Option<Uuid>]) -> &mut Self {
        let elements = v
            .iter()
            .map(|u| u.map_or_else(|| "NULL".to_owned(), |u| format!("'{u}'")))
            .collect();
        self.array("uuid", elements)
    }

    pub(crate) fn opt_uuid(&mut self, v: Option<&Uuid>) -> &mut Self {
        match v {
            Some(v) => self.uuid(v),
            None => self.null(),
        }
    }

    pub(crate) fn bool_array(&mut self, v: &[bool]) -> &mut Self {
        let elements = v.iter().map(bool::to_string).collect();
        self.array("bool", elements)
    }

    pub(crate) fn int_array(&mut self, v: &[i32]) -> &mut Self {
        let elements = v.iter().map(i32::to_string).collect();
        self.array("int4", elements)
    }

    pub(crate) fn opt_time_array(&mut self, v: &[Option<std::time::SystemTime>]) -> &mut Self {
        let elements = v.iter().map(|t| time_literal(*t)).collect();
        self.array("timestamptz", elements)
    }

    pub(crate) fn uuid_array(&mut self, v: &[Uuid]) -> &mut Self {
        let elements = v.iter().map(|u| format!("'{u}'")).collect();
        self.array("uuid", elements)
    }

    fn null(&mut self) -> &mut Self {
        self.next().push_str("NULL");
        self
    }

    /// The argument list, or `None` if a text cannot be sent inside query text.
    pub(crate) fn done(&mut self) -> Option<String> {
        (!self.unsendable).then(|| std::mem::take(&mut self.out))
    }
}

#[cfg(test)]
mod literal_tests {
    use super::Literals;
    use uuid::Uuid;

    #[test]
    fn arguments_render_in_order_with_nulls_and_arrays() {
        let u = Uuid::nil();
        let mut l = Literals::default();
        l.uuid(&u)
            .text("it's")
            .opt_int(None)
            .int(-3)
            .opt_bool(Some(true))
            .text_array(&[])
            .opt_int_array(&[Some(1), None])
            .opt_text_array(&[None, Some("a".into())]);
        assert_eq!(
            l.done().unwrap(),
            "'00000000-0000-0000-0000-000000000000', E'it''s', NULL, -3, true, \
             '{}'::text[], ARRAY[1, NULL]::int4[], ARRAY[NULL, E'a']::text[]"
        );
    }

    #[test]
    fn text_arrays_parse_with_quotes_and_escapes() {
        use super::text_array;
        assert_eq!(text_array("{}"), Some(vec![]));
        assert_eq!(
            text_array(r#"{a,"b c","d\"e","f\\g",""}"#),
            Some(vec![
                "a".to_owned(),
                "b c".to_owned(),
                "d\"e".to_owned(),
                "f\\g".to_owned(),
                String::new()
            ])
        );
        assert_eq!(text_array("{NULL}"), None);
        assert_eq!(text_array("a,b"), None);
    }

    #[test]
    fn a_nul_cannot_travel_in_query_text() {
        let mut l = Literals::default();
        l.text("a\0b");
        assert_eq!(l.done(), None);
    }
}
