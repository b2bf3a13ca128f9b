//! Embedded, versioned migrations (`proto::MIGRATIONS`), applied idempotently into the
//! configured schema.
//!
//! All of them run in one transaction, under a transaction-scoped advisory lock derived from
//! the schema name, so several processes starting at once apply each migration exactly once
//! and nobody sees a half-built schema.

use postgres::GenericClient;

use crate::error::{Error, Result};
use crate::proto::{
    ApplyMigration, LATEST_MIGRATION, MIGRATIONS, MigrationLock, MigrationSetup, MigrationVersion,
    RecordMigration, Sql,
};
use crate::runtime::exec::run;

/// Brings `schema` (already validated, and the one `sql` was built for) up to date. Returns
/// the versions it applied.
pub(crate) fn migrate(
    client: &mut impl GenericClient,
    sql: &Sql,
    schema: &str,
) -> Result<Vec<i32>> {
    let mut tx = client.transaction()?;
    run(&mut tx, sql, None, &MigrationLock::new(schema))?;
    run(&mut tx, sql, None, &MigrationSetup)?;
    let found = run(&mut tx, sql, None, &MigrationVersion)?;
    if found > LATEST_MIGRATION {
        return Err(Error::SchemaTooNew {
            schema: schema.to_owned(),
            found,
            known: LATEST_MIGRATION,
        });
    }
    let mut applied = Vec::new();
    for (index, &(version, name, _)) in MIGRATIONS.iter().enumerate() {
        if version <= found {
            continue;
        }
        run(&mut tx, sql, None, &ApplyMigration { index })?;
        run(&mut tx, sql, None, &RecordMigration { version, name })?;
        applied.push(version);
    }
    tx.commit()?;
    if !applied.is_empty() {
        log::info!("schema {schema}: applied migrations {applied:?}");
    }
    Ok(applied)
}
