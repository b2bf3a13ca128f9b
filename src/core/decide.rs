//! What a claimed run does next on its happy path, and what a step's outcome (or a
//! child-failure handler's) turns into. The rollback path is in [`super::rollback`].

use std::collections::HashMap;

use super::state::{
    EventKind, Instance, InstanceKind, Next, RunStatus, RunView, StepShape, Wake, step_name,
};
use crate::failure::Failure;

/// What the runtime must do with a run it has just claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run the user's step at `index`; `iteration` counts its consecutive earlier executions.
    RunStep { index: usize, iteration: u32 },
    /// The run must give up (cancelled, or a deadline passed): on the happy path it fails in
    /// `step` and starts its rollback; on the rollback path the rollback fails.
    GiveUp { step: String, failure: Failure },
    /// Children of the latest step instance failed: read their failures and ask
    /// [`child_failures`] what to do.
    HandleChildFailures,
    /// Every step ran and every child of the last one finished: write `COMMITTED`.
    Commit,
    /// The run is rolling back: read its instances and children and ask
    /// [`super::rollback::resume`].
    Rollback,
    /// The stored state does not fit the saga (it was changed while runs were in flight): end
    /// the run with this failure instead of guessing.
    Abandon(Failure),
    /// The run is already finished (a stale claim); do nothing.
    Nothing,
}

/// One history entry written by the run itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) kind: EventKind,
    pub(crate) step: Option<String>,
    pub(crate) next_step: Option<i32>,
    pub(crate) failure: Option<Failure>,
    /// The message the event concerns when it is not the run's own (`ROLLBACK_EMITTED`).
    pub(crate) message: Option<uuid::Uuid>,
}

impl Event {
    pub(crate) fn new(kind: EventKind, step: Option<&str>) -> Event {
        Event {
            kind,
            step: step.map(str::to_owned),
            next_step: None,
            failure: None,
            message: None,
        }
    }

    pub(crate) fn with_failure(mut self, failure: &Failure) -> Event {
        self.failure = Some(failure.clone());
        self
    }
}

/// The new state of a run and the history it appends, to be persisted atomically with the
/// step's own effects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) status: RunStatus,
    pub(crate) step_index: u32,
    pub(crate) step_iteration: u32,
    pub(crate) instances: u32,
    /// Children the run now waits for (emitted, or asked to roll back).
    pub(crate) pending_children: u32,
    pub(crate) cfh_iteration: Option<u32>,
    /// When set, becomes the run's rollback cause.
    pub(crate) failure: Option<Failure>,
    /// When set, becomes the reason the run's rollback failed.
    pub(crate) rollback_failure: Option<Failure>,
    pub(crate) rollback_cursor: Option<u32>,
    pub(crate) waited_instance: Option<u32>,
    /// A step instance that just executed, to be recorded.
    pub(crate) new_instance: Option<Instance>,
    /// Ask the committed children of this step instance to roll back, with this cause.
    pub(crate) rollback_request: Option<(u32, Failure)>,
    /// When the run may be claimed next.
    pub(crate) wake: Wake,
    pub(crate) events: Vec<Event>,
}

impl Transition {
    /// The run's state unchanged, with no events: the base every decision starts from.
    pub(crate) fn unchanged(run: &RunView) -> Transition {
        Transition {
            status: run.status,
            step_index: run.step_index,
            step_iteration: run.step_iteration,
            instances: run.instances,
            pending_children: 0,
            cfh_iteration: run.cfh_iteration,
            failure: None,
            rollback_failure: None,
            rollback_cursor: run.rollback_cursor,
            waited_instance: None,
            new_instance: None,
            rollback_request: None,
            wake: Wake::Now,
            events: Vec::new(),
        }
    }
}

/// Decides what a claimed run does. `give_up` is why the run must give up now, if it must
/// (found when it was claimed: a cancellation or a missed deadline); it wins over everything.
pub(crate) fn next_action(
    run: &RunView,
    steps: &[StepShape],
    give_up: Option<Failure>,
    source: &str,
) -> Action {
    if let Some(failure) = give_up {
        if !run.status.is_terminal() {
            let index = (run.step_index as usize).min(steps.len().saturating_sub(1));
            return Action::GiveUp {
                step: step_name(steps, index),
                failure,
            };
        }
    }
    match run.status {
        RunStatus::Active if run.failed_children > 0 => Action::HandleChildFailures,
        RunStatus::Active => {
            let index = run.step_index as usize;
            if index < steps.len() {
                Action::RunStep {
                    index,
                    iteration: run.step_iteration,
                }
            } else if index == steps.len() {
                Action::Commit
            } else {
                Action::Abandon(Failure::new(
                    "structured_cooperation::SagaMismatch",
                    format!(
                        "the run is at step index {index} but the saga has {} steps; \
                         was the saga changed while runs were in flight?",
                        steps.len()
                    ),
                    source,
                ))
            }
        }
        RunStatus::RollingBack => Action::Rollback,
        RunStatus::Committed | RunStatus::RolledBack | RunStatus::RollbackFailed => Action::Nothing,
    }
}

