//! Operators' requests through the tokio client: the same straight lines of statements as
//! the blocking client's (`src/client/operate.rs`), with the same rules from
//! `core::operator`.

use super::Client;
use crate::client::CLIENT_WORKER;
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
use crate::tokio::exec::run;
use crate::validate;
use crate::versions::{Migrated, RunMigration};

impl Client {
    /// Like [`crate::Client::rollback`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client, root: structured_cooperation::RootId) -> structured_cooperation::Result<()> {
    /// let requested = client.rollback(root, "support-desk", "order returned").await?;
    /// println!("{requested:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rollback(
        &self,
        scope: impl Into<Scope>,
        source: &str,
        reason: &str,
    ) -> Result<Requested> {
        let scope = scope.into();
        let sql = self.sql();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let lock = match scope {
            Scope::Root(root) => LockTargets::root(root),
            Scope::Run(run) => LockTargets::run(run),
        };
        let locked = match run(&*tx, sql, None, &lock).await.map_err(Fault::from) {
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
        let busy = run(&*tx, sql, None, &BusyAround::new(&ids)).await?;
        let committed = match operator::rollback_runs(&targets, &busy) {
            Ok(committed) => committed,
            Err(refusal) => return refused(refusal),
        };
        let cause = Failure::rollback_requested(reason, source);
        let request = RequestOperatorRollback::new(&committed, &cause)?;
        let runs = run(&*tx, sql, None, &request).await?;
        tx.commit().await?;
        Ok(Requested::Recorded { runs })
    }

    /// Like [`crate::Client::cancel`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client, root: structured_cooperation::RootId) -> structured_cooperation::Result<()> {
    /// let requested = client.cancel(root, "checkout-ui", "the customer closed the tab").await?;
    /// # let _ = requested;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel(
        &self,
        scope: impl Into<Scope>,
        source: &str,
        reason: &str,
    ) -> Result<Requested> {
        let scope = scope.into();
        let refused = |refusal: operator::Refusal| Ok(Requested::Refused { reason: refusal.0 });
        let sql = self.sql();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let found = match scope {
            Scope::Root(root) => run(&*tx, sql, None, &Message::new(root.message_id()))
                .await?
                .map(|_| (root, None, root.message_id())),
            Scope::Run(id) => run(&*tx, sql, None, &RunOrigin::new(id))
                .await?
                .map(|(root, message)| (root, Some(id), message)),
        };
        let Some((root, target, message)) = found else {
            return refused(operator::no_such_target(&scope));
        };
        run(&*tx, sql, None, &LockRoot::new(root)).await?;
        let active = run(&*tx, sql, None, &CancelScope::new(root, target)).await?;
        if let Err(refusal) = operator::cancellable(&active) {
            return refused(refusal);
        }
        let failure = Failure::cancelled(reason, source);
        let record = RecordCancel::new(root, target, message, &failure, &active)?;
        run(&*tx, sql, None, &record).await?;
        tx.commit().await?;
        Ok(Requested::Recorded {
            runs: u32::try_from(active.len()).unwrap_or(u32::MAX),
        })
    }

    /// Like [`crate::Client::register_handler`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// client.register_handler("orders", "fraud-check").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_handler(&self, topic: &str, handler: &str) -> Result<()> {
        self.register(topic, handler, "runtime").await
    }

    /// Like [`crate::Client::register_external_handler`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// client.register_external_handler("approvals", "manager").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_external_handler(&self, topic: &str, handler: &str) -> Result<()> {
        self.register(topic, handler, "external").await
    }

    /// Like [`crate::Client::migrate_runs`], but async.
    pub async fn migrate_runs(&self, migration: &RunMigration) -> Result<Migrated> {
        validate::name("handler", migration.handler())?;
        let shapes = self
            .run(&VersionShapes {
                handler: migration.handler(),
            })
            .await?;
        // Check the request before locking anything.
        migration.statement(&shapes, Vec::new())?;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let locked = run(&*tx, self.sql(), None, &migration.lock()).await?;
        let statement = migration.statement(&shapes, locked)?;
        let rows = run(&*tx, self.sql(), None, &statement).await?;
        tx.commit().await?;
        Ok(Migrated::from_rows(rows))
    }

    async fn register(&self, topic: &str, handler: &str, kind: &'static str) -> Result<()> {
        validate::name("topic", topic)?;
        validate::name("handler", handler)?;
        self.run(&Register::external(&[(topic, handler)], kind))
            .await
            .map(|_| ())
    }

    /// Like [`crate::Client::complete_external`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client, approval: structured_cooperation::MessageId) -> structured_cooperation::Result<()> {
    /// client.complete_external(approval, "manager", Ok(())).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn complete_external(
        &self,
        message: MessageId,
        handler: &str,
        result: std::result::Result<(), Failure>,
    ) -> Result<()> {
        let sql = self.sql();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let locked = run(&*tx, sql, None, &LockExternal::new(message, handler)).await?;
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
        let applied = run(&*tx, sql, None, &finish).await?;
        tx.commit().await?;
        if applied.release_pending {
            // If this fails, the run stays marked and a runtime's sweep releases it.
            run(&**conn, sql, None, &Release::new(id, &[])).await?;
        }
        Ok(())
    }
}
