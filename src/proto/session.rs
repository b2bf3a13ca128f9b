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
