//! Every statement the engine runs, as data: its text, its parameters and its decoder, side by
//! side, one type per statement. Nothing here does I/O.
//!
//! A statement type holds its parameters as named fields and implements [`Statement`]: which
//! statement it is ([`StmtId`], which picks its text in [`Sql`] and its slot in a
//! [`StmtCache`]), the parameters in `$n` order, and how the returned rows decode. The text
//! sits beside the type as an associated `SQL` constant; templates name tables `__S__.table`
//! and [`Sql::new`] substitutes the (validated) schema once, at start-up.
//!
//! The types used here (`Row`, `ToSql`, `Statement`, `Error`) are tokio-postgres's, which
//! `postgres` re-exports, so a second runtime on tokio-postgres runs the very same statements;
//! only the executor (`runtime::exec` for the blocking runtime) differs.

mod alive;
mod chain;
mod claim_many;
mod cols;
mod conclude;
mod emit;
mod finish;
mod inspect;
mod launch;
mod list;
mod migrate;
mod operator;
mod rollback;
mod run;
mod session;
mod trouble;
mod vacuum;
mod values;
mod versions;

use std::time::Duration;

use postgres::Row;
use postgres::types::ToSql;

use crate::core::{RunStatus, RunView};
use crate::error::{Error, Result};
use crate::failure::Failure;

pub(crate) use alive::{Heartbeat, Retire, RuntimeRow, Runtimes, Topology, TopologyRow};
pub(crate) use chain::{ChainRow, ChainState, StopChain, Stopped};
pub(crate) use claim_many::{ClaimMany, Queued, Unseen};
pub(crate) use cols::{Cols, Literals, first_row, literal};
pub(crate) use conclude::{Conclude, Concluded};
pub(crate) use emit::{Emit, Emitted, Emitter, KeyedRoot, Register, Served};
pub(crate) use finish::{Applied, Finish};
pub(crate) use inspect::{
    ExternalRun, History, HistoryRow, LockExternal, Message, MessageRow, RootExists, RootRunRow,
    RootRuns, Tree, TreeRow,
};
pub(crate) use launch::LaunchOne;
pub(crate) use list::{
    CountRow, ListRuns, PruneBatch, Pruned, RootCounts, RunById, UnfinishedCounts,
};
pub(crate) use migrate::{
    ApplyMigration, LATEST_MIGRATION, MIGRATIONS, MigrationLock, MigrationSetup, MigrationVersion,
    RecordMigration, migration_script, version_query,
};
pub(crate) use operator::{
    BusyAround, CancelScope, LockRoot, LockTargets, RecordCancel, RequestOperatorRollback,
    RunOrigin, TargetRun,
};
pub(crate) use rollback::{Children, Instances, RequestRollback, Requested};
pub(crate) use run::{Claim, Claimed, ClaimedRun, Release, Sweep, SweepRow, Unreleased};
pub(crate) use session::{
    ConnectionLimits, Limits, Listen, RollbackToSavepoint, Savepoint, Unlisten, WorkerSession,
};
pub(crate) use trouble::{Poison, Postpone, Postponed, ScheduleRetry, Troubled, TroubledRow};
pub(crate) use vacuum::{Vacuum, VacuumDue};
pub(crate) use values::{ChildValueRow, ChildValues, GiveUpReason, StoreValue};
pub(crate) use versions::{
    LockVersionRuns, MigrateRow, MigrateRuns, UnservedRow, UnservedRuns, VersionShapes,
};

/// An engine statement: what to execute and how to read what comes back.
///
/// Executors run any implementor over their client (see `runtime::exec::run`); a statement
/// whose [`StmtId`] is [simple](StmtId::is_simple) has no parameters and goes through the
/// simple-query protocol (one round trip, no rows).
pub(crate) trait Statement {
    /// What the rows decode into.
    type Output;
    /// Which statement this is.
    fn id(&self) -> StmtId;
    /// The text to execute; by default the statement's template with the schema filled in.
    fn text<'s>(&self, sql: &'s Sql) -> &'s str {
        sql.text(self.id())
    }
    /// The parameters, in `$1, $2, ...` order.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)>;
    /// Turns the returned rows into the output.
    fn decode(&self, rows: Vec<Row>) -> Result<Self::Output>;
}

