//! The blocking executor: runs any [`Statement`] over a `postgres::GenericClient`.
//!
//! This is the only place where the blocking edition turns statements into round trips; a
//! tokio runtime has the same function with `.await`s over `tokio_postgres::GenericClient`.

use postgres::{GenericClient, Row};

use crate::error::Result;
use crate::proto::{Applied, Emit, Emitted, Finish, Simple, Sql, Statement, StmtCache};

/// Executes `s` and returns its rows, with the driver's own error (step code's helpers that
/// promise a `postgres::Error` need it unconverted).
///
/// Simple statements go through the simple-query protocol. Others are prepared once per
/// connection when `cache` is given (a worker's), or prepared unnamed per call otherwise.
pub(crate) fn query<S: Statement>(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    s: &S,
) -> std::result::Result<Vec<Row>, postgres::Error> {
    let id = s.id();
    let text = s.text(sql);
    if id.is_simple() {
        client.batch_execute(text)?;
        return Ok(Vec::new());
    }
    let params = s.params();
    match cache {
        Some(cache) => {
            let stmt = match cache.lookup(id) {
                Some(stmt) => stmt,
                None => {
                    let stmt = client.prepare(text)?;
                    cache.insert(id, stmt.clone());
                    stmt
                }
            };
            client.query(&stmt, &params)
        }
        None => client.query(text, &params),
    }
}

/// Executes `s` and decodes its rows.
pub(crate) fn run<S: Statement>(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    s: &S,
) -> Result<S::Output> {
    let rows = query(client, sql, cache, s)?;
    s.decode(rows)
}

/// Writes an emission through the simple-query protocol (see [`Emit::simple_text`]: generic
/// plans, one round trip), alone (a launch in a transaction of its own) or `in_tx`; with bound
/// parameters when a parameter cannot travel in query text.
pub(crate) fn emit(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: &mut StmtCache,
    e: &Emit<'_>,
    in_tx: bool,
) -> Result<Emitted> {
    let kind = e.simple_kind();
    let (name, prepared) = cache.simple_name(kind);
    let Some(text) = e.simple_text(sql, &name, prepared, in_tx) else {
        return run(client, sql, Some(cache), e);
    };
    let messages = client.simple_query(&text)?;
    if !prepared {
        cache.prepared(kind, name);
    }
    e.decode_simple(messages)
}

/// Persists a transition through the simple-query protocol after `prefix` (the release of
/// the step's savepoint) and before `suffix` (a batch's next savepoint, see
/// `Batch::prime`), in one round trip; with bound parameters (and the prefix and suffix on
/// their own) when a parameter cannot travel in query text.
pub(crate) fn finish(
    client: &mut impl GenericClient,
    sql: &Sql,
    cache: &mut StmtCache,
    f: &Finish<'_>,
    prefix: &str,
    suffix: &str,
) -> Result<Applied> {
    let (name, prepared) = cache.simple_name(Simple::Finish);
    let Some(mut text) = f.simple_text(sql, &name, prepared, prefix) else {
        if !prefix.is_empty() {
            client.batch_execute(prefix)?;
        }
        let applied = run(client, sql, Some(cache), f)?;
        if !suffix.is_empty() {
            client.batch_execute(suffix.trim_start_matches("; "))?;
        }
        return Ok(applied);
    };
    text.push_str(suffix);
    let messages = client.simple_query(&text)?;
    if !prepared {
        cache.prepared(Simple::Finish, name);
    }
    f.decode_simple(messages)
}
