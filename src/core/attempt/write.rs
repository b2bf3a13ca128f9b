//! Writing a transition (with the rollback requests it carries), committing, releasing, and
//! what the answers and failures of those statements mean.

use super::io::{Io, Outcome, Output, Report, Stmt};
use super::{Await, Env, Facts, Persist, Ran, Run, done};
use crate::context::CooperationContext;
use crate::failure::Failure;
use crate::proto::{ContextWrite, Fault, Finish, Release, RequestRollback, Requested};

impl Run {
    /// Writes `p`: first asking children to roll back if it says so, then the transition.
    pub(super) fn persist<'h>(&mut self, env: Env<'h>, report: &mut Report, p: Persist) -> Io<'h> {
        let Some((instance, cause)) = &p.t.rollback_request else {
            return self.finish(env, report, p);
        };
        let context = p.code.as_ref().map_or(&self.context, |r| &r.context);
        match RequestRollback::new(
            self.claimed.id,
            *instance,
            cause,
            env.quiet,
            context.to_stored(),
        ) {
            Ok(stmt) => {
                self.wait = Await::RequestRollback(Box::new(p));
                Io::Run(Stmt::RequestRollback(stmt))
            }
            Err(e) => done(report, Outcome::Failed(e)),
        }
    }

    pub(super) fn finish<'h>(&mut self, env: Env<'h>, report: &mut Report, p: Persist) -> Io<'h> {
        // The context is written when code ran, and when a pending rollback context was
        // merged into it (even if no code ran).
        let context = match &p.code {
            Some(ran) => Some(&ran.context),
            None => self
                .claimed
                .rollback_context
                .is_some()
                .then_some(&self.context),
        };
        let stored = context.map(CooperationContext::to_stored);
        let write = match &stored {
            Some(json) => ContextWrite::Set(json.as_deref()),
            None => ContextWrite::Keep,
        };
        let messages = p
            .code
            .as_ref()
            .map(|r| r.messages.clone())
            .unwrap_or_default();
        let stmt = Finish::new(self.claimed.id, &p.t, env.worker, messages, p.check, write);
        match stmt {
            Ok(stmt) => {
                self.wait = Await::Finish {
                    terminal: p.t.status.is_terminal(),
                    blame: p.code.filter(|_| p.blame).map(Box::new),
                };
                Io::Run(Stmt::Finish(stmt))
            }
            Err(e) => done(report, Outcome::Failed(e)),
        }
    }

    pub(super) fn on_output<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        output: Output,
    ) -> Io<'h> {
        match (std::mem::replace(&mut self.wait, Await::Nothing), output) {
            (Await::Instances(then), Output::Instances(instances)) => {
                self.instances = instances;
                self.facts = Facts::InstancesRead;
                self.facts(env, report, then)
            }
            (Await::Children(then), Output::Children(children)) => {
                self.children = children;
                self.facts = Facts::Read;
                self.then(env, report, then)
            }
            (Await::Emit { ran, next }, Output::Emitted(emitted)) => {
                self.after_code(env, report, *ran, next, emitted, true)
            }
            (Await::Discard { ran, failure }, Output::Done) => {
                self.after_discard(env, report, *ran, failure)
            }
            (
                Await::RequestRollback(mut p),
                Output::Requested(Requested { children, handlers }),
            ) => {
                p.t.pending_children = children;
                report.woken.extend(handlers);
                self.finish(env, report, *p)
            }
            (Await::Finish { terminal, .. }, Output::Applied(applied)) => {
                self.wait = Await::Commit { applied, terminal };
                Io::Commit
            }
            (Await::Commit { applied, terminal }, Output::Done) => {
                report.committed = true;
                report.root_finished = applied.is_root && terminal;
                if applied.release_pending {
                    self.wait = Await::Release;
                    Io::RunAutocommit(Stmt::Release(Release::new(self.claimed.id, env.quiet)))
                } else {
                    done(report, Outcome::Ran)
                }
            }
            (Await::Release, Output::Released(parent)) => {
                report.woken.extend(parent);
                done(report, Outcome::Ran)
            }
            (Await::Rollback, Output::Done) => done(report, Outcome::Ran),
            (wait, output) => {
                panic!("attempt protocol violated: got {output:?} while waiting for {wait:?}")
            }
        }
    }

    pub(super) fn on_fault<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        fault: Fault,
    ) -> Io<'h> {
        match std::mem::replace(&mut self.wait, Await::Nothing) {
            Await::Emit { ran, .. } => self.fault_after_code(env, report, Some(*ran), fault),
            Await::Finish { blame, .. } => {
                self.fault_after_code(env, report, blame.map(|r| *r), fault)
            }
            // The commit is durable: a sweep performs the release.
            Await::Release => {
                report.release_error = Some((self.claimed.id, fault.into_error()));
                done(report, Outcome::Ran)
            }
            _ => done(report, Outcome::Failed(fault.into_error())),
        }
    }

    /// A statement writing the results of user code (`ran`, when it is to blame for an
    /// aborted transaction) failed.
    pub(super) fn fault_after_code<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        ran: Option<Ran>,
        fault: Fault,
    ) -> Io<'h> {
        match (fault, ran) {
            // The run was cancelled (or missed a deadline) while its step ran: the step's
            // transaction is discarded, and the run, claimed again, gives up.
            (Fault::GiveUp(_), _) => {
                report.gave_up_after_step = true;
                self.wait = Await::Rollback;
                Io::Rollback
            }
            // The code ignored a failed statement of its own and returned success: that is
            // its failure, not the engine's.
            (Fault::Aborted(e), Some(ran)) if ran.savepoint => {
                report.step_failures += 1;
                let failure = Failure::new(
                    "structured_cooperation::TransactionAborted",
                    format!(
                        "the step returned successfully but a statement it ran had failed, \
                         leaving its transaction aborted ({e}); return the statement's error, \
                         or run it inside a nested savepoint"
                    ),
                    env.handler.source,
                )
                .with_step(ran.step.as_str());
                self.fail_after_code(env, report, ran, failure)
            }
            (fault, _) => done(report, Outcome::Failed(fault.into_error())),
        }
    }
}
