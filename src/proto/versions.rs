//! Saga versions: which runs wait for a version nobody here serves, what a version's shape
//! is, and an operator's move of unfinished runs from one version to another.

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::{Statement, StmtId};
use crate::error::Result;

/// Runnable runs of the given handlers written by versions the caller does not serve, by
/// handler and version. Reads the claim's index (runnable runs only, sleeping ones included).
#[derive(Debug)]
pub(crate) struct UnservedRuns<'a> {
    pub(crate) handlers: Vec<&'a str>,
    /// Per handler, its served versions, comma-separated.
    pub(crate) served: Vec<&'a str>,
}

impl UnservedRuns<'_> {
    pub(crate) const SQL: &'static str = "
SELECT h.name AS handler, r.version, count(*)::int8 AS runs
FROM unnest($1::text[], $2::text[]) AS h(name, served)
JOIN __S__.runs r ON r.handler = h.name
WHERE r.status IN ('active', 'rolling_back') AND r.pending_children = 0
  AND r.version IS NOT NULL AND r.version <> ALL (string_to_array(h.served, ','))
GROUP BY h.name, r.version
ORDER BY h.name, r.version";
}

/// One handler's runs of one version nobody here serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnservedRow {
    pub(crate) handler: String,
    pub(crate) version: String,
    pub(crate) runs: i64,
}

impl Statement for UnservedRuns<'_> {
    type Output = Vec<UnservedRow>;

    fn id(&self) -> StmtId {
        StmtId::UnservedRuns
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.handlers, &self.served]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<UnservedRow>> {
        rows.iter()
            .map(|row| {
                Ok(UnservedRow {
                    handler: row.try_get("handler")?,
                    version: row.try_get("version")?,
                    runs: row.try_get("runs")?,
                })
            })
            .collect()
    }
}

/// The recorded shape of each of a handler's versions: (version, steps as JSON).
#[derive(Debug)]
pub(crate) struct VersionShapes<'a> {
    pub(crate) handler: &'a str,
}

impl VersionShapes<'_> {
    pub(crate) const SQL: &'static str = "
SELECT version, steps::text AS steps, registered_at
FROM __S__.saga_versions WHERE handler = $1 ORDER BY registered_at, version";
}

impl Statement for VersionShapes<'_> {
    type Output = Vec<(String, String)>;

    fn id(&self) -> StmtId {
        StmtId::VersionShapes
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.handler]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<(String, String)>> {
        rows.iter()
            .map(|row| Ok((row.try_get("version")?, row.try_get("steps")?)))
            .collect()
    }
}

/// Locks the unfinished runs of `handler` written by `version` (in id order), waiting for the
/// steps in flight to commit: the first statement of a migration, whose second one
/// ([`MigrateRuns`]) then reads, with a snapshot taken after those commits, runs nobody can
/// change under it.
#[derive(Debug)]
pub(crate) struct LockVersionRuns<'a> {
    pub(crate) handler: &'a str,
    pub(crate) version: &'a str,
}

impl LockVersionRuns<'_> {
    pub(crate) const SQL: &'static str = "
SELECT id FROM __S__.runs
WHERE handler = $1 AND version = $2 AND status IN ('active', 'rolling_back')
ORDER BY id
FOR UPDATE";
}

impl Statement for LockVersionRuns<'_> {
    type Output = Vec<Uuid>;

    fn id(&self) -> StmtId {
        StmtId::LockVersionRuns
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.handler, &self.version]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<Uuid>> {
        rows.iter()
            .map(|row| row.try_get("id").map_err(Into::into))
            .collect()
    }
}

/// Moves the unfinished runs of `handler` written by version `from` to version `to`, with a
/// step mapping by index (`from_steps[i]` becomes `to_steps[i]`; computed by the caller from
/// the recorded shapes and the operator's mapping by name). A run moves only if it is on
/// its happy path and every step it sits at or executed maps (its step instances are renumbered
/// too, so that a later rollback finds the compensations in `to`); the others stay as they
/// are and are reported. Only the runs in `locked` are looked at: [`LockVersionRuns`] locked
/// them earlier in the same transaction, so this statement's snapshot holds every step they
/// committed (a run that finished meanwhile no longer matches). Each moved run is changed and
/// given a `MIGRATED` history entry (`worker` = who, failure message = why), and the
/// handler's runtimes are woken if any moved: atomically per run, and for all of them.
#[derive(Debug)]
pub(crate) struct MigrateRuns<'a> {
    pub(crate) handler: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) from_steps: Vec<i32>,
    pub(crate) to_steps: Vec<i32>,
    /// The `to` step names, by `to` index (for the history).
    pub(crate) to_names: Vec<String>,
    pub(crate) by: &'a str,
    /// The history entry's failure: `{type, message, source}` as JSON.
    pub(crate) why: String,
    /// The runs [`LockVersionRuns`] locked.
    pub(crate) locked: Vec<Uuid>,
}

impl MigrateRuns<'_> {
    pub(crate) const SQL: &'static str = "
WITH map AS (SELECT * FROM unnest($4::int4[], $5::int4[]) AS m(from_step, to_step)),
cand AS MATERIALIZED (
    SELECT r.id, r.root_id, r.message_id, r.step_index, r.status
    FROM __S__.runs r
    WHERE r.id = ANY ($9::uuid[])
      AND r.handler = $1 AND r.version = $2 AND r.status IN ('active', 'rolling_back')
),
judged AS MATERIALIZED (
    SELECT c.*, m.to_step,
           c.status = 'active' AND m.to_step IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM __S__.step_instances i
                           LEFT JOIN map mi ON mi.from_step = i.step
                           WHERE i.run_id = c.id AND mi.to_step IS NULL) AS ok
    FROM cand c LEFT JOIN map m ON m.from_step = c.step_index
),
moved AS (
    UPDATE __S__.runs r SET version = $3, step_index = j.to_step, updated_at = clock_timestamp()
    FROM judged j WHERE r.id = j.id AND j.ok
    RETURNING r.id
),
renumbered AS (
    UPDATE __S__.step_instances i SET step = m.to_step
    FROM judged j, map m
    WHERE j.ok AND i.run_id = j.id AND m.from_step = i.step
),
hist AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, step, failure, worker)
    SELECT j.root_id, j.id, j.message_id, 'MIGRATED', $1, ($6::text[])[j.to_step + 1],
           $8::text::jsonb, $7
    FROM judged j WHERE j.ok
    ORDER BY j.id
),
woken AS MATERIALIZED (
    SELECT pg_notify('__S___wake', $1) WHERE EXISTS (SELECT 1 FROM judged WHERE ok)
)
SELECT j.id, j.ok, j.status, j.step_index FROM judged j, (SELECT count(*) FROM woken) w
ORDER BY j.id";
}

/// One run a migration looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MigrateRow {
    pub(crate) run: Uuid,
    pub(crate) moved: bool,
    pub(crate) status: String,
    pub(crate) step_index: i32,
}

impl Statement for MigrateRuns<'_> {
    type Output = Vec<MigrateRow>;

    fn id(&self) -> StmtId {
        StmtId::MigrateRuns
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.handler,
            &self.from,
            &self.to,
            &self.from_steps,
            &self.to_steps,
            &self.to_names,
            &self.by,
            &self.why,
            &self.locked,
        ]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<MigrateRow>> {
        rows.iter()
            .map(|row| {
                Ok(MigrateRow {
                    run: row.try_get("id")?,
                    moved: row.try_get("ok")?,
                    status: row.try_get("status")?,
                    step_index: row.try_get("step_index")?,
                })
            })
            .collect()
    }
}
