//! Statements about the connection and transaction themselves: the savepoint that separates
//! a claim from user code, and how runtime connections introduce themselves and listen.
//! All of them are simple (no parameters, one round trip).

use postgres::Row;
use postgres::types::ToSql;

use super::{Statement, StmtId};
use crate::error::Result;

macro_rules! simple_statement {
    ($(#[$doc:meta])* $name:ident, $sql:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name;

        impl $name {
            pub(crate) const SQL: &'static str = $sql;
        }

        impl Statement for $name {
            type Output = ();

            fn id(&self) -> StmtId {
                StmtId::$name
            }

            fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                Vec::new()
            }

            fn decode(&self, _rows: Vec<Row>) -> Result<()> {
                Ok(())
            }
        }
    };
}

simple_statement!(
    /// Taken the first time user code touches the step's transaction, so that what the code
    /// wrote can be discarded while the claim's row lock (taken before it) is kept.
    Savepoint,
    "SAVEPOINT structured_cooperation_step"
);

simple_statement!(
    /// Discards what failed user code wrote.
    RollbackToSavepoint,
    "ROLLBACK TO SAVEPOINT structured_cooperation_step"
);

simple_statement!(
    /// Names a worker's connection, so operators (and tests) find it in `pg_stat_activity`.
    WorkerSession,
    "SET application_name = 'sc-worker:__S__'"
);

simple_statement!(
    /// Names the listener's connection and subscribes it to the wake-up channel.
    Listen,
    "SET application_name = 'sc-listener:__S__'; LISTEN __S___wake"
);

simple_statement!(
    /// Leaves a pooled connection as the listener found it.
    Unlisten,
    "UNLISTEN *; RESET application_name"
);

/// What the server allows this role in connections, and how many are in use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits;

impl ConnectionLimits {
    pub(crate) const SQL: &'static str = "
SELECT current_setting('max_connections')::int4 AS max_connections,
       current_setting('superuser_reserved_connections')::int4
         + coalesce(nullif(current_setting('reserved_connections', true), '')::int4, 0)
         AS reserved,
       r.rolsuper AS superuser, r.rolconnlimit AS role_limit, d.datconnlimit AS database_limit,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int4
         AS in_use
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()";
}

/// The server's connection limits as [`ConnectionLimits`] reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_connections: i32,
    /// Slots only superusers (or, from PostgreSQL 16, privileged roles) may take.
    pub(crate) reserved: i32,
    pub(crate) superuser: bool,
    /// The role's and the database's own limits (-1: none).
    pub(crate) role_limit: i32,
    pub(crate) database_limit: i32,
    /// Client connections open now, ours included.
    pub(crate) in_use: i32,
}

impl Statement for ConnectionLimits {
    type Output = Limits;

    fn id(&self) -> StmtId {
        StmtId::ConnectionLimits
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Limits> {
        let row = super::one(rows)?;
        Ok(Limits {
            max_connections: row.try_get("max_connections")?,
            reserved: row.try_get("reserved")?,
            superuser: row.try_get("superuser")?,
            role_limit: row.try_get("role_limit")?,
            database_limit: row.try_get("database_limit")?,
            in_use: row.try_get("in_use")?,
        })
    }
}
