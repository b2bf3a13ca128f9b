//! Scheduled chains: where a chain is, and stopping it. (Occurrences are written by
//! [`Emit`](super::Emit), the next one with the last transition of the previous one.)

use std::time::SystemTime;

use postgres::Row;
use postgres::types::ToSql;

use super::{Statement, StmtId, one, u32_col};
use crate::core::RunStatus;
use crate::error::{Error, Result};
use crate::ids::RootId;

/// The latest occurrence of a chain, and whether the chain was stopped.
#[derive(Debug)]
pub(crate) struct ChainState<'a> {
    pub(crate) chain: &'a str,
}

impl ChainState<'_> {
    /// The latest occurrence comes from the chain's unique index, newest first.
    pub(crate) const SQL: &'static str = "
SELECT m.topic, m.schedule, m.run_count, m.root_id, m.scheduled_for,
       (SELECT r.status FROM __S__.runs r
        WHERE r.message_id = m.id AND r.parent_id IS NULL ORDER BY r.id LIMIT 1) AS status,
       (SELECT s.stopped_at FROM __S__.chain_stops s WHERE s.chain = m.chain) AS stopped_at
FROM __S__.messages m
WHERE m.chain = $1
ORDER BY m.run_count DESC
LIMIT 1";
}

/// A chain's latest occurrence, as [`ChainState`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainRow {
    pub(crate) topic: String,
    pub(crate) schedule: String,
    pub(crate) run_count: u32,
    pub(crate) root: RootId,
    pub(crate) scheduled_for: Option<SystemTime>,
    pub(crate) status: Option<RunStatus>,
    pub(crate) stopped_at: Option<SystemTime>,
}

impl Statement for ChainState<'_> {
    /// `None`: no chain has this key.
    type Output = Option<ChainRow>;

    fn id(&self) -> StmtId {
        StmtId::ChainState
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.chain]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<ChainRow>> {
        rows.first()
            .map(|row| {
                let status: Option<&str> = row.try_get("status")?;
                let status = status
                    .map(|s| {
                        RunStatus::parse(s).ok_or_else(|| {
                            Error::UnexpectedData(format!("unknown run status {s:?}"))
                        })
                    })
                    .transpose()?;
                Ok(ChainRow {
                    topic: row.try_get("topic")?,
                    schedule: row
                        .try_get::<_, Option<String>>("schedule")?
                        .unwrap_or_default(),
                    run_count: u32_col(row, "run_count")?,
                    root: RootId::from_uuid(row.try_get("root_id")?),
                    scheduled_for: row.try_get("scheduled_for")?,
                    status,
                    stopped_at: row.try_get("stopped_at")?,
                })
            })
            .transpose()
    }
}

/// Stops a chain: no further occurrence is launched (the statement that would launch one
/// skips stopped chains), and an occurrence that has not started is made due at once, so that
/// it gives up now rather than at its time (its claim sees the stop). One that runs finishes.
#[derive(Debug)]
pub(crate) struct StopChain<'a> {
    pub(crate) chain: &'a str,
    pub(crate) source: &'a str,
    pub(crate) reason: &'a str,
}

impl StopChain<'_> {
    pub(crate) const SQL: &'static str = "
WITH known AS MATERIALIZED (
    SELECT EXISTS (SELECT 1 FROM __S__.messages WHERE chain = $1) AS known
),
stop AS (
    INSERT INTO __S__.chain_stops (chain, source, reason)
    SELECT $1, $2, $3 FROM known WHERE known.known
    ON CONFLICT (chain) DO NOTHING
    RETURNING chain
),
woken AS (
    UPDATE __S__.runs r SET wake_at = clock_timestamp(), updated_at = clock_timestamp()
    FROM __S__.messages m
    WHERE m.chain = $1 AND r.message_id = m.id AND r.status = 'active'
      AND r.started_at IS NULL AND EXISTS (SELECT 1 FROM stop)
    RETURNING r.handler
),
notified AS MATERIALIZED (
    SELECT pg_notify('__S___wake', w.handler) FROM (SELECT DISTINCT handler FROM woken) w
)
SELECT (SELECT known FROM known) AS known, (SELECT count(*) FROM stop)::int4 AS stopped,
       (SELECT count(*) FROM notified)::int4 AS notified";
}

/// What [`StopChain`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// No chain has the key.
    Unknown,
    /// This call stopped it.
    Now,
    /// It was stopped before.
    Already,
}

impl Statement for StopChain<'_> {
    type Output = Stopped;

    fn id(&self) -> StmtId {
        StmtId::StopChain
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.chain, &self.source, &self.reason]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Stopped> {
        let row = one(rows)?;
        let known: bool = row.try_get("known")?;
        let stopped: i32 = row.try_get("stopped")?;
        Ok(match (known, stopped) {
            (false, _) => Stopped::Unknown,
            (true, 0) => Stopped::Already,
            (true, _) => Stopped::Now,
        })
    }
}
