//! What both runtimes write to the log, through `log` with structured key-values (`handler`,
//! `step`, `run`, `root`, ...), under targets a `RUST_LOG` filter can pick:
//!
//! * `structured_cooperation::step` (debug): every step's start and end, with its duration;
//! * `structured_cooperation::run` (warn): a run that failed and rolls back, or whose
//!   rollback failed, with the cross-service failure trace; a step retried after a
//!   transient failure; (debug) a run that finished;
//! * `structured_cooperation::unhandled` (warn): messages no handler was registered for.
//!
//! Infrastructure errors, reconnects and retries of the engine's own work are at warn under
//! the module's target, startup and shutdown at info.

use std::sync::Arc;
use std::time::Instant;

use crate::core::RunStatus;
use crate::core::attempt::{RunNews, UserCall, UserOutcome};
use crate::ids::{RootId, RunId};

const STEP: &str = "structured_cooperation::step";
const RUN: &str = "structured_cooperation::run";

/// A step being logged: taken from its call before the code consumes it.
#[derive(Debug)]
pub(crate) struct StepLog {
    handler: Arc<str>,
    step: String,
    run: RunId,
    root: RootId,
    attempt: u32,
    started: Instant,
}

impl StepLog {
    /// Logs the start of `call`'s code, if debug is on for steps.
    pub(crate) fn start(call: &UserCall) -> Option<StepLog> {
        if !log::log_enabled!(target: STEP, log::Level::Debug) {
            return None;
        }
        let info = &call.info;
        let s = StepLog {
            handler: info.handler.clone(),
            step: info.step_name.clone(),
            run: info.run_id,
            root: info.root_id,
            attempt: info.attempt,
            started: Instant::now(),
        };
        log::debug!(
            target: STEP,
            handler = &*s.handler, step = s.step.as_str(), run:% = s.run, root:% = s.root,
            attempt = s.attempt;
            "{}: step {:?} of run {} started (attempt {})",
            s.handler, s.step, s.run, s.attempt
        );
        Some(s)
    }

    /// Logs how the code ended.
    pub(crate) fn end(self, outcome: &UserOutcome) {
        let how = match &outcome.result {
            Ok(Ok(_)) => "returned",
            Ok(Err(_)) => "failed",
            Err(_) => "panicked",
        };
        let elapsed = self.started.elapsed();
        log::debug!(
            target: STEP,
            handler = &*self.handler, step = self.step.as_str(), run:% = self.run,
            root:% = self.root, attempt = self.attempt, outcome = how,
            elapsed_ms = elapsed.as_secs_f64() * 1e3;
            "{}: step {:?} of run {} {how} after {elapsed:?}",
            self.handler, self.step, self.run
        );
    }
}

/// Logs what a committed transition of a run of `handler` changed.
pub(crate) fn run_news(handler: &str, news: &RunNews) {
    let (run, root) = (news.run, news.root);
    match (&news.failure, news.retry_in) {
        (Some(failure), Some(delay)) => log::warn!(
            target: RUN,
            handler = handler, run:% = run, root:% = root, retry_in_ms = delay.as_millis() as u64;
            "{handler}: run {run} (root {root}) failed transiently and runs again in \
             {delay:?}: {failure}"
        ),
        (Some(failure), None) if news.status == RunStatus::RollbackFailed => log::warn!(
            target: RUN,
            handler = handler, run:% = run, root:% = root, status = news.status.as_str();
            "{handler}: the rollback of run {run} (root {root}) failed:\n{failure}"
        ),
        (Some(failure), None) => log::warn!(
            target: RUN,
            handler = handler, run:% = run, root:% = root, status = news.status.as_str();
            "{handler}: run {run} (root {root}) failed and rolls back:\n{failure}"
        ),
        (None, _) => log::debug!(
            target: RUN,
            handler = handler, run:% = run, root:% = root, status = news.status.as_str();
            "{handler}: run {run} (root {root}) finished: {}",
            news.status
        ),
    }
}
