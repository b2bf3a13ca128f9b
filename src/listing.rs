//! Finding runs among many: filters, pages and cursors, counts of unfinished work, and what
//! pruning deleted.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::core::RunStatus;
use crate::error::{Error, Result};
use crate::inspect::RunInfo;
use crate::proto::{CountRow, ListRuns, Pruned};

/// Which runs [`Client::list_runs`](crate::Client::list_runs) returns: every condition set
/// must hold; newest first, `limit` at a time (50 by default, at most 1,000).
///
/// Listing roots (`roots_only`), alone or by status, and by creation time uses an index, so a
/// page costs the same however many finished trees the schema holds; other filters are
/// checked on the way (cheap while matching runs are common among the newest).
///
/// ```no_run
/// use structured_cooperation::{RunFilter, RunStatus};
///
/// # fn main() -> structured_cooperation::Result<()> {
/// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
/// let failed = RunFilter::roots()
///     .status(RunStatus::RolledBack)
///     .status(RunStatus::RollbackFailed)
///     .limit(20);
/// let mut page = client.list_runs(&failed)?;
/// loop {
///     for run in &page.runs {
///         println!("{} {} {:?}", run.root_id, run.handler, run.failure.as_ref().map(|f| f.kind()));
///     }
///     let Some(next) = page.next else { break };
///     page = client.list_runs(&failed.clone().after(next))?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFilter {
    handler: Option<String>,
    topic: Option<String>,
    statuses: Vec<RunStatus>,
    roots_only: bool,
    created: (Option<SystemTime>, Option<SystemTime>),
    finished: (Option<SystemTime>, Option<SystemTime>),
    failure_type: Option<String>,
    limit: usize,
    after: Option<Cursor>,
}

impl Default for RunFilter {
    fn default() -> RunFilter {
        RunFilter {
            handler: None,
            topic: None,
            statuses: Vec::new(),
            roots_only: false,
            created: (None, None),
            finished: (None, None),
            failure_type: None,
            limit: 50,
            after: None,
        }
    }
}

impl RunFilter {
    /// Every run.
    pub fn runs() -> RunFilter {
        RunFilter::default()
    }

    /// Top-level runs only: one per handler of each root (what "a root's status" means).
    pub fn roots() -> RunFilter {
        RunFilter {
            roots_only: true,
            ..RunFilter::default()
        }
    }

    /// Runs of this handler.
    pub fn handler(mut self, handler: impl Into<String>) -> RunFilter {
        self.handler = Some(handler.into());
        self
    }

    /// Runs of messages on this topic.
    pub fn topic(mut self, topic: impl Into<String>) -> RunFilter {
        self.topic = Some(topic.into());
        self
    }

    /// Runs in this status (call again for "or another").
    pub fn status(mut self, status: RunStatus) -> RunFilter {
        if !self.statuses.contains(&status) {
            self.statuses.push(status);
        }
        self
    }

    /// Runs created in `[from, until)` (either end open when `None`).
    pub fn created_between(mut self, from: Option<SystemTime>, until: Option<SystemTime>) -> Self {
        self.created = (from, until);
        self
    }

    /// Runs that finished in `[from, until)` (unfinished runs never match).
    pub fn finished_between(mut self, from: Option<SystemTime>, until: Option<SystemTime>) -> Self {
        self.finished = (from, until);
        self
    }

    /// Runs whose failure (the reason they rolled back) has this type, e.g.
    /// `structured_cooperation::MissedDeadline` or `my_app::CardDeclined`.
    pub fn failure_type(mut self, kind: impl Into<String>) -> RunFilter {
        self.failure_type = Some(kind.into());
        self
    }

    /// At most this many per page (1 to 1,000; 50 by default).
    pub fn limit(mut self, limit: usize) -> RunFilter {
        self.limit = limit;
        self
    }

    /// The page after the one that returned `cursor` as its [`RunPage::next`].
    pub fn after(mut self, cursor: Cursor) -> RunFilter {
        self.after = Some(cursor);
        self
    }

    pub(crate) fn statement(&self) -> Result<ListRuns> {
        if self.limit == 0 || self.limit > 1000 {
            return Err(Error::Config(format!(
                "a listing's limit must be 1 to 1000, not {}",
                self.limit
            )));
        }
        Ok(ListRuns {
            handler: self.handler.clone(),
            topic: self.topic.clone(),
            statuses: self
                .statuses
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            roots_only: self.roots_only,
            created_from: self.created.0,
            created_until: self.created.1,
            finished_from: self.finished.0,
            finished_until: self.finished.1,
            failure_type: self.failure_type.clone(),
            after_created: self.after.as_ref().map(|c| c.created_at),
            after_id: self.after.as_ref().map(|c| c.id),
            // One more than asked: whether there is a next page.
            limit: self.limit as i64 + 1,
        })
    }

    pub(crate) fn page(&self, rows: Vec<crate::proto::TreeRow>) -> RunPage {
        let mut runs: Vec<RunInfo> = rows.into_iter().map(RunInfo::from_row).collect();
        let next = (runs.len() > self.limit).then(|| {
            runs.truncate(self.limit);
            let last = &runs[runs.len() - 1];
            Cursor {
                created_at: last.created_at,
                id: last.id.as_uuid(),
            }
        });
        RunPage { runs, next }
    }
}

