//! The rollback path: a plan of sub-steps built from a run's executed step instances, newest
//! first, and how far a run gets through it in one transaction.
//!
//! For every instance, newest first: a *children* sub-step asks the committed children of that
//! instance to roll back and waits for them, then (for step bodies, not child-failure handlers)
//! a *compensate* sub-step runs the step's compensating action in its own transaction. Sub-steps
//! with nothing to do (no messages, no compensating action) are written and passed in the same
//! transaction as their neighbours. Names follow Scoop: `Rollback of X[k,c] (rolling back child
//! scopes)` and `Rollback of X[k,]`, where `k` counts X's executions and `c` is the
//! child-failure handler's invocation.

use std::collections::HashMap;

use super::decide::{ChildrenOf, Event, Transition};
use super::state::{EventKind, Instance, InstanceKind, RunStatus, RunView, StepShape, step_name};
use crate::failure::{Failure, kinds};

const PREFIX: &str = "Rollback of ";
const SUFFIX: &str = " (rolling back child scopes)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubKind {
    /// Ask the instance's committed children to roll back, and wait for them.
    Children,
    /// Run the step's compensating action.
    Compensate,
}

/// One sub-step of a rollback plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sub {
    pub(crate) kind: SubKind,
    pub(crate) instance: Instance,
    pub(crate) name: String,
}

/// The sub-steps that undo a run, in the order they run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) subs: Vec<Sub>,
    /// The name written on `ROLLED_BACK` when there is nothing to undo.
    pub(crate) sentinel: String,
}

/// Scoop's rule: if a step's own name could be mistaken for a synthetic one, the synthetic
/// prefix (suffix) gets `$`s until it cannot.
fn affixes(steps: &[StepShape]) -> (String, String) {
    let mut prefix = PREFIX.to_owned();
    while steps.iter().any(|s| s.name.starts_with(&prefix)) {
        prefix.push('$');
    }
    let mut suffix = SUFFIX.to_owned();
    while steps.iter().any(|s| s.name.ends_with(&suffix)) {
        suffix.push('$');
    }
    (prefix, suffix)
}

/// Builds the plan from the run's instances (in execution order).
pub(crate) fn plan(instances: &[Instance], steps: &[StepShape]) -> Plan {
    let (prefix, suffix) = affixes(steps);
    let name_of = |i: usize| step_name(steps, i);
    // `k`: an ordinary execution of X gets X's count so far; a child-failure handler shares the
    // number of the execution of X it handled.
    let mut counts: HashMap<usize, u32> = HashMap::new();
    let mut numbered = Vec::new();
    for inst in instances {
        let k = match inst.kind {
            InstanceKind::Step => {
                let count = counts.entry(inst.step).or_insert(0);
                *count += 1;
                *count - 1
            }
            InstanceKind::ChildFailures => {
                counts.get(&inst.step).map_or(0, |c| c.saturating_sub(1))
            }
            InstanceKind::Compensation => continue,
        };
        numbered.push((*inst, k));
    }
    let mut subs = Vec::with_capacity(numbered.len() * 2);
    for (inst, k) in numbered.into_iter().rev() {
        let step = name_of(inst.step);
        let c = inst.cfh.map(|c| c.to_string()).unwrap_or_default();
        subs.push(Sub {
            kind: SubKind::Children,
            instance: inst,
            name: format!("{prefix}{step}[{k},{c}]{suffix}"),
        });
        if inst.kind == InstanceKind::Step {
            subs.push(Sub {
                kind: SubKind::Compensate,
                instance: inst,
                name: format!("{prefix}{step}[{k},]"),
            });
        }
    }
    Plan {
        subs,
        sentinel: format!("{prefix}{}[0,]", name_of(0)),
    }
}

/// Everything a rollback decision reads.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) run: &'a RunView,
    pub(crate) steps: &'a [StepShape],
    pub(crate) plan: &'a Plan,
    /// Why the run is rolling back.
    pub(crate) cause: &'a Failure,
    /// What the children of each instance ended as, by instance.
    pub(crate) children: &'a HashMap<u32, ChildrenOf>,
    pub(crate) source: &'a str,
}

impl Ctx<'_> {
    fn children_of(&self, seq: u32) -> ChildrenOf {
        self.children.get(&seq).cloned().unwrap_or_default()
    }

    fn base(&self, cursor: u32, events: Vec<Event>) -> Transition {
        Transition {
            status: RunStatus::RollingBack,
            rollback_cursor: Some(cursor),
            events,
            ..Transition::unchanged(self.run)
        }
    }

    fn failed(&self, step: &str, failure: Failure, mut events: Vec<Event>) -> Transition {
        events.push(Event::new(EventKind::RollbackFailed, Some(step)).with_failure(&failure));
        Transition {
            status: RunStatus::RollbackFailed,
            rollback_failure: Some(failure),
            ..self.base(self.run.rollback_cursor.unwrap_or(0), events)
        }
    }
}

