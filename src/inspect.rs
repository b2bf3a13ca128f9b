//! What callers can read back: a root's outcome, its tree of runs, and its history.

use std::fmt;
use std::time::SystemTime;

use crate::core::{EventKind, RunStatus};
use crate::failure::Failure;
use crate::ids::{MessageId, RootId, RunId};

/// The state of the top-level runs of a cooperation root (one per handler of the root
/// message). Because every run waits for its children, the whole tree has finished exactly
/// when all of these have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeOutcome {
    root: RootId,
    runs: Vec<RootRun>,
}

/// A top-level run of a root.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RootRun {
    /// Its handler.
    pub handler: String,
    /// Its status.
    pub status: RunStatus,
    /// Why it rolled back, if it did (its own failure, its children's, or a request).
    pub failure: Option<Failure>,
    /// Why its rollback failed, if it ended `RollbackFailed`.
    pub rollback_failure: Option<Failure>,
}

impl TreeOutcome {
    pub(crate) fn new(root: RootId, runs: Vec<RootRun>) -> TreeOutcome {
        TreeOutcome { root, runs }
    }

    /// The root.
    pub fn root(&self) -> RootId {
        self.root
    }

    /// The top-level runs, by handler name. Empty when no handler was registered for the
    /// root's topic at launch.
    pub fn runs(&self) -> &[RootRun] {
        &self.runs
    }

    /// Every top-level run (hence every run of the tree) is terminal.
    pub fn is_finished(&self) -> bool {
        self.runs.iter().all(|r| r.status.is_terminal())
    }

    /// There is at least one top-level run and every one of them committed. A root launched
    /// on a topic nobody handled has no runs: finished, but never committed.
    pub fn is_committed(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(|r| r.status == RunStatus::Committed)
    }

    /// No handler was registered for the root's topic when it was launched, so nothing ran.
    pub fn is_unhandled(&self) -> bool {
        self.runs.is_empty()
    }

    pub(crate) fn unfinished(&self) -> String {
        let open: Vec<String> = self
            .runs
            .iter()
            .filter(|r| !r.status.is_terminal())
            .map(|r| format!("{} is {}", r.handler, r.status))
            .collect();
        open.join(", ")
    }
}

/// One run of a cooperation tree, as listed by [`Client::tree`](crate::Client::tree).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunInfo {
    /// The run.
    pub id: RunId,
    /// The run that emitted its message, for children.
    pub parent_id: Option<RunId>,
    /// Its tree.
    pub root_id: RootId,
    /// When it was created (its message emitted), database clock.
    pub created_at: SystemTime,
    /// When a worker first claimed it.
    pub started_at: Option<SystemTime>,
    /// When it reached a terminal status.
    pub finished_at: Option<SystemTime>,
    /// Its handler.
    pub handler: String,
    /// The topic of its message.
    pub topic: String,
    /// Its status.
    pub status: RunStatus,
    /// The index of its next step (the number of steps once the last one ran).
    pub step_index: u32,
    /// Unfinished children of its latest step.
    pub pending_children: u32,
    /// 0 for top-level runs, 1 for their children, ...
    pub depth: u32,
    /// Why it rolled back, if it did.
    pub failure: Option<Failure>,
    /// Why its rollback failed, if it ended `RollbackFailed`.
    pub rollback_failure: Option<Failure>,
    /// Its cooperation context as last saved (after its latest step).
    pub context: crate::CooperationContext,
    /// Retries of its current step's code after transient failures (0 once it moves on).
    pub retries: u32,
    /// Consecutive attempts that ended in infrastructure errors (0 once it moves on).
    pub infra_failures: u32,
    /// The error of the latest retried or failed attempt, while `retries` or
    /// `infra_failures` is not 0.
    pub last_error: Option<String>,
    /// The saga version that wrote it (see [`SagaOf::version`](crate::SagaOf::version));
    /// `None` for runs written before versions existed and runs of external handlers.
    pub version: Option<String>,
}