/// Declares [`StmtId`] with one variant per statement type, and where each one's template is.
macro_rules! statements {
    ($($(#[$doc:meta])* $id:ident => $sql:expr,)*) => {
        /// Names every engine statement: the key of its text in [`Sql`] and of its slot in a
        /// [`StmtCache`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum StmtId { $($(#[$doc])* $id,)* }

        impl StmtId {
            /// Every statement, in declaration order.
            const ALL: &'static [StmtId] = &[$(StmtId::$id,)*];

            /// The statement's template (tables as `__S__.table`).
            fn template(self) -> &'static str {
                match self { $(StmtId::$id => $sql,)* }
            }
        }
    };
}

statements! {
    /// [`Claim`]
    Claim => Claim::SQL,
    /// [`ClaimMany`]
    ClaimMany => ClaimMany::SQL,
    /// [`Unseen`]
    Unseen => Unseen::SQL,
    /// [`Emit`]
    Emit => Emit::SQL,
    /// [`LaunchOne`]
    LaunchOne => LaunchOne::SQL,
    /// [`KeyedRoot`]
    KeyedRoot => KeyedRoot::SQL,
    /// [`ChainState`]
    ChainState => ChainState::SQL,
    /// [`StopChain`]
    StopChain => StopChain::SQL,
    /// [`Finish`]
    Finish => Finish::SQL,
    /// [`Release`]
    Release => Release::SQL,
    /// [`Unreleased`]
    Unreleased => Unreleased::SQL,
    /// [`Sweep`]
    Sweep => Sweep::SQL,
    /// [`ScheduleRetry`]
    ScheduleRetry => ScheduleRetry::SQL,
    /// [`Postpone`]
    Postpone => Postpone::SQL,
    /// [`Poison`]
    Poison => Poison::SQL,
    /// [`Troubled`]
    Troubled => Troubled::SQL,
    /// [`Register`]
    Register => Register::SQL,
    /// [`Instances`]
    Instances => Instances::SQL,
    /// [`Children`]
    Children => Children::SQL,
    /// [`RequestRollback`]
    RequestRollback => RequestRollback::SQL,
    /// [`LockTargets`] of a root.
    LockRootRuns => LockTargets::ROOT_SQL,
    /// [`LockTargets`] of one run.
    LockRun => LockTargets::RUN_SQL,
    /// [`BusyAround`]
    BusyAround => BusyAround::SQL,
    /// [`RequestOperatorRollback`]
    RequestOperatorRollback => RequestOperatorRollback::SQL,
    /// [`CancelScope`]
    CancelScope => CancelScope::SQL,
    /// [`RecordCancel`]
    RecordCancel => RecordCancel::SQL,
    /// [`RunOrigin`]
    RunOrigin => RunOrigin::SQL,
    /// [`LockRoot`]
    LockRoot => LockRoot::SQL,
    /// [`RootRuns`]
    RootRuns => RootRuns::SQL,
    /// [`RootExists`]
    RootExists => RootExists::SQL,
    /// [`ListRuns`]
    ListRuns => ListRuns::SQL,
    /// [`RunById`]
    RunById => RunById::SQL,
    /// [`UnfinishedCounts`]
    UnfinishedCounts => UnfinishedCounts::SQL,
    /// [`RootCounts`]
    RootCounts => RootCounts::SQL,
    /// [`PruneBatch`]
    PruneBatch => PruneBatch::SQL,
    /// [`Heartbeat`]
    Heartbeat => Heartbeat::SQL,
    /// [`Retire`]
    Retire => Retire::SQL,
    /// [`Runtimes`]
    Runtimes => Runtimes::SQL,
    /// [`Topology`]
    Topology => Topology::SQL,
    /// [`Tree`]
    Tree => Tree::SQL,
    /// [`History`]
    History => History::SQL,
    /// [`Message`]
    Message => Message::SQL,
    /// [`LockExternal`]
    LockExternal => LockExternal::SQL,
    /// [`StoreValue`]
    StoreValue => StoreValue::SQL,
    /// [`ChildValues`]
    ChildValues => ChildValues::SQL,
    /// [`GiveUpReason`]
    GiveUpReason => GiveUpReason::SQL,
    /// [`VacuumDue`]
    VacuumDue => VacuumDue::SQL,
    /// [`UnservedRuns`]
    UnservedRuns => UnservedRuns::SQL,
    /// [`VersionShapes`]
    VersionShapes => VersionShapes::SQL,
    /// [`LockVersionRuns`]
    LockVersionRuns => LockVersionRuns::SQL,
    /// [`MigrateRuns`]
    MigrateRuns => MigrateRuns::SQL,
    /// [`Vacuum`]
    Vacuum => Vacuum::SQL,
    /// [`Savepoint`]
    Savepoint => Savepoint::SQL,
    /// [`RollbackToSavepoint`]
    RollbackToSavepoint => RollbackToSavepoint::SQL,
    /// [`WorkerSession`]
    WorkerSession => WorkerSession::SQL,
    /// [`ConnectionLimits`]
    ConnectionLimits => ConnectionLimits::SQL,
    /// [`Listen`]
    Listen => Listen::SQL,
    /// [`Unlisten`]
    Unlisten => Unlisten::SQL,
    /// [`MigrationLock`]
    MigrationLock => MigrationLock::SQL,
    /// [`MigrationSetup`]
    MigrationSetup => MigrationSetup::SQL,
    /// [`MigrationVersion`]
    MigrationVersion => MigrationVersion::SQL,
    /// [`ApplyMigration`] (its text is the migration's own).
    ApplyMigration => ApplyMigration::SQL,
    /// [`RecordMigration`]
    RecordMigration => RecordMigration::SQL,
}

impl StmtId {
    /// Statements without parameters or rows that go through the simple-query protocol: one
    /// round trip instead of a prepare and an execute, which matters for the savepoint that
    /// most steps take.
    pub(crate) fn is_simple(self) -> bool {
        matches!(
            self,
            StmtId::Savepoint
                | StmtId::RollbackToSavepoint
                | StmtId::Vacuum
                | StmtId::WorkerSession
                | StmtId::Listen
                | StmtId::Unlisten
                | StmtId::MigrationSetup
                | StmtId::ApplyMigration
        )
    }
}

/// The statements' texts with the schema filled in. The `LISTEN`/`NOTIFY` channel that wakes
/// handlers is `<schema>_wake` (written `__S___wake` in templates); its payload is a handler
/// name.
#[derive(Debug)]
pub(crate) struct Sql {
    texts: Vec<String>,
}

impl Sql {
    /// `schema` must already be validated as a plain identifier.
    pub(crate) fn new(schema: &str) -> Sql {
        Sql {
            texts: StmtId::ALL
                .iter()
                .map(|id| id.template().replace("__S__", schema))
                .collect(),
        }
    }

    /// The text of statement `id`.
    pub(crate) fn text(&self, id: StmtId) -> &str {
        &self.texts[id as usize]
    }
}

/// The statements prepared on one connection, by [`StmtId`]. Executors fill it as they go;
/// it is kept as long as the connection (a worker's, for its whole life).
#[derive(Debug, Default)]
pub(crate) struct StmtCache {
    stmts: Vec<Option<postgres::Statement>>,
    /// The names of the statements prepared on the session for the simple-query protocol
    /// (see [`Simple`]), once prepared.
    simple: [Option<String>; Simple::COUNT],
}

/// Statements that also run through the simple-query protocol, as `EXECUTE` of a statement
/// prepared on the session with SQL `PREPARE`: so that one round trip can carry them with
/// transaction control (`COMMIT; BEGIN; <claim>; SAVEPOINT ...`, `RELEASE SAVEPOINT ...;
/// <finish>`) without planning them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Simple {
    Claim,
    Finish,
    Emit,
    Release,
    /// [`LaunchOne`], on a client's pooled connection.
    Launch,
    /// [`ClaimMany`]
    ClaimMany,
}

