//! Statements step code runs through its context: return values, and whether to give up.

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::{Statement, StmtId, status};
use crate::core::RunStatus;
use crate::error::Result;
use crate::failure::Failure;
use crate::ids::{RootId, RunId};

/// Stores a run's return value under a name, unless it already stored one of that name.
#[derive(Debug)]
pub(crate) struct StoreValue<'a> {
    run: Uuid,
    name: &'a str,
    json: &'a str,
}

impl<'a> StoreValue<'a> {
    pub(crate) fn new(run: RunId, name: &'a str, json: &'a str) -> StoreValue<'a> {
        StoreValue {
            run: run.as_uuid(),
            name,
            json,
        }
    }

    /// `ON CONFLICT DO NOTHING` keeps the step's transaction usable when the name is taken.
    pub(crate) const SQL: &'static str = "
INSERT INTO __S__.return_values (run_id, name, parent_id, handler, value)
SELECT r.id, $2, r.parent_id, r.handler, $3 FROM __S__.runs r WHERE r.id = $1
ON CONFLICT (run_id, name) DO NOTHING
RETURNING run_id";
}

impl Statement for StoreValue<'_> {
    /// Whether the value was stored (false: the run already had one of that name).
    type Output = bool;

    fn id(&self) -> StmtId {
        StmtId::StoreValue
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.run, &self.name, &self.json]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<bool> {
        Ok(!rows.is_empty())
    }
}

/// The values of a name that a run's direct children stored, oldest first.
#[derive(Debug)]
pub(crate) struct ChildValues<'a> {
    parent: Uuid,
    name: &'a str,
}

impl<'a> ChildValues<'a> {
    pub(crate) fn new(parent: RunId, name: &'a str) -> ChildValues<'a> {
        ChildValues {
            parent: parent.as_uuid(),
            name,
        }
    }

    pub(crate) const SQL: &'static str = "
SELECT v.run_id, v.handler, v.value, r.status FROM __S__.return_values v
JOIN __S__.runs r ON r.id = v.run_id
WHERE v.parent_id = $1 AND v.name = $2 ORDER BY v.created_at, v.run_id";
}

/// A child's stored value, as JSON text, with the child's current status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChildValueRow {
    pub(crate) run: RunId,
    pub(crate) handler: String,
    pub(crate) json: String,
    pub(crate) status: RunStatus,
}

impl Statement for ChildValues<'_> {
    type Output = Vec<ChildValueRow>;

    fn id(&self) -> StmtId {
        StmtId::ChildValues
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.parent, &self.name]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<ChildValueRow>> {
        rows.iter()
            .map(|row| {
                Ok(ChildValueRow {
                    run: RunId::from_uuid(row.try_get("run_id")?),
                    handler: row.try_get("handler")?,
                    json: row.try_get("value")?,
                    status: status(row, "status")?,
                })
            })
            .collect()
    }
}

/// Why a run must give up now (see the migration's `give_up_reason`), if it must.
#[derive(Debug)]
pub(crate) struct GiveUpReason {
    root: Uuid,
    run: Uuid,
    rolling_back: bool,
}

impl GiveUpReason {
    pub(crate) fn new(root: RootId, run: RunId, rolling_back: bool) -> GiveUpReason {
        GiveUpReason {
            root: root.as_uuid(),
            run: run.as_uuid(),
            rolling_back,
        }
    }

    pub(crate) const SQL: &'static str = "SELECT __S__.give_up_reason($1, $2, $3)::text AS reason";
}

impl Statement for GiveUpReason {
    type Output = Option<Failure>;

    fn id(&self) -> StmtId {
        StmtId::GiveUpReason
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.root, &self.run, &self.rolling_back]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<Failure>> {
        let text: Option<String> = match rows.first() {
            Some(row) => row.try_get("reason")?,
            None => None,
        };
        // A reason that does not parse is no reason: the runtime's own check, which fails
        // loudly, still stops the step from committing.
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }
}