/// Where `next`, chosen by (or for) step `from`, leads; or why it is invalid.
pub(crate) fn target(
    next: Next,
    from: usize,
    steps: &[StepShape],
    source: &str,
) -> Result<usize, Failure> {
    match next {
        Next::Continue => Ok(from + 1),
        Next::Repeat => Ok(from),
        Next::GoTo(target) if target < steps.len() => Ok(target),
        Next::GoToStep(name) => steps.iter().position(|s| s.name == name).ok_or_else(|| {
            let known: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
            Failure::new(
                "structured_cooperation::InvalidGoTo",
                format!("goto step {name:?}: the saga has no such step (it has {known:?})"),
                source,
            )
            .with_step(steps[from].name.as_str())
        }),
        Next::GoTo(target) => Err(Failure::new(
            "structured_cooperation::InvalidGoTo",
            format!(
                "goto step index {target} is out of bounds (saga has {} steps)",
                steps.len()
            ),
            source,
        )
        .with_step(steps[from].name.as_str())),
    }
}

/// The state after user code of step `from` chose `next_index` and emitted `children`.
fn suspend(
    run: &RunView,
    steps: &[StepShape],
    from: usize,
    next_index: usize,
    children: u32,
    instance: Instance,
) -> Transition {
    let name = steps[from].name.as_str();
    let mut suspended = Event::new(EventKind::Suspended, Some(name));
    suspended.next_step = (next_index < steps.len()).then_some(next_index as i32);
    let mut events = vec![suspended];
    let finished = children == 0 && next_index == steps.len();
    if finished {
        events.push(Event::new(EventKind::Committed, Some(name)));
    }
    Transition {
        status: if finished {
            RunStatus::Committed
        } else {
            RunStatus::Active
        },
        step_index: next_index as u32,
        step_iteration: if next_index == from {
            instance.iteration + 1
        } else {
            0
        },
        instances: run.instances + 1,
        pending_children: children,
        waited_instance: (children > 0).then_some(instance.seq),
        new_instance: Some(instance),
        events,
        ..Transition::unchanged(run)
    }
}

/// Step `index` succeeded choosing `next`: the run's next state. `children` is the number of
/// child runs its emissions created (one per registered handler per emitted message). An
/// invalid `next` is the step's failure (callers check it with [`target`] before writing
/// anything the step emitted).
pub(crate) fn after_step(
    run: &RunView,
    steps: &[StepShape],
    index: usize,
    next: Next,
    children: u32,
    source: &str,
) -> Result<Transition, Failure> {
    let next_index = target(next, index, steps, source)?;
    let instance = Instance {
        seq: run.instances,
        step: index,
        iteration: run.step_iteration,
        cfh: None,
        kind: InstanceKind::Step,
    };
    let mut t = suspend(run, steps, index, next_index, children, instance);
    // A new step starts afresh: its child-failure handler has not run yet (Scoop's Q2).
    t.cfh_iteration = None;
    Ok(t)
}

/// The last step ran and its children finished: the run commits.
pub(crate) fn commit(run: &RunView, steps: &[StepShape]) -> Transition {
    let last = steps.last().map(|s| s.name.as_str());
    Transition {
        status: RunStatus::Committed,
        step_iteration: 0,
        events: vec![Event::new(EventKind::Committed, last)],
        ..Transition::unchanged(run)
    }
}

/// What the children of one step instance ended as (and which messages it emitted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChildrenOf {
    pub(crate) messages: Vec<uuid::Uuid>,
    pub(crate) committed: u32,
    pub(crate) rolled_back: Vec<Failure>,
    /// The rollback failures of the children that failed to roll back.
    pub(crate) rollback_failed: Vec<Failure>,
    /// Why those children were rolling back in the first place (their original failures).
    pub(crate) rollback_failed_causes: Vec<Failure>,
}

impl ChildrenOf {
    /// The causes of a "child rollback failed" failure in `step`: each child's rollback
    /// failure, then one "child rolled back" failure holding why the children failed in the
    /// first place (the originals of those whose rollback failed, and the failures of those
    /// that rolled back), so that neither story hides the other. Originals that only repeat
    /// `own` (the run's own rollback cause, which it asked its children to roll back for)
    /// are left out: the caller adds `own` itself.
    pub(crate) fn rollback_failed_causes(
        &self,
        step: &str,
        own: Option<&Failure>,
        source: &str,
    ) -> Vec<Failure> {
        let mut causes = self.rollback_failed.clone();
        let mut originals: Vec<Failure> = Vec::new();
        for f in self.rollback_failed_causes.iter().chain(&self.rolled_back) {
            let repeats_own = own.is_some_and(|own| f.contains(own));
            if !repeats_own && !originals.contains(f) && !causes.iter().any(|c| c.contains(f)) {
                originals.push(f.clone());
            }
        }
        if !originals.is_empty() {
            causes.push(Failure::child_rolled_back(step, originals, source));
        }
        causes
    }
}

/// What to do about failed children of the latest step instance.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChildFailurePlan {
    /// Run the step's child-failure handler.
    Run {
        /// The instance whose children failed (the run's latest).
        latest: Instance,
        index: usize,
        iteration: u32,
        cfh: u32,
        next: Next,
        failure: Failure,
    },
    /// No handler: fail the run with the children's failure (the default "rethrow").
    Rethrow { step: String, failure: Failure },
}