impl Simple {
    /// The word in the names it is prepared under (`sc_<kind>_...`).
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Simple::Claim => "claim",
            Simple::Finish => "finish",
            Simple::Emit => "emit",
            Simple::Release => "release",
            Simple::Launch => "launch",
            Simple::ClaimMany => "claim_many",
        }
    }

    /// How many there are.
    const COUNT: usize = 6;
}

/// Numbers the statements this process prepares with SQL `PREPARE`: every preparation gets a
/// name of its own, since one prepared before [`StmtCache::clear`], or by an earlier user of
/// a pooled connection, may still exist on the session.
static SIMPLE_PREPARED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl StmtCache {
    /// The prepared statement for `id`, if there is one.
    pub(crate) fn lookup(&self, id: StmtId) -> Option<postgres::Statement> {
        self.stmts.get(id as usize).cloned().flatten()
    }

    /// Remembers `stmt` as the prepared form of `id`.
    pub(crate) fn insert(&mut self, id: StmtId, stmt: postgres::Statement) {
        let i = id as usize;
        if self.stmts.len() <= i {
            self.stmts.resize(StmtId::ALL.len(), None);
        }
        self.stmts[i] = Some(stmt);
    }

    /// Forgets every statement (after an error that may have left them unusable).
    pub(crate) fn clear(&mut self) {
        self.stmts.clear();
        self.simple = Default::default();
    }

    /// The name of statement `s` as prepared on the session, and whether it is prepared yet
    /// (if not, the caller prepares it under that name and then calls [`prepared`]).
    ///
    /// [`prepared`]: Self::prepared
    pub(crate) fn simple_name(&self, s: Simple) -> (String, bool) {
        match &self.simple[s as usize] {
            Some(name) => (name.clone(), true),
            None => {
                let n = SIMPLE_PREPARED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let kind = s.kind();
                (format!("sc_{kind}_{n}"), false)
            }
        }
    }

    /// Statement `s` is now prepared on the session under `name`.
    pub(crate) fn prepared(&mut self, s: Simple, name: String) {
        self.simple[s as usize] = Some(name);
    }
}