/// An unfinished run that is being retried after transient failures or keeps failing with
/// infrastructure errors, as listed by
/// [`Client::troubled_runs`](crate::Client::troubled_runs).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TroubledRun {
    /// The run.
    pub id: RunId,
    /// Its tree.
    pub root_id: RootId,
    /// Its handler.
    pub handler: String,
    /// The topic of its message.
    pub topic: String,
    /// Its status (active or rolling back).
    pub status: RunStatus,
    /// The index of the step it is on.
    pub step_index: u32,
    /// Retries of the step's code after transient failures so far.
    pub retries: u32,
    /// Consecutive attempts that ended in infrastructure errors.
    pub infra_failures: u32,
    /// The latest error.
    pub last_error: Option<String>,
    /// When it is due again (database clock).
    pub wake_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// Where a scheduled chain is, as [`Client::chain`](crate::Client::chain) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainInfo {
    /// The chain's key.
    pub key: String,
    /// The topic its occurrences are launched on.
    pub topic: String,
    /// Its schedule, as text (for example `every 600s`).
    pub schedule: String,
    /// How many occurrences were launched so far.
    pub occurrences: u32,
    /// The latest occurrence's root.
    pub latest_root: RootId,
    /// The time the latest occurrence was scheduled for.
    pub latest_scheduled_for: Option<SystemTime>,
    /// The status of the latest occurrence's (first) top-level run: `Active` while it waits
    /// for its time or runs; `None` if no handler was registered for the topic.
    pub latest_status: Option<RunStatus>,
    /// When the chain was stopped, if it was.
    pub stopped_at: Option<SystemTime>,
}

impl ChainInfo {
    pub(crate) fn from_row(key: &str, r: crate::proto::ChainRow) -> ChainInfo {
        let schedule =
            crate::schedule::Schedule::parse(&r.schedule).map_or(r.schedule, |s| s.to_string());
        ChainInfo {
            key: key.to_owned(),
            topic: r.topic,
            schedule,
            occurrences: r.run_count + 1,
            latest_root: r.root,
            latest_scheduled_for: r.scheduled_for,
            latest_status: r.status,
            stopped_at: r.stopped_at,
        }
    }
}

/// What [`Client::stop_chain`](crate::Client::stop_chain) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainStop {
    /// The chain is stopped now: no occurrence follows, and one waiting for its time gives
    /// up at once (one already running finishes).
    Stopped,
    /// It was stopped before; nothing changed.
    AlreadyStopped,
    /// No chain has this key.
    Unknown,
}

impl ChainStop {
    pub(crate) fn from_stopped(s: crate::proto::Stopped) -> ChainStop {
        match s {
            crate::proto::Stopped::Now => ChainStop::Stopped,
            crate::proto::Stopped::Already => ChainStop::AlreadyStopped,
            crate::proto::Stopped::Unknown => ChainStop::Unknown,
        }
    }
}

impl TroubledRun {
    pub(crate) fn from_row(r: crate::proto::TroubledRow) -> TroubledRun {
        TroubledRun {
            id: r.id,
            root_id: r.root_id,
            handler: r.handler,
            topic: r.topic,
            status: r.status,
            step_index: r.step_index,
            retries: r.retries,
            infra_failures: r.infra_failures,
            last_error: r.last_error,
            wake_at: r.wake_at,
            updated_at: r.updated_at,
        }
    }
}

/// Renders runs (as returned by [`Client::tree`](crate::Client::tree)) as an indented tree:
/// each run's handler, topic, status, how long it took (or has been running), what it waits
/// for, and its id (what [`Scope::Run`] takes).
///
/// ```text
/// order-saga on "orders": rolled_back after 48 ms [run 0193a0c4-...]
///   payment on "payments": rolled_back after 21 ms [run 0193a0c4-...]
/// ```
pub fn render_tree(runs: &[RunInfo]) -> String {
    let mut out = String::new();
    for run in runs {
        let waiting = if run.pending_children > 0 {
            format!(", waiting for {} children", run.pending_children)
        } else {
            String::new()
        };
        let took = match run.duration() {
            Some(d) => format!(" after {}", short(d)),
            None => String::new(),
        };
        out.push_str(&format!(
            "{:indent$}{} on {:?}: {}{took}{waiting} [run {}]\n",
            "",
            run.handler,
            run.topic,
            run.status,
            run.id,
            indent = 2 * run.depth as usize
        ));
    }
    out
}

/// A duration as people read it: `850 us`, `48 ms`, `3.2 s`, `5 min`.
fn short(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{} us", d.as_micros())
    } else if ms < 1e3 {
        format!("{ms:.0} ms")
    } else if ms < 60e3 {
        format!("{:.1} s", ms / 1e3)
    } else {
        format!("{:.0} min", ms / 60e3)
    }
}

