//! Which runtimes are alive, and which handlers have one: the `runtimes` table's statements.

use std::time::SystemTime;

use postgres::Row;
use postgres::types::ToSql;

use super::{Statement, StmtId};
use crate::error::Result;

/// Records (or refreshes) a runtime's row, and deletes rows gone stale (ten intervals
/// without a refresh, five minutes at least).
#[derive(Debug)]
pub(crate) struct Heartbeat<'a> {
    pub(crate) instance: &'a str,
    pub(crate) host: &'a str,
    pub(crate) pid: i32,
    pub(crate) edition: &'a str,
    pub(crate) handlers: Vec<&'a str>,
    pub(crate) workers: i32,
    pub(crate) interval_ms: i64,
}

impl Heartbeat<'_> {
    pub(crate) const SQL: &'static str = "
WITH expired AS (
    DELETE FROM __S__.runtimes
    WHERE last_seen < clock_timestamp() - greatest(10 * interval_ms, 300000) * interval '1 ms'
)
INSERT INTO __S__.runtimes (instance, host, pid, edition, handlers, workers, interval_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (instance) DO UPDATE SET last_seen = clock_timestamp()";
}

impl Statement for Heartbeat<'_> {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::Heartbeat
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.instance,
            &self.host,
            &self.pid,
            &self.edition,
            &self.handlers,
            &self.workers,
            &self.interval_ms,
        ]
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}

/// Deletes a runtime's row (it shut down cleanly).
#[derive(Debug)]
pub(crate) struct Retire<'a> {
    pub(crate) instance: &'a str,
}

impl Retire<'_> {
    pub(crate) const SQL: &'static str = "DELETE FROM __S__.runtimes WHERE instance = $1";
}

impl Statement for Retire<'_> {
    type Output = ();

    fn id(&self) -> StmtId {
        StmtId::Retire
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.instance]
    }

    fn decode(&self, _rows: Vec<Row>) -> Result<()> {
        Ok(())
    }
}

/// Every recorded runtime, oldest first, and whether it is alive (refreshed within three of
/// its intervals).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Runtimes;

impl Runtimes {
    pub(crate) const SQL: &'static str = "
SELECT instance, host, pid, edition, handlers, workers, started_at, last_seen,
       last_seen + 3 * interval_ms * interval '1 ms' >= clock_timestamp() AS alive
FROM __S__.runtimes ORDER BY started_at, instance";
}

/// One row of [`Runtimes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuntimeRow {
    pub(crate) instance: String,
    pub(crate) host: String,
    pub(crate) pid: i32,
    pub(crate) edition: String,
    pub(crate) handlers: Vec<String>,
    pub(crate) workers: i32,
    pub(crate) started_at: SystemTime,
    pub(crate) last_seen: SystemTime,
    pub(crate) alive: bool,
}

impl Statement for Runtimes {
    type Output = Vec<RuntimeRow>;

    fn id(&self) -> StmtId {
        StmtId::Runtimes
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<RuntimeRow>> {
        rows.iter()
            .map(|row| {
                Ok(RuntimeRow {
                    instance: row.try_get("instance")?,
                    host: row.try_get("host")?,
                    pid: row.try_get("pid")?,
                    edition: row.try_get("edition")?,
                    handlers: row.try_get("handlers")?,
                    workers: row.try_get("workers")?,
                    started_at: row.try_get("started_at")?,
                    last_seen: row.try_get("last_seen")?,
                    alive: row.try_get("alive")?,
                })
            })
            .collect()
    }
}

/// The durable topology: every registered (topic, handler), its kind, and how many live
/// runtimes serve it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Topology;

impl Topology {
    pub(crate) const SQL: &'static str = "
SELECT h.topic, h.handler, h.kind,
       count(r.instance) FILTER (
           WHERE r.last_seen + 3 * r.interval_ms * interval '1 ms' >= clock_timestamp()
       ) AS live
FROM __S__.handlers h
LEFT JOIN __S__.runtimes r ON h.handler = ANY (r.handlers)
GROUP BY h.topic, h.handler, h.kind
ORDER BY h.topic, h.handler";
}

/// One row of [`Topology`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopologyRow {
    pub(crate) topic: String,
    pub(crate) handler: String,
    pub(crate) kind: String,
    pub(crate) live: i64,
}

impl Statement for Topology {
    type Output = Vec<TopologyRow>;

    fn id(&self) -> StmtId {
        StmtId::Topology
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        Vec::new()
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<TopologyRow>> {
        rows.iter()
            .map(|row| {
                Ok(TopologyRow {
                    topic: row.try_get("topic")?,
                    handler: row.try_get("handler")?,
                    kind: row.try_get("kind")?,
                    live: row.try_get("live")?,
                })
            })
            .collect()
    }
}