/// Which give-up check (see the migration's `check_give_up`) runs before the results of user
/// code are written.
///
/// The statements skip the check itself (a function taking the root's shared advisory lock,
/// then looking) when the run has no deadlines and the statement's snapshot holds no
/// cancellation of its tree: the common case costs one index probe. A cancellation still
/// being written then (its transaction holds the root's exclusive lock) is ordered after this
/// step, which commits; the run's next claim finds it and gives up, as it would have had the
/// step finished a moment earlier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GiveUpCheck {
    /// None: bookkeeping that must happen whatever the run's deadlines and cancellations say.
    Skip,
    /// The happy path's: a cancellation or a missed happy-path or absolute deadline.
    HappyPath,
    /// The rollback path's: a missed rollback or absolute deadline.
    RollbackPath,
}

impl GiveUpCheck {
    /// As the statements take it: NULL (skip) or whether the run is rolling back.
    pub(super) fn param(self) -> Option<bool> {
        match self {
            GiveUpCheck::Skip => None,
            GiveUpCheck::HappyPath => Some(false),
            GiveUpCheck::RollbackPath => Some(true),
        }
    }
}

/// What a transition does to the run's stored cooperation context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContextWrite<'a> {
    /// Leave it (and any pending rollback context) as it is.
    Keep,
    /// Replace it (`None`: empty) and clear the pending rollback context.
    Set(Option<&'a str>),
}

/// How a failed statement failed, as far as the engine's decisions care.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The post-step check (`check_give_up`, SQLSTATE `SC001`) says the run must give up; the
    /// failure is why.
    GiveUp(Failure),
    /// The transaction was already aborted (SQLSTATE `25P02`) by an earlier statement that
    /// failed; whose fault that is depends on who ran that statement.
    Aborted(Error),
    /// A row lock taken with `NOWAIT` is held by someone else (SQLSTATE `55P03`).
    Locked(Error),
    /// A data exception (SQLSTATE class `22`): the database refused a value, such as text it
    /// cannot store. Retrying the same statement with the same data fails the same way.
    Data(Error),
    /// Anything else: the database, the connection, or data the engine cannot read.
    Other(Error),
}