/// One entry of a root's history.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryEvent {
    /// Position in the history (strictly increasing).
    pub seq: i64,
    /// When it was written (database clock).
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
    /// The handler that wrote it (`None` for launches from outside and operator requests).
    pub handler: Option<String>,
    /// The step it concerns.
    pub step: Option<String>,
    /// The run that wrote it.
    pub run_id: Option<RunId>,
    /// The message it concerns (for `EMITTED`: the emitted message).
    pub message_id: MessageId,
    /// On `SUSPENDED`: the index of the step to run next (`None` after the last step).
    pub next_step: Option<i32>,
    /// On `ROLLING_BACK` and `ROLLBACK_FAILED`: the failure; on `MIGRATED`: why the run was
    /// moved (its message), and by whom (its source).
    pub failure: Option<Failure>,
    /// Who wrote it: the runtime instance, or, on `MIGRATED`, the operator who moved the run.
    pub worker: Option<String>,
}

impl fmt::Display for HistoryEvent {
    /// `KIND(step)@handler`, the notation of the reference's golden traces, e.g.
    /// `SUSPENDED(0)@root-handler` or `EMITTED@-`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(step) = &self.step {
            write!(f, "({step})")?;
        }
        write!(f, "@{}", self.handler.as_deref().unwrap_or("-"))
    }
}

/// A stored message, as returned by [`Client::message`](crate::Client::message).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// The root it belongs to (itself for a launch on the global scope).
    pub root_id: RootId,
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// When it was written (database clock).
    pub created_at: SystemTime,
}

/// What an operator's rollback request addresses: a whole tree, or one run and its subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every top-level run of the root, and everything below them.
    Root(RootId),
    /// One run and everything below it. Its parent is not told: rolling back part of a
    /// committed tree leaves the rest of it committed.
    Run(RunId),
}

impl From<RootId> for Scope {
    fn from(root: RootId) -> Self {
        Scope::Root(root)
    }
}

impl From<RunId> for Scope {
    fn from(run: RunId) -> Self {
        Scope::Run(run)
    }
}

/// Whether an operator's request was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requested {
    /// Recorded: this many runs start rolling back (each takes its subtree with it).
    Recorded {
        /// Runs that will roll back.
        runs: u32,
    },
    /// Not recorded; nothing changed.
    Refused {
        /// Why.
        reason: String,
    },
}

impl Requested {
    /// Whether the request was recorded.
    pub fn is_recorded(&self) -> bool {
        matches!(self, Requested::Recorded { .. })
    }
}

impl RootRun {
    pub(crate) fn from_row(r: crate::proto::RootRunRow) -> RootRun {
        RootRun {
            handler: r.handler,
            status: r.status,
            failure: r.failure,
            rollback_failure: r.rollback_failure,
        }
    }
}

impl RunInfo {
    /// How long it took from creation to its terminal status (`None` while unfinished).
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.finished_at?.duration_since(self.created_at).ok()
    }

    pub(crate) fn from_row(r: crate::proto::TreeRow) -> RunInfo {
        RunInfo {
            id: r.id,
            parent_id: r.parent_id,
            root_id: r.root_id,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            handler: r.handler,
            topic: r.topic,
            status: r.status,
            step_index: r.step_index,
            pending_children: r.pending_children,
            depth: r.depth,
            failure: r.failure,
            rollback_failure: r.rollback_failure,
            context: r.context,
            retries: r.retries,
            infra_failures: r.infra_failures,
            last_error: r.last_error,
            version: r.version,
        }
    }
}

impl HistoryEvent {
    pub(crate) fn from_row(r: crate::proto::HistoryRow) -> HistoryEvent {
        HistoryEvent {
            seq: r.seq,
            at: r.at,
            kind: r.kind,
            handler: r.handler,
            step: r.step,
            run_id: r.run_id,
            message_id: r.message_id,
            next_step: r.next_step,
            worker: r.worker,
            failure: r.failure,
        }
    }
}

impl Message {
    pub(crate) fn from_row(m: crate::proto::MessageRow) -> crate::Result<Message> {
        Ok(Message {
            id: m.id,
            root_id: m.root_id,
            topic: m.topic,
            payload: serde_json::from_str(&m.payload)?,
            created_at: m.created_at,
        })
    }
}
