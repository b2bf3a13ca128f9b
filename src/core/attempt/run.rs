//! A claimed, due run: what it is waiting for, and how it goes from the claim to the
//! decision and into the rollback path. User code is in `code.rs`, writing in `write.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use super::io::{CallKind, Io, Outcome, Report, Stmt};
use super::{Await, Code, Compensating, Env, Facts, Persist, Ran, Rolling, Run, Then, done};
use crate::context::CooperationContext;
use crate::core::decide::{self, Action, ChildFailurePlan};
use crate::core::rollback::{self, Advance};
use crate::core::state::RunStatus;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::proto::{Children, ClaimedRun, GiveUpCheck, Instances};
use crate::saga::ChildFailures;

impl Run {
    pub(super) fn new(claimed: ClaimedRun) -> Run {
        Run {
            payload: Arc::from(claimed.payload.as_str()),
            claimed,
            context: CooperationContext::default(),
            facts: Facts::Unread,
            instances: Vec::new(),
            children: HashMap::new(),
            wait: Await::Announce,
            next_scheduled: false,
            news: None,
        }
    }

    pub(super) fn on_announced<'h>(&mut self, env: Env<'h>, report: &mut Report) -> Io<'h> {
        match std::mem::replace(&mut self.wait, Await::Nothing) {
            Await::Announce => {}
            other => panic!("attempt protocol violated: announced while waiting for {other:?}"),
        }
        // A parent's rollback request carried its context: it wins over the run's own.
        let stored = |text: &Option<String>| CooperationContext::from_stored(text.as_deref());
        self.context = match stored(&self.claimed.context)
            .and_then(|own| Ok(own.merged(&stored(&self.claimed.rollback_context)?)))
        {
            Ok(context) => context,
            Err(e) => return done(report, Outcome::Failed(e)),
        };
        let h = env.handler;
        let view = &self.claimed.view;
        // A run whose data the database refused fails with that, as it would give up; so
        // does an occurrence of a stopped chain that has not started.
        let claimed = &self.claimed;
        let give_up = (claimed.poison.clone())
            .or_else(|| claimed.chain_stop.clone())
            .or_else(|| claimed.give_up.clone());
        match decide::next_action(view, h.steps, give_up, h.source) {
            Action::RunStep { index, iteration } => {
                self.call(env, CallKind::Step, Code::Step(index), iteration, false)
            }
            Action::GiveUp { step, failure } => {
                log::info!(
                    "{}: run {} gives up: {}",
                    h.name,
                    self.claimed.id,
                    failure.message()
                );
                let then = if view.status == RunStatus::RollingBack {
                    Then::GiveUpRollingBack(failure)
                } else {
                    Then::Fail {
                        step,
                        failure,
                        ran: None,
                    }
                };
                self.facts(env, report, then)
            }
            Action::HandleChildFailures => self.facts(env, report, Then::ChildFailures),
            Action::Rollback => self.facts(env, report, Then::Rollback),
            Action::Commit => {
                let t = decide::commit(view, h.steps);
                self.persist(env, report, Persist::bookkeeping(t, GiveUpCheck::HappyPath))
            }
            Action::Abandon(failure) => {
                log::error!("{}: run {}: {failure}", h.name, self.claimed.id);
                let t = decide::abandon(view, failure);
                self.persist(env, report, Persist::bookkeeping(t, GiveUpCheck::Skip))
            }
            Action::Nothing => {
                self.wait = Await::Rollback;
                Io::Rollback
            }
        }
    }

    /// Reads the run's instances and children (if not read yet), then goes on with `then`.
    pub(super) fn facts<'h>(&mut self, env: Env<'h>, report: &mut Report, then: Then) -> Io<'h> {
        match self.facts {
            Facts::Unread => {
                self.wait = Await::Instances(then);
                Io::Run(Stmt::Instances(Instances::new(self.claimed.id)))
            }
            Facts::InstancesRead => {
                self.wait = Await::Children(then);
                Io::Run(Stmt::Children(Children::new(self.claimed.id)))
            }
            Facts::Read => self.then(env, report, then),
        }
    }

    pub(super) fn then<'h>(&mut self, env: Env<'h>, report: &mut Report, then: Then) -> Io<'h> {
        let h = env.handler;
        match then {
            Then::ChildFailures => {
                let plan = decide::plan_child_failures(
                    &self.claimed.view,
                    h.steps,
                    &self.instances,
                    &self.children,
                    h.source,
                );
                match plan {
                    ChildFailurePlan::Rethrow { step, failure } => {
                        self.begin_rollback(env, report, step, failure, None)
                    }
                    ChildFailurePlan::Run {
                        latest,
                        iteration,
                        cfh,
                        next,
                        failure,
                        ..
                    } => {
                        let failures = ChildFailures::new(failure, next, cfh);
                        let code = Code::ChildFailures { latest, cfh };
                        self.call(
                            env,
                            CallKind::ChildFailures(failures),
                            code,
                            iteration,
                            false,
                        )
                    }
                }
            }
            Then::Rollback => {
                let rolling = match self.rolling(env) {
                    Ok(rolling) => rolling,
                    Err(e) => return done(report, Outcome::Failed(e)),
                };
                match rollback::resume(&self.ctx(env, &rolling)) {
                    Advance::Done(t) => {
                        self.persist(env, report, Persist::bookkeeping(*t, GiveUpCheck::Skip))
                    }
                    Advance::Compensate(pending) => {
                        let successor_ran =
                            rollback::successor_ran(&self.instances, &pending.instance);
                        let iteration = pending.instance.iteration;
                        let kind = CallKind::Compensation(rolling.cause.clone());
                        let code = Code::Compensation(Box::new(Compensating { pending, rolling }));
                        self.call(env, kind, code, iteration, successor_ran)
                    }
                }
            }
            Then::GiveUpRollingBack(failure) => {
                let rolling = match self.rolling(env) {
                    Ok(rolling) => rolling,
                    Err(e) => return done(report, Outcome::Failed(e)),
                };
                let t = rollback::give_up(&self.ctx(env, &rolling), failure);
                self.persist(env, report, Persist::bookkeeping(t, GiveUpCheck::Skip))
            }
            Then::Fail { step, failure, ran } => {
                self.begin_rollback(env, report, step, failure, ran.map(|r| *r))
            }
        }
    }

    /// The rollback the run is already on (its stored cause).
    pub(super) fn rolling(&self, env: Env<'_>) -> Result<Rolling> {
        let stored = self
            .claimed
            .failure
            .as_deref()
            .map(serde_json::from_str::<Failure>)
            .transpose()
            .map_err(Error::from)?;
        Ok(Rolling {
            plan: rollback::plan(&self.instances, env.handler.steps),
            cause: rollback::cause_or_unknown(stored, env.handler.source),
        })
    }

    pub(super) fn ctx<'a>(&'a self, env: Env<'a>, rolling: &'a Rolling) -> rollback::Ctx<'a> {
        rollback::Ctx {
            run: &self.claimed.view,
            steps: env.handler.steps,
            plan: &rolling.plan,
            cause: &rolling.cause,
            children: &self.children,
            source: env.handler.source,
        }
    }

    /// The run failed in `step`: record the failure and start its rollback, as far as it
    /// goes without user code. `ran` is the failing code's, if code ran: the rollback starts
    /// from the context it left.
    pub(super) fn begin_rollback<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        step: String,
        failure: Failure,
        ran: Option<Ran>,
    ) -> Io<'h> {
        if self.facts != Facts::Read {
            let ran = ran.map(Box::new);
            return self.facts(env, report, Then::Fail { step, failure, ran });
        }
        let rolling = Rolling {
            plan: rollback::plan(&self.instances, env.handler.steps),
            cause: failure,
        };
        let t = rollback::begin(&self.ctx(env, &rolling), &step);
        let persist = Persist {
            t,
            check: GiveUpCheck::Skip,
            code: ran,
            blame: false,
        };
        self.persist(env, report, persist)
    }
}