/// Children of `latest` (the run's latest step instance) failed: build the failure they add up
/// to and decide whether the step's handler runs. Only these children count; failures handled
/// earlier never come back (Scoop's D1 and D2).
pub(crate) fn child_failures(
    run: &RunView,
    steps: &[StepShape],
    latest: &Instance,
    children: &ChildrenOf,
    source: &str,
) -> ChildFailurePlan {
    let shape = &steps[latest.step];
    let failure = if children.rollback_failed.is_empty() {
        Failure::child_rolled_back(&shape.name, children.rolled_back.clone(), source)
    } else {
        let causes = children.rollback_failed_causes(&shape.name, None, source);
        Failure::child_rollback_failed(&shape.name, causes, None, source)
    };
    if !shape.handles_child_failures {
        return ChildFailurePlan::Rethrow {
            step: shape.name.clone(),
            failure,
        };
    }
    // What the step had chosen, reconstructed from where the run would go next.
    let next = match run.step_index as usize {
        n if n == latest.step => Next::Repeat,
        n if n == latest.step + 1 || n >= steps.len() => Next::Continue,
        n => Next::GoTo(n),
    };
    ChildFailurePlan::Run {
        latest: *latest,
        index: latest.step,
        iteration: latest.iteration,
        cfh: run.cfh_iteration.map_or(0, |k| k + 1),
        next,
        failure,
    }
}

/// Children of the run's latest step instance failed (`instances` in execution order, how
/// children ended by instance): what to do. A run without instances cannot have failed
/// children; its count is corrupt, and the run fails with `InconsistentState` instead of
/// looping on it.
pub(crate) fn plan_child_failures(
    run: &RunView,
    steps: &[StepShape],
    instances: &[Instance],
    children: &HashMap<u32, ChildrenOf>,
    source: &str,
) -> ChildFailurePlan {
    let Some(latest) = instances.last() else {
        let failure = Failure::new(
            "structured_cooperation::InconsistentState",
            "children failed but the run has no step instances",
            source,
        );
        return ChildFailurePlan::Rethrow {
            step: step_name(steps, 0),
            failure,
        };
    };
    let of_latest = children.get(&latest.seq).cloned().unwrap_or_default();
    child_failures(run, steps, latest, &of_latest, source)
}

/// The child-failure handler of the step of `latest` (invocation `cfh`) returned `next`: it is
/// relative to that step, and the children the handler emitted are awaited like a step's.
pub(crate) fn after_child_failures(
    run: &RunView,
    steps: &[StepShape],
    latest: &Instance,
    cfh: u32,
    next: Next,
    children: u32,
    source: &str,
) -> Result<Transition, Failure> {
    let next_index = target(next, latest.step, steps, source)?;
    let instance = Instance {
        seq: run.instances,
        step: latest.step,
        iteration: latest.iteration,
        cfh: Some(cfh),
        kind: InstanceKind::ChildFailures,
    };
    let mut t = suspend(run, steps, latest.step, next_index, children, instance);
    // Repeating after handled failures continues the step's own iteration count.
    t.step_iteration = if next_index == latest.step {
        latest.iteration + 1
    } else {
        0
    };
    t.cfh_iteration = Some(cfh);
    Ok(t)
}

/// The step name recorded for out-of-band completions.
pub(crate) const EXTERNAL_STEP: &str = "external";

/// An external (out-of-band) handler's run is completed through the API: it has no steps of
/// its own, so it writes `SEEN` (if it was never seen) and commits, or records the failure and
/// ends rolled back (there is nothing of its own to undo).
pub(crate) fn complete_external(
    run: &RunView,
    unseen: bool,
    failure: Option<Failure>,
) -> Transition {
    let mut events = Vec::new();
    if unseen {
        events.push(Event::new(EventKind::Seen, None));
    }
    let status = match &failure {
        None => {
            events.push(Event::new(EventKind::Committed, Some(EXTERNAL_STEP)));
            RunStatus::Committed
        }
        Some(f) => {
            events.push(Event::new(EventKind::RollingBack, Some(EXTERNAL_STEP)).with_failure(f));
            events.push(Event::new(
                EventKind::RolledBack,
                Some(&format!("Rollback of {EXTERNAL_STEP}[0,]")),
            ));
            RunStatus::RolledBack
        }
    };
    Transition {
        status,
        failure,
        events,
        ..Transition::unchanged(run)
    }
}

/// The stored state does not fit the saga: nothing can be run or undone safely, so the run
/// ends `ROLLBACK_FAILED` for an operator to look at.
pub(crate) fn abandon(run: &RunView, failure: Failure) -> Transition {
    Transition {
        status: RunStatus::RollbackFailed,
        failure: Some(failure.clone()),
        rollback_failure: Some(failure.clone()),
        events: vec![
            Event::new(EventKind::RollingBack, None).with_failure(&failure),
            Event::new(EventKind::RollbackFailed, None).with_failure(&failure),
        ],
        ..Transition::unchanged(run)
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