/// A compensating action to run now: the sub-step at `cursor` undoes `instance`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Compensation {
    pub(crate) cursor: u32,
    pub(crate) instance: Instance,
    pub(crate) name: String,
    /// History written by this transaction so far.
    pub(crate) events: Vec<Event>,
}

/// How far one transaction gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Advance {
    /// Run this compensating action, then call [`after_compensation`].
    Compensate(Compensation),
    /// Persist this.
    Done(Box<Transition>),
}

/// Goes through the plan from `cursor` until something must wait: children rolling back, a
/// compensating action (run now if `allow_user`, else left for the next transaction), or the
/// end (`ROLLED_BACK`).
fn advance(ctx: &Ctx<'_>, mut cursor: u32, mut events: Vec<Event>, allow_user: bool) -> Advance {
    loop {
        let Some(sub) = ctx.plan.subs.get(cursor as usize) else {
            let name = ctx
                .plan
                .subs
                .last()
                .map_or(ctx.plan.sentinel.as_str(), |s| s.name.as_str());
            events.push(Event::new(EventKind::RolledBack, Some(name)));
            return Advance::Done(Box::new(Transition {
                status: RunStatus::RolledBack,
                ..ctx.base(cursor, events)
            }));
        };
        match sub.kind {
            SubKind::Children => {
                let children = ctx.children_of(sub.instance.seq);
                if !children.rollback_failed.is_empty() {
                    let failure = Failure::child_rollback_failed(
                        &sub.name,
                        children.rollback_failed_causes(&sub.name, Some(ctx.cause), ctx.source),
                        Some(ctx.cause),
                        ctx.source,
                    );
                    return Advance::Done(Box::new(ctx.failed(&sub.name, failure, events)));
                }
                let request = Failure::parent_said_so(ctx.cause, ctx.source);
                for message in &children.messages {
                    let mut emitted = Event::new(EventKind::RollbackEmitted, Some(&sub.name))
                        .with_failure(&request);
                    emitted.message = Some(*message);
                    events.push(emitted);
                }
                events.push(Event::new(EventKind::Suspended, Some(&sub.name)));
                cursor += 1;
                if children.committed > 0 {
                    return Advance::Done(Box::new(Transition {
                        pending_children: children.committed,
                        waited_instance: Some(sub.instance.seq),
                        rollback_request: Some((sub.instance.seq, request)),
                        ..ctx.base(cursor, events)
                    }));
                }
            }
            SubKind::Compensate => {
                let compensates = ctx
                    .steps
                    .get(sub.instance.step)
                    .is_some_and(|s| s.compensates);
                if !compensates {
                    events.push(Event::new(EventKind::Suspended, Some(&sub.name)));
                    cursor += 1;
                } else if allow_user {
                    return Advance::Compensate(Compensation {
                        cursor,
                        instance: sub.instance,
                        name: sub.name.clone(),
                        events,
                    });
                } else {
                    return Advance::Done(Box::new(ctx.base(cursor, events)));
                }
            }
        }
    }
}

/// The run failed in `step` (its step body, a child-failure handler, or a bad `Next`): record
/// `ROLLING_BACK` with the cause and get as far as possible without running user code.
pub(crate) fn begin(ctx: &Ctx<'_>, step: &str) -> Transition {
    let events = vec![Event::new(EventKind::RollingBack, Some(step)).with_failure(ctx.cause)];
    let mut t = match advance(ctx, 0, events, false) {
        Advance::Done(t) => *t,
        Advance::Compensate(c) => ctx.base(c.cursor, c.events),
    };
    t.failure = Some(ctx.cause.clone());
    t
}

