//! What a claimed run does next, and what a step's outcome turns into.

use super::state::{EventKind, Next, RunStatus, RunView};
use crate::failure::Failure;

/// Prefix of the synthetic step names written while rolling back (Scoop's vocabulary).
pub(crate) const ROLLBACK_PREFIX: &str = "Rollback of ";

/// What the runtime must do with a run it has just claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run the user's step at `index`; `iteration` counts its consecutive earlier executions.
    RunStep { index: usize, iteration: u32 },
    /// Every step ran and every child of the last one finished: write `COMMITTED`.
    Commit,
    /// Nothing is left to undo on the rollback path: write `ROLLED_BACK`.
    FinishRollback,
    /// The stored state does not fit the saga (it was changed while runs were in flight): end
    /// the run with this failure instead of guessing.
    Abandon(Failure),
}

/// One history entry written by the run itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) kind: EventKind,
    pub(crate) step: Option<String>,
    pub(crate) next_step: Option<i32>,
    pub(crate) failure: Option<Failure>,
}

impl Event {
    fn new(kind: EventKind, step: &str) -> Event {
        Event {
            kind,
            step: Some(step.to_owned()),
            next_step: None,
            failure: None,
        }
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
    /// Children emitted by the step instance that just ran; the run waits for them.
    pub(crate) pending_children: u32,
    pub(crate) failure: Option<Failure>,
    pub(crate) events: Vec<Event>,
}

/// The outcome of user code for one step.
#[derive(Debug)]
pub(crate) enum StepOutcome {
    Completed(Next),
    Failed(Failure),
}

/// Decides what a claimed run does. `steps` are the saga's step names in order.
pub(crate) fn next_action(run: &RunView, steps: &[String], source: &str) -> Action {
    match run.status {
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
        RunStatus::RollingBack => Action::FinishRollback,
        // Terminal runs are never claimable; treat a stale read as "nothing to do".
        RunStatus::Committed | RunStatus::RolledBack | RunStatus::RollbackFailed => {
            Action::FinishRollback
        }
    }
}

/// Turns the outcome of step `index` into the run's next state. `children` is the number of
/// child runs its emissions created (one per registered handler per emitted message).
pub(crate) fn after_step(
    run: &RunView,
    steps: &[String],
    index: usize,
    outcome: StepOutcome,
    children: u32,
    source: &str,
) -> Transition {
    let step = &steps[index];
    let next = match outcome {
        StepOutcome::Failed(failure) => return failed(run, step, failure),
        StepOutcome::Completed(next) => next,
    };
    let next_index = match next {
        Next::Continue => index + 1,
        Next::Repeat => index,
        Next::GoTo(target) if target < steps.len() => target,
        Next::GoTo(target) => {
            let failure = Failure::new(
                "structured_cooperation::InvalidGoTo",
                format!(
                    "goto step index {target} is out of bounds (saga has {} steps)",
                    steps.len()
                ),
                source,
            )
            .with_step(step.as_str());
            return failed(run, step, failure);
        }
    };
    let step_iteration = if next_index == index {
        run.step_iteration + 1
    } else {
        0
    };
    let mut suspended = Event::new(EventKind::Suspended, step);
    suspended.next_step = (next_index < steps.len()).then_some(next_index as i32);
    let mut events = vec![suspended];
    let finished = children == 0 && next_index == steps.len();
    if finished {
        events.push(Event::new(EventKind::Committed, step));
    }
    Transition {
        status: if finished {
            RunStatus::Committed
        } else {
            RunStatus::Active
        },
        step_index: next_index as u32,
        step_iteration,
        instances: run.instances + 1,
        pending_children: children,
        failure: None,
        events,
    }
}

/// The last step ran and its children finished: the run commits.
pub(crate) fn commit(run: &RunView, steps: &[String]) -> Transition {
    let last = steps.last().map(String::as_str).unwrap_or_default();
    Transition {
        status: RunStatus::Committed,
        step_index: run.step_index,
        step_iteration: 0,
        instances: run.instances,
        pending_children: 0,
        failure: None,
        events: vec![Event::new(EventKind::Committed, last)],
    }
}

/// The run ends without running user code (rollback path with nothing left, or abandoned).
pub(crate) fn finish_rollback(
    run: &RunView,
    steps: &[String],
    failure: Option<Failure>,
) -> Transition {
    let step = steps
        .get(run.step_index as usize)
        .or(steps.last())
        .map(String::as_str)
        .unwrap_or_default();
    match failure {
        Some(failure) => failed(run, step, failure),
        None => Transition {
            status: RunStatus::RolledBack,
            step_index: run.step_index,
            step_iteration: 0,
            instances: run.instances,
            pending_children: 0,
            failure: None,
            events: vec![Event::new(EventKind::RolledBack, &rollback_name(step, 0))],
        },
    }
}

/// An external (out-of-band) handler's run is completed through the API: it has no steps of
/// its own, so it writes `SEEN` (if it was never seen) and commits, or records the failure.
pub(crate) fn complete_external(
    run: &RunView,
    unseen: bool,
    failure: Option<Failure>,
) -> Transition {
    let mut events = Vec::new();
    if unseen {
        events.push(Event {
            kind: EventKind::Seen,
            step: None,
            next_step: None,
            failure: None,
        });
    }
    let mut t = match failure {
        Some(failure) => failed(run, EXTERNAL_STEP, failure),
        None => Transition {
            status: RunStatus::Committed,
            step_index: run.step_index,
            step_iteration: 0,
            instances: run.instances,
            pending_children: 0,
            failure: None,
            events: vec![Event::new(EventKind::Committed, EXTERNAL_STEP)],
        },
    };
    events.append(&mut t.events);
    t.events = events;
    t
}

/// The step name recorded for out-of-band completions.
pub(crate) const EXTERNAL_STEP: &str = "external";

/// A failed step: its effects are discarded by the caller, the run records the failure and,
/// with no compensations to run yet, finishes its rollback in the same transaction.
fn failed(run: &RunView, step: &str, failure: Failure) -> Transition {
    let mut rolling_back = Event::new(EventKind::RollingBack, step);
    rolling_back.failure = Some(failure.clone());
    Transition {
        status: RunStatus::RolledBack,
        step_index: run.step_index,
        step_iteration: run.step_iteration,
        instances: run.instances,
        pending_children: 0,
        failure: Some(failure),
        events: vec![
            rolling_back,
            Event::new(
                EventKind::RolledBack,
                &rollback_name(step, run.step_iteration),
            ),
        ],
    }
}

/// Scoop's synthetic name for undoing one step instance: `Rollback of <step>[<iteration>,]`.
pub(crate) fn rollback_name(step: &str, iteration: u32) -> String {
    format!("{ROLLBACK_PREFIX}{step}[{iteration},]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    fn run(step_index: u32) -> RunView {
        RunView {
            status: RunStatus::Active,
            step_index,
            step_iteration: 0,
            instances: step_index,
            failed_children: 0,
        }
    }

    fn kinds(t: &Transition) -> Vec<(EventKind, Option<&str>)> {
        t.events
            .iter()
            .map(|e| (e.kind, e.step.as_deref()))
            .collect()
    }

    #[test]
    fn a_fresh_run_starts_with_its_first_step() {
        assert_eq!(
            next_action(&run(0), &steps(2), "h[1]"),
            Action::RunStep {
                index: 0,
                iteration: 0
            }
        );
    }

    #[test]
    fn a_step_with_children_waits_for_them() {
        let t = after_step(
            &run(0),
            &steps(2),
            0,
            StepOutcome::Completed(Next::Continue),
            3,
            "h[1]",
        );
        assert_eq!(t.status, RunStatus::Active);
        assert_eq!(t.step_index, 1);
        assert_eq!(t.pending_children, 3);
        assert_eq!(t.instances, 1);
        assert_eq!(kinds(&t), vec![(EventKind::Suspended, Some("0"))]);
        assert_eq!(t.events[0].next_step, Some(1));
    }

    #[test]
    fn a_step_without_children_can_continue_at_once() {
        let t = after_step(
            &run(0),
            &steps(2),
            0,
            StepOutcome::Completed(Next::Continue),
            0,
            "h[1]",
        );
        assert_eq!(
            (t.status, t.pending_children, t.step_index),
            (RunStatus::Active, 0, 1)
        );
    }

    #[test]
    fn the_last_step_without_children_commits_in_the_same_transaction() {
        let t = after_step(
            &run(1),
            &steps(2),
            1,
            StepOutcome::Completed(Next::Continue),
            0,
            "h[1]",
        );
        assert_eq!(t.status, RunStatus::Committed);
        assert_eq!(
            kinds(&t),
            vec![
                (EventKind::Suspended, Some("1")),
                (EventKind::Committed, Some("1"))
            ]
        );
        assert_eq!(t.events[0].next_step, None);
    }

    #[test]
    fn the_last_step_with_children_commits_after_them() {
        let t = after_step(
            &run(1),
            &steps(2),
            1,
            StepOutcome::Completed(Next::Continue),
            2,
            "h[1]",
        );
        assert_eq!(t.status, RunStatus::Active);
        assert_eq!(t.step_index, 2);
        let later = RunView {
            step_index: 2,
            ..run(2)
        };
        assert_eq!(next_action(&later, &steps(2), "h[1]"), Action::Commit);
        let c = commit(&later, &steps(2));
        assert_eq!(c.status, RunStatus::Committed);
        assert_eq!(kinds(&c), vec![(EventKind::Committed, Some("1"))]);
    }

    #[test]
    fn repeat_counts_iterations_and_other_steps_reset_them() {
        let t = after_step(
            &run(0),
            &steps(2),
            0,
            StepOutcome::Completed(Next::Repeat),
            0,
            "h[1]",
        );
        assert_eq!((t.step_index, t.step_iteration), (0, 1));
        let again = RunView {
            step_iteration: 1,
            ..run(0)
        };
        assert_eq!(
            next_action(&again, &steps(2), "h[1]"),
            Action::RunStep {
                index: 0,
                iteration: 1
            }
        );
        let t = after_step(
            &again,
            &steps(2),
            0,
            StepOutcome::Completed(Next::GoTo(0)),
            0,
            "h[1]",
        );
        assert_eq!(
            t.step_iteration, 2,
            "goto to the same step counts as a repeat"
        );
        let t = after_step(
            &again,
            &steps(2),
            0,
            StepOutcome::Completed(Next::GoTo(1)),
            0,
            "h[1]",
        );
        assert_eq!((t.step_index, t.step_iteration), (1, 0));
    }

    #[test]
    fn goto_out_of_bounds_fails_the_run() {
        let t = after_step(
            &run(0),
            &steps(2),
            0,
            StepOutcome::Completed(Next::GoTo(5)),
            0,
            "h[1]",
        );
        assert_eq!(t.status, RunStatus::RolledBack);
        let f = t.failure.as_ref().unwrap();
        assert_eq!(
            f.message(),
            "goto step index 5 is out of bounds (saga has 2 steps)"
        );
    }

    #[test]
    fn a_failed_first_step_rolls_back_with_the_sentinel_name() {
        let failure = Failure::new("x::Boom", "boom", "h[1]").with_step("0");
        let t = after_step(
            &run(0),
            &steps(2),
            0,
            StepOutcome::Failed(failure.clone()),
            0,
            "h[1]",
        );
        assert_eq!(t.status, RunStatus::RolledBack);
        assert_eq!(
            kinds(&t),
            vec![
                (EventKind::RollingBack, Some("0")),
                (EventKind::RolledBack, Some("Rollback of 0[0,]"))
            ]
        );
        assert_eq!(t.events[0].failure.as_ref(), Some(&failure));
    }

    #[test]
    fn a_run_past_the_end_of_a_shortened_saga_is_abandoned() {
        match next_action(&run(5), &steps(2), "h[1]") {
            Action::Abandon(f) => assert!(f.message().contains("saga has 2 steps"), "{f}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