/// One page of [`Client::list_runs`](crate::Client::list_runs).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunPage {
    /// The runs, newest first (`depth` is 0: they are listed, not placed in their tree).
    pub runs: Vec<RunInfo>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Where a listing's next page starts: opaque, but printable and parseable (for a command
/// line or a URL), e.g. `1764633600123456.0193a0c4-...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    created_at: SystemTime,
    id: Uuid,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self
            .created_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        write!(f, "{micros}.{}", self.id)
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Cursor> {
        let invalid = || Error::Config(format!("{s:?} is not a listing cursor"));
        let (micros, id) = s.trim().split_once('.').ok_or_else(invalid)?;
        let micros: u64 = micros.parse().map_err(|_| invalid())?;
        Ok(Cursor {
            created_at: UNIX_EPOCH + Duration::from_micros(micros),
            id: Uuid::parse_str(id).map_err(|_| invalid())?,
        })
    }
}

/// Runs of one handler in one status, from
/// [`Client::unfinished_counts`](crate::Client::unfinished_counts) (unfinished runs) or
/// [`Client::root_counts`](crate::Client::root_counts) (top-level runs of a time window).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunCount {
    /// The handler.
    pub handler: String,
    /// The saga version that wrote the runs (unfinished counts are per version; `None` for
    /// runs without one, and in root counts).
    pub version: Option<String>,
    /// The status.
    pub status: RunStatus,
    /// How many runs.
    pub runs: u64,
    /// Of those, how many could run now (no unfinished children, timer passed): work waiting
    /// for a worker.
    pub due: u64,
    /// When the oldest of them was created.
    pub oldest: SystemTime,
}

impl RunCount {
    pub(crate) fn from_row(r: CountRow) -> RunCount {
        RunCount {
            handler: r.handler,
            version: r.version,
            status: r.status,
            runs: u64::try_from(r.runs).unwrap_or(0),
            due: u64::try_from(r.due).unwrap_or(0),
            oldest: r.oldest,
        }
    }
}

/// What [`Client::prune`](crate::Client::prune) deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Trees (roots) deleted.
    pub trees: u64,
    /// Runs deleted.
    pub runs: u64,
    /// Messages deleted.
    pub messages: u64,
    /// Transactions it took.
    pub batches: u64,
}

impl PruneReport {
    pub(crate) fn add(&mut self, p: Pruned) {
        self.trees += u64::try_from(p.trees).unwrap_or(0);
        self.runs += u64::try_from(p.runs).unwrap_or(0);
        self.messages += u64::try_from(p.messages).unwrap_or(0);
        self.batches += 1;
    }
}

/// A runtime that recorded itself, from [`Client::runtimes`](crate::Client::runtimes).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeInfo {
    /// Its instance id (as in failures' sources, `handler[instance]`).
    pub instance: String,
    /// The machine it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: i32,
    /// `blocking` or `tokio`.
    pub edition: String,
    /// The handlers it serves.
    pub handlers: Vec<String>,
    /// Its workers.
    pub workers: u32,
    /// When it started.
    pub started_at: SystemTime,
    /// When it last recorded itself (at every safety-net sweep).
    pub last_seen: SystemTime,
    /// Whether it recorded itself within three safety-net intervals. A runtime that stopped
    /// cleanly removes its row; one that is not alive crashed or lost the database (its row
    /// goes after ten intervals).
    pub alive: bool,
}

impl RuntimeInfo {
    pub(crate) fn from_row(r: crate::proto::RuntimeRow) -> RuntimeInfo {
        RuntimeInfo {
            instance: r.instance,
            host: r.host,
            pid: r.pid,
            edition: r.edition,
            handlers: r.handlers,
            workers: u32::try_from(r.workers).unwrap_or(0),
            started_at: r.started_at,
            last_seen: r.last_seen,
            alive: r.alive,
        }
    }
}

/// A registered (topic, handler) pair and who serves it, from
/// [`Client::topology`](crate::Client::topology).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopologyEntry {
    /// The topic.
    pub topic: String,
    /// The handler.
    pub handler: String,
    /// Whether runtimes serve it (`false`: it is completed out of band, through
    /// [`Client::complete_external`](crate::Client::complete_external)).
    pub served_by_runtimes: bool,
    /// Live runtimes serving it. Zero for a runtime handler is the usual reason a tree is
    /// stuck: its messages wait for a service that is not running.
    pub live_runtimes: u32,
}

impl TopologyEntry {
    pub(crate) fn from_row(r: crate::proto::TopologyRow) -> TopologyEntry {
        TopologyEntry {
            topic: r.topic,
            handler: r.handler,
            served_by_runtimes: r.kind == "runtime",
            live_runtimes: u32::try_from(r.live).unwrap_or(0),
        }
    }
}

/// Trees deleted per transaction by [`Client::prune`](crate::Client::prune).
pub(crate) const PRUNE_BATCH: i64 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_print_and_parse() {
        let c = Cursor {
            created_at: UNIX_EPOCH + Duration::from_micros(1_764_633_600_123_456),
            id: Uuid::nil(),
        };
        let text = c.to_string();
        assert_eq!(
            text,
            "1764633600123456.00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(text.parse::<Cursor>().unwrap(), c);
        assert!("nope".parse::<Cursor>().is_err());
    }

    #[test]
    fn limits_are_checked() {
        assert!(RunFilter::runs().limit(0).statement().is_err());
        assert!(RunFilter::runs().limit(1001).statement().is_err());
        assert_eq!(RunFilter::roots().statement().unwrap().limit, 51);
    }
}
