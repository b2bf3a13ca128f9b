//! The tokio executor: runs any [`Statement`] over a `tokio_postgres::GenericClient`. The
//! same function as `runtime::exec`, with `.await`s.

use tokio_postgres::{GenericClient, Row};

use crate::error::Result;
use crate::proto::{Claim, Claimed, Sql, Statement, StmtCache};

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

/// Claims through the simple-query protocol, after `prefix`, in one round trip (as
/// `runtime::exec::claim` does).
pub(crate) async fn claim<C>(
    client: &C,
    sql: &Sql,
    cache: &mut StmtCache,
    c: &Claim<'_>,
    prefix: &str,
) -> Result<Claimed>
where
    C: GenericClient + Sync,
{
    let (name, prepared) = cache.claim_name();
    let text = c.simple_text(sql, &name, prepared, prefix);
    let messages = client.simple_query(&text).await?;
    if !prepared {
        cache.claim_prepared(name);
    }
    c.decode_simple(messages)
}
