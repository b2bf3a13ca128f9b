//! Operators' requests through the client: rolling back finished work, cancelling, declaring
//! handlers, and completing out-of-band handlers' runs. Each is a straight line of
//! statements; what is allowed is decided in `core::operator`.

use super::{CLIENT_WORKER, Client};
use crate::core::operator;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::MessageId;
use crate::inspect::{Requested, Scope};
use crate::proto::{
    BusyAround, CancelScope, ContextWrite, Fault, Finish, GiveUpCheck, LockExternal, LockRoot,
    LockTargets, Message, RecordCancel, Register, Release, RequestOperatorRollback, RunOrigin,
    VersionShapes,
};
use crate::runtime::exec::run;
use crate::validate;
use crate::versions::{Migrated, RunMigration};

impl Client {
    /// Asks finished work to compensate: every top-level run of a root (`Scope::Root`), or one
    /// run and its subtree (`Scope::Run`), rolls back as if it had failed after its last step:
    /// its committed steps are undone newest first, each after its children rolled back.
    /// `source` and `reason` become the failure the runs roll back for
    /// (`structured_cooperation::RollbackRequested`).
    ///
    /// Refused, with the reason, while any run of the tree (below the target, or above it) is
    /// still in progress, when there is no such root or run, or when nothing committed is left
    /// to undo. Nothing changes when it is refused.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use structured_cooperation::Requested;
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// # let root = client.launch("orders", &7)?;
    /// client.wait_for(root, Duration::from_secs(30))?;
    /// match client.rollback(root, "support-desk", "customer returned the order")? {
    ///     Requested::Recorded { runs } => println!("{runs} runs roll back"),
    ///     Requested::Refused { reason } => println!("refused: {reason}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn rollback(
        &self,
        scope: impl Into<Scope>,
        source: &str,
        reason: &str,
    ) -> Result<Requested> {
        let scope = scope.into();
        let sql = self.sql();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let lock = match scope {
            Scope::Root(root) => LockTargets::root(root),
            Scope::Run(run) => LockTargets::run(run),
        };
        let locked = match run(&mut tx, sql, None, &lock).map_err(Fault::from) {
            Ok(targets) => Some(targets),
            Err(Fault::Locked(_)) => None,
            Err(fault) => return Err(fault.into_error()),
        };
        let refused = |refusal: operator::Refusal| Ok(Requested::Refused { reason: refusal.0 });
        let targets = match operator::rollback_targets(&scope, locked) {
            Ok(targets) => targets,
            Err(refusal) => return refused(refusal),
        };
        let ids: Vec<_> = targets.iter().map(|t| t.id).collect();
        let busy = run(&mut tx, sql, None, &BusyAround::new(&ids))?;
        let committed = match operator::rollback_runs(&targets, &busy) {
            Ok(committed) => committed,
            Err(refusal) => return refused(refusal),
        };
        let cause = Failure::rollback_requested(reason, source);
        let runs = run(
            &mut tx,
            sql,
            None,
            &RequestOperatorRollback::new(&committed, &cause)?,
        )?;
        tx.commit()?;
        Ok(Requested::Recorded { runs })
    }

    /// Cancels a whole tree (`Scope::Root`) or one run and its subtree (`Scope::Run`): every
    /// run of it still on its happy path gives up at its next step boundary (a step that is
    /// running when the cancellation is recorded is discarded if it finishes after) and rolls
    /// back; sleeping runs wake to do so at once. Rollbacks already under way are not
    /// affected. The failure the runs roll back for is
    /// `structured_cooperation::Cancelled`, with `reason` and `source`.
    ///
    /// Refused, with the reason, when there is no such root or run or when nothing in its scope
    /// is on its happy path any more (a finished tree); nothing is recorded then.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let root = client.launch("orders", &serde_json::json!({ "id": 7 }))?;
    /// let requested = client.cancel(root, "checkout-ui", "the customer closed the tab")?;
    /// assert!(requested.is_recorded());
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel(&self, scope: impl Into<Scope>, source: &str, reason: &str) -> Result<Requested> {
        let scope = scope.into();
        let refused = |refusal: operator::Refusal| Ok(Requested::Refused { reason: refusal.0 });
        let sql = self.sql();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let found = match scope {
            Scope::Root(root) => run(&mut tx, sql, None, &Message::new(root.message_id()))?
                .map(|_| (root, None, root.message_id())),
            Scope::Run(id) => run(&mut tx, sql, None, &RunOrigin::new(id))?
                .map(|(root, message)| (root, Some(id), message)),
        };
        let Some((root, target, message)) = found else {
            return refused(operator::no_such_target(&scope));
        };
        run(&mut tx, sql, None, &LockRoot::new(root))?;
        let active = run(&mut tx, sql, None, &CancelScope::new(root, target))?;
        if let Err(refusal) = operator::cancellable(&active) {
            return refused(refusal);
        }
        let failure = Failure::cancelled(reason, source);
        let record = RecordCancel::new(root, target, message, &failure, &active)?;
        run(&mut tx, sql, None, &record)?;
        tx.commit()?;
        Ok(Requested::Recorded {
            runs: u32::try_from(active.len()).unwrap_or(u32::MAX),
        })
    }

    /// Registers `handler` as a listener of `topic` in the durable topology without starting
    /// a runtime, so that messages launched from now on get a run of it (which waits until a
    /// runtime serving the handler starts). Runtimes register their subscriptions themselves
    /// at start; this is for declaring the topology ahead of deployment or of a backlog.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// client.register_handler("orders", "fraud-check")?;
    /// // Orders launched from now on wait for a fraud-check run, even before it is deployed.
    /// client.launch("orders", &serde_json::json!({ "id": 7 }))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn register_handler(&self, topic: &str, handler: &str) -> Result<()> {
        self.register(topic, handler, "runtime")
    }

    /// Registers `handler` as an out-of-band listener of `topic`: messages on the topic get a
    /// run of it, which no runtime executes; parents wait for it until someone calls
    /// [`complete_external`](Self::complete_external) (a person approving, an external
    /// system answering).
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// client.register_external_handler("approvals", "manager")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn register_external_handler(&self, topic: &str, handler: &str) -> Result<()> {
        self.register(topic, handler, "external")
    }

    /// Moves the unfinished runs of one version of a saga to another, with a step mapping
    /// by name (see [`RunMigration`]): for runs whose saga changed shape in a way that the
    /// old version cannot simply be kept beside the new one to drain them. Each run moves
    /// atomically (its version, its position, the steps it executed, so that a later rollback
    /// runs the new version's compensations for them) with a `MIGRATED` history entry
    /// saying who and why, or not at all: a run rolling back, or sitting at or having
    /// executed a step that does not map, stays where it is and is listed in
    /// [`Migrated::refused`]. A run in the middle of a step is moved after that step commits.
    ///
    /// Refused with [`Error::InvalidMigration`], before anything is written, when a version
    /// was never served by a runtime (runtimes record each version's shape at start) or the
    /// mapping names a step that does not exist.
    ///
    /// ```no_run
    /// use structured_cooperation::RunMigration;
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let moved = client.migrate_runs(
    ///     &RunMigration::new("order-saga", "1", "2", "alice", "v1 is being retired")
    ///         .step("charge", "pay"),
    /// )?;
    /// println!("{} moved, {} left at version 1", moved.moved.len(), moved.refused.len());
    /// # Ok(())
    /// # }
    /// ```
    pub fn migrate_runs(&self, migration: &RunMigration) -> Result<Migrated> {
        validate::name("handler", migration.handler())?;
        let shapes = self.run(&VersionShapes {
            handler: migration.handler(),
        })?;
        // Check the request before locking anything.
        migration.statement(&shapes, Vec::new())?;
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let locked = run(&mut tx, self.sql(), None, &migration.lock())?;
        let statement = migration.statement(&shapes, locked)?;
        let rows = run(&mut tx, self.sql(), None, &statement)?;
        tx.commit()?;
        Ok(Migrated::from_rows(rows))
    }

    fn register(&self, topic: &str, handler: &str, kind: &'static str) -> Result<()> {
        validate::name("topic", topic)?;
        validate::name("handler", handler)?;
        self.run(&Register::external(&[(topic, handler)], kind))
            .map(|_| ())
    }

    /// Finishes the run of the external `handler` for `message`: `Ok(())` commits it,
    /// `Err(failure)` records the failure and rolls it back. Either way its parent is released
    /// once its other children have finished too.
    ///
    /// Refused with [`Error::NotCompletable`] when there is no such run, when its handler is
    /// not registered as external, or when the run has already finished.
    ///
    /// ```no_run
    /// use structured_cooperation::{Failure, MessageId};
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// # let (approval, rejected): (MessageId, bool) = todo!();
    /// // `approval` is the id of a message on "approvals", e.g. from `ctx.emit(...)`.
    /// let verdict = if rejected {
    ///     Err(Failure::new("approvals::Rejected", "over budget", "manager"))
    /// } else {
    ///     Ok(())
    /// };
    /// client.complete_external(approval, "manager", verdict)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn complete_external(
        &self,
        message: MessageId,
        handler: &str,
        result: std::result::Result<(), Failure>,
    ) -> Result<()> {
        let sql = self.sql();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let locked = run(&mut tx, sql, None, &LockExternal::new(message, handler))?;
        let (id, t) =
            operator::complete_external(locked.as_ref(), result.err()).map_err(|reason| {
                Error::NotCompletable {
                    handler: handler.to_owned(),
                    message,
                    reason,
                }
            })?;
        let finish = Finish::new(
            id,
            &t,
            CLIENT_WORKER,
            Vec::new(),
            GiveUpCheck::Skip,
            ContextWrite::Keep,
        )?;
        let applied = run(&mut tx, sql, None, &finish)?;
        tx.commit()?;
        if applied.release_pending {
            // If this fails, the run stays marked and a runtime's sweep releases it.
            run(&mut *conn, sql, None, &Release::new(id, &[]))?;
        }
        Ok(())
    }
}
