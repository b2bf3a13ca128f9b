//! Embedded, versioned migrations, applied idempotently into the configured schema.
//!
//! All of them run in one transaction, under a transaction-scoped advisory lock derived from
//! the schema name, so several processes starting at once apply each migration exactly once
//! and nobody sees a half-built schema.

use postgres::GenericClient;

use crate::error::{Error, Result};

/// `(version, name, sql)`, in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "rollback",
        include_str!("../migrations/0002_rollback.sql"),
    ),
    (
        3,
        "time_and_cancellation",
        include_str!("../migrations/0003_time_and_cancellation.sql"),
    ),
    (
        4,
        "context_and_return_values",
        include_str!("../migrations/0004_context_and_return_values.sql"),
    ),
];

/// The highest migration version this library ships.
pub(crate) const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Brings `schema` (already validated) up to date. Returns the versions it applied.
pub(crate) fn migrate(client: &mut impl GenericClient, schema: &str) -> Result<Vec<i32>> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("structured-cooperation migrations {schema}")],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
         );"
    ))?;
    let found: Option<i32> = tx
        .query_one("SELECT max(version) FROM schema_migrations", &[])?
        .get(0);
    let found = found.unwrap_or(0);
    if found > LATEST {
        return Err(Error::SchemaTooNew {
            schema: schema.to_owned(),
            found,
            known: LATEST,
        });
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )?;
        applied.push(version);
    }
    tx.commit()?;
    if !applied.is_empty() {
        log::info!("schema {schema}: applied migrations {applied:?}");
    }
    Ok(applied)
}