/// A rolling-back run was claimed: write its `ROLLING_BACK` if its rollback was requested and
/// this is its first claim, check the children it waited for, and go on.
pub(crate) fn resume(ctx: &Ctx<'_>) -> Advance {
    let mut events = Vec::new();
    if !ctx.run.rollback_seen {
        events.push(Event::new(EventKind::RollingBack, None).with_failure(ctx.cause));
    }
    let cursor = ctx.run.rollback_cursor.unwrap_or(0);
    let previous = cursor
        .checked_sub(1)
        .and_then(|c| ctx.plan.subs.get(c as usize));
    if let (Some(waited), Some(previous)) = (ctx.run.waited_instance, previous) {
        let children = ctx.children_of(waited);
        match previous.kind {
            // Children asked to roll back must have managed to.
            SubKind::Children if !children.rollback_failed.is_empty() => {
                let failure = Failure::child_rollback_failed(
                    &previous.name,
                    children.rollback_failed_causes(&previous.name, Some(ctx.cause), ctx.source),
                    Some(ctx.cause),
                    ctx.source,
                );
                return Advance::Done(Box::new(ctx.failed(&previous.name, failure, events)));
            }
            // Children emitted by a compensating action are part of it: if one did not
            // commit, the compensation did not happen.
            SubKind::Compensate
                if !children.rolled_back.is_empty() || !children.rollback_failed.is_empty() =>
            {
                let mut causes = children.rollback_failed;
                causes.extend(children.rolled_back);
                let failure = Failure::new(
                    kinds::CHILD_OF_COMPENSATION_FAILED,
                    format!(
                        "a message emitted by the compensating action {:?} was not handled \
                         successfully",
                        previous.name
                    ),
                    ctx.source,
                )
                .with_step(previous.name.as_str());
                let failure = causes.into_iter().fold(failure, Failure::with_cause);
                return Advance::Done(Box::new(ctx.failed(&previous.name, failure, events)));
            }
            _ => {}
        }
    }
    advance(ctx, cursor, events, true)
}

/// Why the run rolls back: the cause stored with it, or, if none was recorded (only a hand
/// edit of the database can do that), a failure saying so.
pub(crate) fn cause_or_unknown(stored: Option<Failure>, source: &str) -> Failure {
    stored.unwrap_or_else(|| {
        Failure::new(
            "structured_cooperation::UnknownCause",
            "the run is rolling back but its cause was not recorded",
            source,
        )
    })
}

/// Whether the step after the one `undone` executed ran after it: try/finally's marker that
/// its finally already ran, so the compensation of the try step must not run it again.
pub(crate) fn successor_ran(instances: &[Instance], undone: &Instance) -> bool {
    instances
        .iter()
        .any(|i| i.seq > undone.seq && i.step == undone.step + 1 && i.kind == InstanceKind::Step)
}

/// A rolling-back run must give up (its rollback or absolute deadline passed): its rollback
/// fails at the sub-step it would have run next, which does not run.
pub(crate) fn give_up(ctx: &Ctx<'_>, failure: Failure) -> Transition {
    let mut events = Vec::new();
    if !ctx.run.rollback_seen {
        events.push(Event::new(EventKind::RollingBack, None).with_failure(ctx.cause));
    }
    let cursor = ctx.run.rollback_cursor.unwrap_or(0) as usize;
    let name = ctx
        .plan
        .subs
        .get(cursor)
        .or(ctx.plan.subs.last())
        .map_or(ctx.plan.sentinel.as_str(), |s| s.name.as_str());
    ctx.failed(name, failure, events)
}

/// The compensating action `c` ended. If it emitted messages (`emitted`), they form a new
/// instance whose `children` runs the rollback waits for.
pub(crate) fn after_compensation(
    ctx: &Ctx<'_>,
    c: Compensation,
    outcome: Result<(), Failure>,
    emitted: bool,
    children: u32,
) -> Transition {
    let Compensation {
        cursor,
        instance,
        name,
        mut events,
    } = c;
    if let Err(failure) = outcome {
        return ctx.failed(&name, failure, events);
    }
    events.push(Event::new(EventKind::Suspended, Some(&name)));
    if !emitted {
        return continue_after(ctx, cursor + 1, events);
    }
    let record = Instance {
        seq: ctx.run.instances,
        step: instance.step,
        iteration: instance.iteration,
        cfh: None,
        kind: InstanceKind::Compensation,
    };
    let mut t = if children > 0 {
        Transition {
            pending_children: children,
            waited_instance: Some(record.seq),
            ..ctx.base(cursor + 1, events)
        }
    } else {
        continue_after(ctx, cursor + 1, events)
    };
    t.instances = ctx.run.instances + 1;
    t.new_instance = Some(record);
    t
}

/// Goes on after a compensating action, up to (not into) the next one.
fn continue_after(ctx: &Ctx<'_>, cursor: u32, events: Vec<Event>) -> Transition {
    match advance(ctx, cursor, events, false) {
        Advance::Done(t) => *t,
        Advance::Compensate(c) => ctx.base(c.cursor, c.events),
    }
}

#[cfg(test)]
#[path = "rollback_tests.rs"]
mod tests;
