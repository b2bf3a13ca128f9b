//! Calling user code and turning what it left behind into the run's next state.

use std::time::Duration;

use super::io::{
    CallKind, Io, Outcome, Report, RunNews, SavepointState, Stmt, UserCall, UserOutcome,
};
use super::{Await, Code, Env, Persist, Ran, Run, done};
use crate::core::decide;
use crate::core::rollback;
use crate::core::state::{Next, step_name};
use crate::failure::Failure;
use crate::proto::{Emit, Emitted, Emitter, GiveUpCheck, ScheduleRetry};
use crate::saga::StepInfo;

impl Run {
    /// Asks for user code to be called.
    pub(super) fn call<'h>(
        &mut self,
        env: Env<'h>,
        kind: CallKind,
        code: Code,
        iteration: u32,
        successor_ran: bool,
    ) -> Io<'h> {
        let index = code.index();
        let info = StepInfo {
            handler: env.handler.name.clone(),
            run_id: self.claimed.id,
            root_id: self.claimed.root_id,
            message_id: self.claimed.message_id,
            topic: self.claimed.topic.clone(),
            step_name: step_name(env.handler.steps, index),
            step_index: index,
            iteration,
            phase: code.phase(),
            run_count: self.claimed.run_count,
            payload: self.payload.clone(),
            successor_ran,
            attempt: self.claimed.retries + 1,
            launch_context: self.claimed.launch_context.clone(),
            version: self.claimed.version.clone(),
        };
        self.wait = Await::User(code);
        Io::CallUser(UserCall {
            kind,
            info,
            context: self.context.clone(),
        })
    }

    pub(super) fn on_user<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        outcome: UserOutcome,
    ) -> Io<'h> {
        let code = match std::mem::replace(&mut self.wait, Await::Nothing) {
            Await::User(code) => code,
            other => panic!("attempt protocol violated: user code answered {other:?}"),
        };
        let savepoint = outcome.savepoint == SavepointState::Touched;
        let h = env.handler;
        let index = code.index();
        let name = step_name(h.steps, index);
        let transient = matches!(&outcome.result, Ok(Err(err)) if err.is_transient());
        let result = match outcome.result {
            Ok(Ok(next)) => Ok(next),
            Ok(Err(err)) => Err(Failure::from_step_error(err, h.source, &name)),
            Err(panic) => Err(Failure::from_panic(&*panic, h.source, &name)),
        };
        // A transient failure with attempts left: everything the code did is discarded and
        // the same code runs again after the policy's delay.
        let attempt = self.claimed.retries + 1;
        let policy = h.steps.get(index).map(|s| s.retry).unwrap_or_default();
        let retry = (transient && policy.allows_another(attempt))
            .then(|| policy.delay(self.claimed.id, attempt));
        if let Err(failure) = &result {
            let (phase, run) = (code.phase(), self.claimed.id);
            match retry {
                Some(delay) => log::info!(
                    "{}: {phase:?} of step {name:?} of run {run} failed transiently (attempt \
                     {attempt} of {}), retrying in {delay:?}: {failure}",
                    h.name,
                    policy.max_attempts()
                ),
                None => {
                    report.step_failures += 1;
                    log::warn!(
                        "{}: {phase:?} of step {name:?} of run {run} failed: {failure}",
                        h.name
                    );
                }
            }
        }
        let emissions = outcome.emissions;
        let ran = Ran {
            step: match &code {
                Code::Compensation(c) => c.pending.name.clone(),
                _ => name,
            },
            code,
            savepoint,
            wake: outcome.wake,
            context: outcome.context,
            messages: emissions
                .iter()
                .filter(|e| e.scoped)
                .map(|e| e.id)
                .collect(),
        };
        if let (Some(delay), Err(failure)) = (retry, &result) {
            report.retried += 1;
            return self.retry_after_code(env, report, ran, failure.clone(), delay);
        }
        let (next, check) = match ran.code {
            // A bad `Next` fails the step before anything of it is written.
            Code::Step(_) | Code::ChildFailures { .. } => (
                result
                    .and_then(|next| decide::target(next, index, h.steps, h.source).map(|_| next)),
                GiveUpCheck::HappyPath,
            ),
            Code::Compensation(_) => (result, GiveUpCheck::RollbackPath),
        };
        match next {
            Err(failure) => self.fail_after_code(env, report, ran, failure),
            Ok(next) if emissions.is_empty() => {
                self.after_code(env, report, ran, next, Emitted::default(), false)
            }
            Ok(next) => {
                let emitter = Emitter {
                    root_id: self.claimed.root_id,
                    run_id: self.claimed.id,
                    instance: self.claimed.view.instances,
                    handler: h.name,
                    step: ran.step.clone(),
                };
                let emit = Emit::new(
                    Some(emitter),
                    emissions,
                    env.worker,
                    env.quiet,
                    check,
                    env.strict,
                );
                self.wait = Await::Emit {
                    ran: Box::new(ran),
                    next,
                };
                Io::Run(Stmt::Emit(emit))
            }
        }
    }

    /// User code succeeded and what it emitted is written (`emitted`, with `any` telling
    /// whether it emitted anything at all): the run's next state.
    pub(super) fn after_code<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        ran: Ran,
        next: Next,
        emitted: Emitted,
        any: bool,
    ) -> Io<'h> {
        let h = env.handler;
        let view = &self.claimed.view;
        let (t, check) = match &ran.code {
            Code::Step(index) => (
                decide::after_step(view, h.steps, *index, next, emitted.children, h.source),
                GiveUpCheck::HappyPath,
            ),
            Code::ChildFailures { latest, cfh } => (
                decide::after_child_failures(
                    view,
                    h.steps,
                    latest,
                    *cfh,
                    next,
                    emitted.children,
                    h.source,
                ),
                GiveUpCheck::HappyPath,
            ),
            Code::Compensation(c) => {
                let ctx = self.ctx(env, &c.rolling);
                let t = rollback::after_compensation(
                    &ctx,
                    c.pending.clone(),
                    Ok(()),
                    any,
                    emitted.children,
                );
                (Ok(t), GiveUpCheck::RollbackPath)
            }
        };
        match t {
            Ok(mut t) => {
                if !matches!(ran.code, Code::Compensation(_)) {
                    t.wake = ran.wake;
                }
                report.woken.extend(emitted.handlers);
                let persist = Persist {
                    t,
                    check,
                    code: Some(ran),
                    blame: true,
                };
                self.persist(env, report, persist)
            }
            Err(failure) => self.fail_after_code(env, report, ran, failure),
        }
    }

    /// User code failed (or its outcome is invalid): discard what it wrote, then record it.
    pub(super) fn fail_after_code<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        ran: Ran,
        failure: Failure,
    ) -> Io<'h> {
        if ran.savepoint {
            self.wait = Await::Discard {
                ran: Box::new(ran),
                failure,
            };
            Io::RollbackToSavepoint
        } else {
            self.after_discard(env, report, ran, failure)
        }
    }

    pub(super) fn after_discard<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        mut ran: Ran,
        failure: Failure,
    ) -> Io<'h> {
        // Nothing it emitted is written.
        ran.messages.clear();
        match &ran.code {
            Code::Compensation(c) => {
                let ctx = self.ctx(env, &c.rolling);
                let t =
                    rollback::after_compensation(&ctx, c.pending.clone(), Err(failure), false, 0);
                let persist = Persist {
                    t,
                    check: GiveUpCheck::Skip,
                    code: Some(ran),
                    blame: false,
                };
                self.persist(env, report, persist)
            }
            code => {
                let step = step_name(env.handler.steps, code.index());
                self.begin_rollback(env, report, step, failure, Some(ran))
            }
        }
    }
}

