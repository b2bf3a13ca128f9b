//! Vacuuming `runs` when nothing else does. Every finished step leaves a dead row version of
//! its run and a dead entry in the claim's index, `runs_runnable`; those entries sort before
//! every runnable run of their handler, so until a vacuum removes them each claim walks past
//! them. With autovacuum on, migration 7's settings keep up; with autovacuum off (a server
//! setting some test and CI servers use, or the table's own `autovacuum_enabled = false`), a
//! runtime's sweep vacuums the table itself once enough dead versions piled up.

use postgres::Row;
use postgres::types::ToSql;

use super::{Statement, StmtId};
use crate::error::Result;

/// Whether the runtime should vacuum `runs` now: at least `dead` dead row versions (as the
/// server's statistics count them), autovacuum off for the table, and a role allowed to
/// vacuum it (anyone else's `VACUUM` is skipped with a warning).
#[derive(Clone, Copy, Debug)]
pub(crate) struct VacuumDue {
    pub(crate) dead: i64,
}

impl VacuumDue {
    pub(crate) const SQL: &'static str = "
SELECT coalesce(s.n_dead_tup, 0) AS dead
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = '__S__.runs'::regclass
  AND coalesce(s.n_dead_tup, 0) >= $1
  AND NOT (current_setting('autovacuum')::boolean
           AND coalesce((SELECT o.option_value::boolean
                         FROM pg_options_to_table(c.reloptions) o
                         WHERE o.option_name = 'autovacuum_enabled'), true))
  AND pg_has_role(c.relowner, 'USAGE')";
}

impl Statement for VacuumDue {
    /// The dead row versions, when a vacuum is due.
    type Output = Option<i64>;

    fn id(&self) -> StmtId {
        StmtId::VacuumDue
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.dead]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<i64>> {
        rows.first()
            .map(|row| row.try_get("dead").map_err(Into::into))
            .transpose()
    }
}

/// Vacuums `runs`, removing dead index entries even when PostgreSQL would skip the indexes
/// (`INDEX_CLEANUP ON`: its default bypasses them when few heap pages hold dead rows, which
/// is exactly when the claim's small index is full of them). `SKIP_LOCKED`: when another
/// runtime (or autovacuum) is already at it, this one does not queue behind it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vacuum;

impl Vacuum {
    pub(crate) const SQL: &'static str = "VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) __S__.runs";
}

impl Statement for Vacuum {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::Vacuum
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}
