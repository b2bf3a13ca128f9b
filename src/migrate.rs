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
    require_not_newer(schema, found)?;
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

/// The highest migration applied to `schema` (0: none, or no such schema), without creating
/// or changing anything.
pub(crate) fn applied_version(client: &mut impl GenericClient, schema: &str) -> Result<i32> {
    match client.query_one(&crate::proto::version_query(schema), &[]) {
        Ok(row) => Ok(row.try_get(0)?),
        Err(e) if is_undefined_table(&e) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Whether `e` says a schema or table does not exist (a schema never migrated).
pub(crate) fn is_undefined_table(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code()
        .is_some_and(|c| *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME)
}

/// Refuses a schema that is not at the version this library needs (a runtime told not to
/// migrate).
pub(crate) fn require_current(schema: &str, found: i32) -> Result<()> {
    require_not_newer(schema, found)?;
    if found < LATEST_MIGRATION {
        return Err(Error::SchemaOutdated {
            schema: schema.to_owned(),
            found,
            needed: LATEST_MIGRATION,
        });
    }
    Ok(())
}

/// The script that brings `schema` from migration `version` up to date (see
/// `proto::migration_script`); empty when there is nothing to apply.
pub(crate) fn script(schema: &str, version: i32) -> Result<String> {
    require_not_newer(schema, version)?;
    Ok(crate::proto::migration_script(schema, version))
}

fn require_not_newer(schema: &str, found: i32) -> Result<()> {
    if found > LATEST_MIGRATION {
        return Err(Error::SchemaTooNew {
            schema: schema.to_owned(),
            found,
            known: LATEST_MIGRATION,
        });
    }
    Ok(())
}