impl Run {
    /// User code failed transiently and may run again: discard what it wrote, then schedule
    /// the retry.
    pub(super) fn retry_after_code<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        ran: Ran,
        failure: Failure,
        delay: Duration,
    ) -> Io<'h> {
        if ran.savepoint {
            self.wait = Await::DiscardForRetry {
                ran: Box::new(ran),
                failure,
                delay,
            };
            Io::RollbackToSavepoint
        } else {
            self.schedule_retry(env, report, &ran, &failure, delay)
        }
    }

    /// Writes the retry: the run's state is unchanged, so the same code runs when it wakes.
    pub(super) fn schedule_retry<'h>(
        &mut self,
        env: Env<'h>,
        report: &mut Report,
        ran: &Ran,
        failure: &Failure,
        delay: Duration,
    ) -> Io<'h> {
        let check = match ran.code {
            Code::Compensation(_) => GiveUpCheck::RollbackPath,
            _ => GiveUpCheck::HappyPath,
        };
        match ScheduleRetry::new(
            self.claimed.id,
            delay,
            &ran.step,
            failure,
            env.worker,
            check,
        ) {
            Ok(stmt) => {
                self.news = Some(RunNews {
                    run: self.claimed.id,
                    root: self.claimed.root_id,
                    status: self.claimed.view.status,
                    failure: Some(failure.clone().with_step(&ran.step)),
                    retry_in: Some(delay),
                });
                self.wait = Await::Retry;
                Io::Run(Stmt::ScheduleRetry(stmt))
            }
            Err(e) => done(report, Outcome::Failed(e)),
        }
    }
}
