//! The tokio executor: runs any [`Statement`] over a `tokio_postgres::GenericClient`. The
//! same function as `runtime::exec`, with `.await`s.

use tokio_postgres::{GenericClient, Row};

use crate::error::Result;
use crate::proto::{Applied, Emit, Emitted, Finish, Simple, Sql, Statement, StmtCache};

/// Executes `s` and returns its rows, with the driver's own error.
///
/// Simple statements go through the simple-query protocol. Others are prepared once per
/// connection when `cache` is given (a worker's), or prepared unnamed per call otherwise.
pub(crate) async fn query<C, S>(
    client: &C,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    s: &S,
) -> std::result::Result<Vec<Row>, tokio_postgres::Error>
where
    C: GenericClient + Sync,
    S: Statement + Sync,
{
    let id = s.id();
    let text = s.text(sql);
    if id.is_simple() {
        client.batch_execute(text).await?;
        return Ok(Vec::new());
    }
    let params = s.params();
    match cache {
        Some(cache) => {
            let stmt = match cache.lookup(id) {
                Some(stmt) => stmt,
                None => {
                    let stmt = client.prepare(text).await?;
                    cache.insert(id, stmt.clone());
                    stmt
                }
            };
            client.query(&stmt, &params).await
        }
        None => client.query(text, &params).await,
    }
}

/// Executes `s` and decodes its rows.
pub(crate) async fn run<C, S>(
    client: &C,
    sql: &Sql,
    cache: Option<&mut StmtCache>,
    s: &S,
) -> Result<S::Output>
where
    C: GenericClient + Sync,
    S: Statement + Sync,
{
    let rows = query(client, sql, cache, s).await?;
    s.decode(rows)
}

/// Writes a step's emission through the simple-query protocol, in its transaction (as
/// `runtime::exec::emit` does).
pub(crate) async fn emit<C>(
    client: &C,
    sql: &Sql,
    cache: &mut StmtCache,
    e: &Emit<'_>,
) -> Result<Emitted>
where
    C: GenericClient + Sync,
{
    let kind = e.simple_kind();
    let (name, prepared) = cache.simple_name(kind);
    let Some(text) = e.simple_text(sql, &name, prepared, true) else {
        return run(client, sql, Some(cache), e).await;
    };
    let messages = client.simple_query(&text).await?;
    if !prepared {
        cache.prepared(kind, name);
    }
    e.decode_simple(messages)
}

/// Persists a transition through the simple-query protocol after `prefix`, in one round trip
/// (as `runtime::exec::finish` does).
pub(crate) async fn finish<C>(
    client: &C,
    sql: &Sql,
    cache: &mut StmtCache,
    f: &Finish<'_>,
    prefix: &str,
    suffix: &str,
) -> Result<Applied>
where
    C: GenericClient + Sync,
{
    let (name, prepared) = cache.simple_name(Simple::Finish);
    let Some(mut text) = f.simple_text(sql, &name, prepared, prefix) else {
        if !prefix.is_empty() {
            client.batch_execute(prefix).await?;
        }
        let applied = run(client, sql, Some(cache), f).await?;
        if !suffix.is_empty() {
            client
                .batch_execute(suffix.trim_start_matches("; "))
                .await?;
        }
        return Ok(applied);
    };
    text.push_str(suffix);
    let messages = client.simple_query(&text).await?;
    if !prepared {
        cache.prepared(Simple::Finish, name);
    }
    f.decode_simple(messages)
}