/// The SQLSTATE `check_give_up` raises; its message is the failure as JSON.
const GIVE_UP: &str = "SC001";

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        let Error::Postgres(pg) = &e else {
            return Fault::Other(e);
        };
        match pg.code() {
            Some(c) if *c == postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION => {
                return Fault::Aborted(e);
            }
            Some(c) if *c == postgres::error::SqlState::LOCK_NOT_AVAILABLE => {
                return Fault::Locked(e);
            }
            Some(c) if c.code().starts_with("22") => return Fault::Data(e),
            _ => {}
        }
        let give_up = pg
            .as_db_error()
            .filter(|db| db.code().code() == GIVE_UP)
            .and_then(|db| serde_json::from_str(db.message()).ok());
        match give_up {
            Some(failure) => Fault::GiveUp(failure),
            None => Fault::Other(e),
        }
    }
}

impl Fault {
    /// The error, whatever the kind (a give-up becomes a description of it).
    pub(crate) fn into_error(self) -> Error {
        match self {
            Fault::GiveUp(failure) => Error::UnexpectedData(format!(
                "the give-up check fired outside a step: {}",
                failure.message()
            )),
            Fault::Aborted(e) | Fault::Locked(e) | Fault::Data(e) | Fault::Other(e) => e,
        }
    }
}

/// Decodes a run status.
pub(super) fn status(row: &impl Cols, column: &str) -> Result<RunStatus> {
    let s = row.str(column)?;
    RunStatus::parse(&s).ok_or_else(|| Error::UnexpectedData(format!("unknown run status {s:?}")))
}

/// Counters are `int4` columns that are never negative.
pub(super) fn u32_col(row: &impl Cols, column: &str) -> Result<u32> {
    Ok(u32::try_from(row.i32(column)?).unwrap_or(0))
}

pub(super) fn opt_u32_col(row: &impl Cols, column: &str) -> Result<Option<u32>> {
    Ok(row.opt_i32(column)?.map(|v| u32::try_from(v).unwrap_or(0)))
}

/// A duration in milliseconds, as the claim and sweep compute it.
pub(super) fn millis_col(row: &impl Cols, column: &str) -> Result<Duration> {
    Ok(Duration::from_millis(
        u64::try_from(row.i64(column)?).unwrap_or(0),
    ))
}

/// The columns the core needs, shared by every statement that hands a run to the core.
pub(super) fn run_view(row: &impl Cols) -> Result<RunView> {
    Ok(RunView {
        status: status(row, "status")?,
        step_index: u32_col(row, "step_index")?,
        step_iteration: u32_col(row, "step_iteration")?,
        instances: u32_col(row, "instances")?,
        failed_children: u32_col(row, "failed_children")?,
        cfh_iteration: opt_u32_col(row, "cfh_iteration")?,
        rollback_cursor: opt_u32_col(row, "rollback_cursor")?,
        waited_instance: opt_u32_col(row, "waited_instance")?,
        rollback_seen: row.bool("rollback_seen")?,
    })
}

/// A failure stored as JSON text.
pub(super) fn failure_col(row: &impl Cols, column: &str) -> Result<Option<Failure>> {
    row.opt_str(column)?
        .map(|t| serde_json::from_str(&t).map_err(Error::from))
        .transpose()
}

/// A failure as the statements take it.
pub(super) fn failure_json(failure: Option<&Failure>) -> Result<Option<String>> {
    failure.map(failure_text).transpose()
}

/// A failure as the JSON the engine stores. Its texts come from anywhere (error messages,
/// panics, operators), so a U+0000 in them, which `jsonb` refuses, becomes U+FFFD: a failure
/// must always be storable, or the run could never record it.
pub(super) fn failure_text(failure: &Failure) -> Result<String> {
    Ok(crate::validate::scrub_nul(serde_json::to_string(failure)?))
}

/// The one row a statement always returns.
pub(super) fn one(rows: Vec<Row>) -> Result<Row> {
    rows.into_iter()
        .next()
        .ok_or_else(|| Error::UnexpectedData("a statement returned no row".to_owned()))
}

#[cfg(test)]
mod tests;
