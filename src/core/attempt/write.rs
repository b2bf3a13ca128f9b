//! Writing a transition (with the rollback requests it carries), committing, releasing, and
//! what the answers and failures of those statements mean.

use super::io::{ConcludeError, Io, Outcome, Output, Report, RunNews, Stmt, Unhandled};
use super::{Await, Env, Facts, Persist, Ran, Run, done};
use crate::context::CooperationContext;
use crate::core::RunStatus;
use crate::error::Error;
use crate::failure::Failure;
use crate::ids::new_uuid;
use crate::proto::{
    Applied, Conclude, ContextWrite, Emit, Fault, Finish, GiveUpCheck, Poison, Postpone, Release,
    RequestRollback, Requested,
};
use crate::saga::{Emission, Occurrence};
use crate::schedule::Schedule;

impl Run {
    /// Writes `p`: first the next occurrence of the run's chain if `p` ends the run, then
    /// asking children to roll back if it says so, then the transition.
    pub(super) fn persist<'h>(&mut self, env: Env<'h>, report: &mut Report, p: Persist) -> Io<'h> {
        if p.t.status.is_terminal() && !self.next_scheduled {
            self.next_scheduled = true;
            if let Some(next) = self.next_occurrence(env) {
                let emit = Emit::new(
                    None,
                    vec![next],
                    env.worker,
                    env.quiet,
                    GiveUpCheck::Skip,
                    env.strict,
                );
                self.wait = Await::ScheduleNext(Box::new(p));
                return Io::Run(Stmt::Emit(emit));
            }
        }
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

    /// The occurrence of the run's chain that follows this one, if the run is a top-level
    /// run of an occurrence: same topic, payload and launch context, at the schedule's next
    /// time after this occurrence's time and now. Written in the run's last transaction, so
    /// occurrences never overlap and the chain goes on whichever way the run ended.
    fn next_occurrence(&self, env: Env<'_>) -> Option<Emission> {
        let claimed = &self.claimed;
        let this = claimed.occurrence.as_ref().filter(|_| claimed.top_level)?;
        let at = Schedule::parse(&this.schedule).and_then(|s| s.next(this.at, env.now));
        match at {
            Ok(at) => Some(Emission {
                id: new_uuid(),
                topic: claimed.topic.clone(),
                payload: claimed.payload.clone(),
                scoped: false,
                deadlines: None,
                run_count: claimed.run_count + 1,
                context: claimed.launch_context.clone(),
                key: None,
                occurrence: Some(Occurrence {
                    chain: this.chain.clone(),
                    schedule: this.schedule.clone(),
                    at,
                }),
                // The chain's own topic: a missing handler is marked, never refused (that
                // would end the chain).
                strict: Some(false),
            }),
            Err(e) => {
                log::error!(
                    "{}: chain {:?} ends after occurrence {}: {e}",
                    env.handler.name,
                    this.chain,
                    claimed.run_count
                );
                None
            }
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
        let status = self.claimed.view.status;
        let failure = match (&p.t.rollback_failure, &p.t.failure) {
            (Some(f), _) => Some(f.clone()),
            // Only when the run enters its rollback path, not on every step of it.
            (None, Some(f)) if status == RunStatus::Active => Some(f.clone()),
            _ => None,
        };
        let noteworthy = failure.is_some() || p.t.status.is_terminal();
        self.news = noteworthy.then_some(RunNews {
            run: self.claimed.id,
            root: self.claimed.root_id,
            status: p.t.status,
            failure,
            retry_in: None,
        });
        let stmt = Finish::new(self.claimed.id, &p.t, env.worker, messages, p.check, write).map(
            |mut f| {
                // The claim says which version drives the run (the newest served, for a run
                // that has none yet): a run without one is pinned to it by this transition.
                let versions = env.handler.versions;
                f.version = match self.claimed.version.as_deref() {
                    Some(v) => versions.iter().find(|s| s.version == v),
                    None => versions.first(),
                }
                .map(|s| s.version.as_str());
                f
            },
        );
        let terminal = p.t.status.is_terminal();
        let blame = p.code.filter(|_| p.blame).map(Box::new);
        match stmt {
            Ok(finish) if env.conclude && finish.sendable() => {
                // Only a child that finishes can have a parent to release (and the release
                // does nothing unless the transition marked the run).
                let release = (terminal && !self.claimed.top_level)
                    .then(|| Release::new(self.claimed.id, env.quiet));
                self.wait = Await::Conclude {
                    terminal,
                    blame,
                    release: release.is_some(),
                };
                Io::Conclude(Conclude {
                    finish,
                    release,
                    claim: env.chain.then(|| super::claim_of(env.handler, env.worker)),
                    xact: self.claimed.xact,
                })
            }
            Ok(stmt) => {
                self.wait = Await::Finish { terminal, blame };
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
            (Await::Emit { ran, next }, Output::Emitted(mut emitted)) => {
                if emitted.refused {
                    let failure = unhandled_failure(&emitted.unhandled, env.handler.source)
                        .with_step(&ran.step);
                    return self.fail_after_code(env, report, *ran, failure);
                }
                let topics = std::mem::take(&mut emitted.unhandled);
                self.note_unhandled(report, topics, Some(&ran.step));
                self.after_code(env, report, *ran, next, emitted, true)
            }
            (Await::Discard { ran, failure }, Output::Done) => {
                self.after_discard(env, report, *ran, failure)
            }
            (Await::ScheduleNext(p), Output::Emitted(emitted)) => {
                report.woken.extend(emitted.handlers);
                self.note_unhandled(report, emitted.unhandled, None);
                self.persist(env, report, *p)
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
                self.commit(env, applied, terminal)
            }
            (Await::Conclude { terminal, .. }, Output::Concluded(c)) => {
                // A release the conclusion should have carried (it carries one for every
                // child that finishes, so this does not happen) is left to a sweep: the next
                // claim's transaction may be open, and the release must not run inside it.
                if c.applied.release_pending && c.released.is_none() {
                    let missed = Error::UnexpectedData(
                        "a finished child's conclusion carried no release".to_owned(),
                    );
                    report.release_error = Some((self.claimed.id, missed));
                }
                report.next_claim = c.claimed;
                report.woken.extend(c.released.flatten());
                let applied = Applied {
                    release_pending: false,
                    ..c.applied
                };
                self.committed(env, report, applied, terminal)
            }
            (Await::Commit { applied, terminal }, Output::Claimed(next)) => {
                report.next_claim = Some(next);
                self.committed(env, report, applied, terminal)
            }
            (Await::Commit { applied, terminal }, Output::Done) => {
                self.committed(env, report, applied, terminal)
            }
            (Await::Release, Output::Released(parent)) => {
                report.woken.extend(parent);
                done(report, Outcome::Ran)
            }
            (Await::Rollback, Output::Done) => done(report, Outcome::Ran),
            (
                Await::DiscardForRetry {
                    ran,
                    failure,
                    delay,
                },
                Output::Done,
            ) => self.schedule_retry(env, report, &ran, &failure, delay),
            (Await::Retry, Output::Retried(_)) => {
                // Nothing changed but the timer: no parent to release, no root finished.
                let applied = Applied {
                    is_root: false,
                    release_pending: false,
                };
                self.commit(env, applied, false)
            }
            (Await::Recover { poison, error }, Output::Done) => {
                self.record_fault(env, report, poison, error)
            }
            (Await::Recorded { error }, Output::Poisoned(marked)) => {
                let Some(first) = marked else {
                    return done(report, Outcome::Failed(error));
                };
                // Counted once per run, by the attempt that marked it first.
                report.poisoned = first;
                log::error!(
                    "{}: run {} fails: the database refused its data ({error})",
                    env.handler.name,
                    self.claimed.id
                );
                // It is due at once: claiming it next fails it.
                done(report, Outcome::Ran)
            }
            (Await::Recorded { error }, Output::Postponed(postponed)) => {
                report.postponed = postponed.map(|p| (self.claimed.id, p));
                done(report, Outcome::Failed(error))
            }
            (wait, output) => {
                panic!("attempt protocol violated: got {output:?} while waiting for {wait:?}")
            }
        }
    }

    /// Commits what was written; with the handler's next claim in the same round trip when
    /// the driver allows it and nothing (a release) must follow the commit on its own.
    fn commit<'h>(&mut self, env: Env<'h>, applied: Applied, terminal: bool) -> Io<'h> {
        self.wait = Await::Commit { applied, terminal };
        if env.chain && !applied.release_pending {
            Io::CommitClaim(super::claim_of(env.handler, env.worker))
        } else {
            Io::Commit
        }
    }

    /// The commit happened: release the parent if the run finished under one, or done.
    fn committed<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        applied: Applied,
        terminal: bool,
    ) -> Io<'h> {
        report.committed = true;
        report.news = self.news.take();
        report.root_finished = applied.is_root && terminal;
        if applied.release_pending {
            self.wait = Await::Release;
            Io::RunAutocommit(Stmt::Release(Release::new(self.claimed.id, env.quiet)))
        } else {
            done(report, Outcome::Ran)
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
            Await::Finish { blame, .. } | Await::Conclude { blame, .. } => {
                self.fault_after_code(env, report, blame.map(|r| *r), fault)
            }
            Await::Retry => self.fault_after_code(env, report, None, fault),
            // What the code wrote could not even be discarded: the connection is gone, and the
            // code's error most likely came from that. The run is retried as after any
            // infrastructure error, so it does not count as the code's failure.
            Await::Discard { .. } => {
                report.step_failures = report.step_failures.saturating_sub(1);
                self.recover(env, None, fault)
            }
            // The commit is durable: a sweep performs the release.
            Await::Release => {
                report.release_error = Some((self.claimed.id, fault.into_error()));
                done(report, Outcome::Ran)
            }
            // Whether the commit happened is unknown; the run is retried from whatever the
            // database holds, without recording anything on it.
            Await::Commit { .. } | Await::Rollback => {
                done(report, Outcome::Failed(fault.into_error()))
            }
            // The recovery failed too (the connection is gone): the scheduler backs off, and
            // a later attempt at the handler records the failure on the run.
            Await::Recover { error, .. } | Await::Recorded { error } => {
                let text = crate::error::with_sources(&error);
                report.unrecorded.push((self.claimed.id, text));
                done(report, Outcome::Failed(error))
            }
            _ => self.recover(env, None, fault),
        }
    }

    /// An [`Io::Conclude`] failed after its commit happened, or when whether it happened is
    /// unknown.
    pub(super) fn on_conclude_error<'h>(
        &mut self,
        report: &mut Report,
        failure: ConcludeError,
    ) -> Io<'h> {
        let wait = std::mem::replace(&mut self.wait, Await::Nothing);
        let Await::Conclude {
            terminal, release, ..
        } = wait
        else {
            panic!("attempt protocol violated: a conclusion failed while waiting for {wait:?}")
        };
        match failure {
            ConcludeError::Committed(e) => {
                report.committed = true;
                report.news = self.news.take();
                report.root_finished = self.claimed.top_level && terminal;
                if release {
                    // The release may not have happened: a sweep performs it (at most once).
                    report.release_error = Some((self.claimed.id, e));
                    done(report, Outcome::Ran)
                } else {
                    done(report, Outcome::Failed(e))
                }
            }
            // As after a failed commit: the run is retried from whatever the database holds.
            ConcludeError::Unknown(e) | ConcludeError::NotCommitted(e) => {
                done(report, Outcome::Failed(e))
            }
        }
    }

    /// Reports messages this run wrote on topics nobody handles (for the log and counters).
    fn note_unhandled(&self, report: &mut Report, topics: Vec<String>, step: Option<&str>) {
        let run = self.claimed.id;
        report
            .unhandled
            .extend(topics.into_iter().map(|topic| Unhandled {
                topic,
                run,
                step: step.map(str::to_owned),
            }));
    }

    /// A statement failed on a claimed run: end the transaction, then record the fault on the
    /// run. A data exception in the engine's statements is the run's own data (`step` is the
    /// code whose results they were writing, if any), so the run is marked to fail with it;
    /// anything else pushes the run back by the retry backoff.
    fn recover<'h>(&mut self, env: Env<'h>, step: Option<&str>, fault: Fault) -> Io<'h> {
        let poison = match &fault {
            Fault::Data(e) => {
                let failure = Failure::new(
                    "structured_cooperation::DataRejected",
                    format!(
                        "the database refused the run's data: {}",
                        crate::error::with_sources(e)
                    ),
                    env.handler.source,
                );
                Some(match step {
                    Some(step) => failure.with_step(step),
                    None => failure,
                })
            }
            _ => None,
        };
        self.wait = Await::Recover {
            poison,
            error: fault.into_error(),
        };
        Io::Rollback
    }

    fn record_fault<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        poison: Option<Failure>,
        error: Error,
    ) -> Io<'h> {
        let stmt = match poison {
            Some(failure) => match Poison::new(self.claimed.id, &failure) {
                Ok(stmt) => Stmt::Poison(stmt),
                Err(_) => return done(report, Outcome::Failed(error)),
            },
            None => Stmt::Postpone(Postpone::new(
                self.claimed.id,
                &crate::error::with_sources(&error),
                env.backoff.base,
                env.backoff.max,
            )),
        };
        self.wait = Await::Recorded { error };
        Io::RunAutocommit(stmt)
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
            (fault, ran) => self.recover(env, ran.as_ref().map(|r| r.step.as_str()), fault),
        }
    }
}

/// A strict emission's topic had no handler: the step fails with this (nothing of it kept).
fn unhandled_failure(topics: &[String], source: &str) -> Failure {
    Failure::new(
        "structured_cooperation::UnhandledTopic",
        format!(
            "no handler is registered for topic {:?}, and the emission is strict",
            topics.first().map_or("", String::as_str)
        ),
        source,
    )
}
