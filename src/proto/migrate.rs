//! The embedded migrations and the statements that apply them (see `crate::migrate`).

use postgres::Row;
use postgres::types::ToSql;

use super::{Sql, Statement, StmtId, one};
use crate::error::Result;

/// `(version, name, sql)`, in order. Each script runs with `search_path` set to the target
/// schema, so its names are unqualified. A shipped migration never changes: new changes go
/// into a new one.
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "rollback",
        include_str!("../../migrations/0002_rollback.sql"),
    ),
    (
        3,
        "time_and_cancellation",
        include_str!("../../migrations/0003_time_and_cancellation.sql"),
    ),
    (
        4,
        "context_and_return_values",
        include_str!("../../migrations/0004_context_and_return_values.sql"),
    ),
    (
        5,
        "retries_and_poison",
        include_str!("../../migrations/0005_retries_and_poison.sql"),
    ),
    (
        6,
        "operations",
        include_str!("../../migrations/0006_operations.sql"),
    ),
    (
        7,
        "autovacuum",
        include_str!("../../migrations/0007_autovacuum.sql"),
    ),
    (
        8,
        "index_cleanup",
        include_str!("../../migrations/0008_index_cleanup.sql"),
    ),
    (
        9,
        "versions",
        include_str!("../../migrations/0009_versions.sql"),
    ),
    (
        10,
        "history_without_key",
        include_str!("../../migrations/0010_history_without_key.sql"),
    ),
    (
        11,
        "checks_as_domains",
        include_str!("../../migrations/0011_checks_as_domains.sql"),
    ),
];

/// The highest migration version this library ships.
pub(crate) const LATEST_MIGRATION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Serializes migrators of one schema, for the rest of the transaction.
#[derive(Debug)]
pub(crate) struct MigrationLock {
    key: String,
}

impl MigrationLock {
    pub(crate) fn new(schema: &str) -> MigrationLock {
        MigrationLock {
            key: format!("structured-cooperation migrations {schema}"),
        }
    }

    pub(crate) const SQL: &'static str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
}

impl Statement for MigrationLock {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::MigrationLock
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.key]
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}

/// Creates the schema and its migrations table if needed, and points the transaction's
/// `search_path` at the schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MigrationSetup;

impl MigrationSetup {
    pub(crate) const SQL: &'static str = "
CREATE SCHEMA IF NOT EXISTS __S__;
SET LOCAL search_path TO __S__;
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);";
}

impl Statement for MigrationSetup {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::MigrationSetup
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}

/// The highest applied version (0 for a new schema). Runs after [`MigrationSetup`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct MigrationVersion;

impl MigrationVersion {
    pub(crate) const SQL: &'static str =
        "SELECT coalesce(max(version), 0) AS version FROM schema_migrations";
}

impl Statement for MigrationVersion {
    type Output = i32;

    fn id(&self) -> StmtId {
        StmtId::MigrationVersion
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, rows: Vec<Row>) -> Result<i32> {
        Ok(one(rows)?.try_get("version")?)
    }
}

/// Runs one migration script (`MIGRATIONS[index]`). Runs after [`MigrationSetup`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApplyMigration {
    pub(crate) index: usize,
}

impl ApplyMigration {
    /// The scripts carry their own text.
    pub(crate) const SQL: &'static str = "";
}

impl Statement for ApplyMigration {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::ApplyMigration
    }

    fn text<'s>(&self, _sql: &'s Sql) -> &'s str {
        MIGRATIONS[self.index].2
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}

/// Records an applied migration. Runs after [`MigrationSetup`].
#[derive(Debug)]
pub(crate) struct RecordMigration {
    pub(crate) version: i32,
    pub(crate) name: &'static str,
}

impl RecordMigration {
    pub(crate) const SQL: &'static str =
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)";
}

impl Statement for RecordMigration {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::RecordMigration
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.version, &self.name]
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}

/// Reads the highest applied migration of `schema` (a validated plain identifier) without
/// creating anything; fails with `undefined_table` on a schema never migrated.
pub(crate) fn version_query(schema: &str) -> String {
    format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations")
}

/// The script that brings `schema` from migration `version` up to date: the statements the
/// migrator runs ([`MigrationLock`], [`MigrationSetup`], each pending [`ApplyMigration`] and
/// [`RecordMigration`]) as one transaction, for a team's own migration tool. Empty when
/// nothing is pending.
pub(crate) fn migration_script(schema: &str, version: i32) -> String {
    let pending: Vec<_> = MIGRATIONS.iter().filter(|m| m.0 > version).collect();
    if pending.is_empty() {
        return String::new();
    }
    let lock = MigrationLock::new(schema);
    let mut out = format!(
        "-- structured-cooperation: schema {schema}, from migration {version} to {LATEST_MIGRATION}\n\
         BEGIN;\n\
         SELECT pg_advisory_xact_lock(hashtextextended('{}', 0));\n",
        lock.key
    );
    out.push_str(MigrationSetup::SQL.replace("__S__", schema).trim_start());
    out.push('\n');
    for (version, name, text) in pending {
        out.push_str(&format!("\n-- migration {version}: {name}\n"));
        out.push_str(text.trim_end());
        out.push_str(&format!(
            "\nINSERT INTO schema_migrations (version, name) VALUES ({version}, '{name}');\n"
        ));
    }
    out.push_str("COMMIT;\n");
    out
}
