//! Tests of `core::decide`.
use super::*;
use crate::failure::kinds;

fn steps(n: usize) -> Vec<StepShape> {
    (0..n).map(|i| StepShape::plain(&i.to_string())).collect()
}

fn run(step_index: u32) -> RunView {
    RunView {
        step_index,
        instances: step_index,
        ..RunView::default()
    }
}

fn done(o: Result<Transition, Failure>) -> Transition {
    o.unwrap_or_else(|failure| panic!("failed: {failure}"))
}

fn kinds(t: &Transition) -> Vec<(EventKind, Option<&str>)> {
    t.events
        .iter()
        .map(|e| (e.kind, e.step.as_deref()))
        .collect()
}

fn completed(r: &RunView, n: usize, index: usize, next: Next, children: u32) -> Transition {
    done(after_step(r, &steps(n), index, next, children, "h[1]"))
}

#[test]
fn a_fresh_run_starts_with_its_first_step() {
    assert_eq!(
        next_action(&run(0), &steps(2), None, "h[1]"),
        Action::RunStep {
            index: 0,
            iteration: 0
        }
    );
}

#[test]
fn a_step_with_children_waits_for_them() {
    let t = completed(&run(0), 2, 0, Next::Continue, 3);
    assert_eq!(t.status, RunStatus::Active);
    assert_eq!((t.step_index, t.pending_children, t.instances), (1, 3, 1));
    assert_eq!(t.waited_instance, Some(0));
    assert_eq!(kinds(&t), vec![(EventKind::Suspended, Some("0"))]);
    assert_eq!(t.events[0].next_step, Some(1));
    let recorded = t.new_instance.unwrap();
    assert_eq!(
        (recorded.seq, recorded.step, recorded.kind),
        (0, 0, InstanceKind::Step)
    );
}

#[test]
fn a_step_without_children_can_continue_at_once() {
    let t = completed(&run(0), 2, 0, Next::Continue, 0);
    assert_eq!(
        (t.status, t.pending_children, t.step_index),
        (RunStatus::Active, 0, 1)
    );
}

#[test]
fn the_last_step_without_children_commits_in_the_same_transaction() {
    let t = completed(&run(1), 2, 1, Next::Continue, 0);
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
    let t = completed(&run(1), 2, 1, Next::Continue, 2);
    assert_eq!((t.status, t.step_index), (RunStatus::Active, 2));
    let later = run(2);
    assert_eq!(next_action(&later, &steps(2), None, "h[1]"), Action::Commit);
    let c = commit(&later, &steps(2));
    assert_eq!(c.status, RunStatus::Committed);
    assert_eq!(kinds(&c), vec![(EventKind::Committed, Some("1"))]);
}

#[test]
fn repeat_counts_iterations_and_other_steps_reset_them() {
    let t = completed(&run(0), 2, 0, Next::Repeat, 0);
    assert_eq!((t.step_index, t.step_iteration), (0, 1));
    let again = RunView {
        step_iteration: 1,
        ..run(0)
    };
    assert_eq!(
        next_action(&again, &steps(2), None, "h[1]"),
        Action::RunStep {
            index: 0,
            iteration: 1
        }
    );
    let t = completed(&again, 2, 0, Next::GoTo(0), 0);
    assert_eq!(
        t.step_iteration, 2,
        "goto to the same step counts as a repeat"
    );
    assert_eq!(t.new_instance.unwrap().iteration, 1);
    let t = completed(&again, 2, 0, Next::GoTo(1), 0);
    assert_eq!((t.step_index, t.step_iteration), (1, 0));
}

#[test]
fn goto_out_of_bounds_fails_the_run() {
    let failure = after_step(&run(0), &steps(2), 0, Next::GoTo(5), 0, "h[1]").unwrap_err();
    assert_eq!(
        failure.message(),
        "goto step index 5 is out of bounds (saga has 2 steps)"
    );
    assert_eq!(failure.step(), Some("0"));
}

#[test]
fn a_run_past_the_end_of_a_shortened_saga_is_abandoned() {
    match next_action(&run(5), &steps(2), None, "h[1]") {
        Action::Abandon(f) => assert!(f.message().contains("saga has 2 steps"), "{f}"),
        other => panic!("unexpected {other:?}"),
    }
}

fn failed_children() -> ChildrenOf {
    ChildrenOf {
        messages: vec![],
        committed: 1,
        rolled_back: vec![Failure::new("x::E", "child broke", "c[1]")],
        rollback_failed: vec![],
        rollback_failed_causes: vec![],
    }
}

/// Issue 10: a child that failed ("original") and then failed to roll back ("another")
/// shows both to its parent, the original as a cause under a "child rolled back" failure.
#[test]
fn a_childs_failed_rollback_keeps_its_original_failure() {
    let original = Failure::new("x::Original", "original", "c[1]");
    let another = Failure::new("x::Another", "another", "c[1]");
    let sibling = Failure::new("x::Sibling", "sibling broke", "d[1]");
    let children = ChildrenOf {
        rolled_back: vec![sibling.clone()],
        rollback_failed: vec![another.clone()],
        rollback_failed_causes: vec![original.clone()],
        ..ChildrenOf::default()
    };
    let causes = children.rollback_failed_causes("s", None, "p[1]");
    assert_eq!(causes.len(), 2);
    assert_eq!(causes[0], another);
    assert_eq!(causes[1].kind(), kinds::CHILD_ROLLED_BACK);
    assert_eq!(causes[1].causes(), [original.clone(), sibling]);
    // A rollback failure that already carries its original does not repeat it.
    let wrapped = another.clone().with_cause(original.clone());
    let children = ChildrenOf {
        rollback_failed: vec![wrapped.clone()],
        rollback_failed_causes: vec![original],
        ..ChildrenOf::default()
    };
    assert_eq!(
        children.rollback_failed_causes("s", None, "p[1]"),
        [wrapped]
    );
    // On the rollback path, a child's original that is only the parent's own request is left
    // to the caller (which adds the parent's cause itself).
    let own = Failure::new("x::Own", "third step", "p[1]");
    let children = ChildrenOf {
        rollback_failed: vec![another.clone()],
        rollback_failed_causes: vec![Failure::parent_said_so(&own, "p[1]")],
        ..ChildrenOf::default()
    };
    assert_eq!(
        children.rollback_failed_causes("s", Some(&own), "p[1]"),
        [another]
    );
}

#[test]
fn failed_children_without_a_handler_fail_the_run() {
    let r = RunView {
        failed_children: 1,
        ..run(1)
    };
    assert_eq!(
        next_action(&r, &steps(2), None, "h[1]"),
        Action::HandleChildFailures
    );
    let latest = Instance {
        seq: 0,
        step: 0,
        iteration: 0,
        cfh: None,
        kind: InstanceKind::Step,
    };
    match child_failures(&r, &steps(2), &latest, &failed_children(), "h[1]") {
        ChildFailurePlan::Rethrow { step, failure } => {
            assert_eq!(step, "0");
            assert_eq!(failure.kind(), "structured_cooperation::ChildRolledBack");
            assert_eq!(failure.causes()[0].message(), "child broke");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_handler_gets_the_next_step_and_its_iteration_and_can_retry() {
    let mut shapes = steps(3);
    shapes[0].handles_child_failures = true;
    let latest = Instance {
        seq: 0,
        step: 0,
        iteration: 0,
        cfh: None,
        kind: InstanceKind::Step,
    };
    let r = RunView {
        failed_children: 1,
        step_index: 2,
        instances: 1,
        ..RunView::default()
    };
    let ChildFailurePlan::Run { next, cfh, .. } =
        child_failures(&r, &shapes, &latest, &failed_children(), "h[1]")
    else {
        panic!()
    };
    assert_eq!((next, cfh), (Next::GoTo(2), 0));
    // The handler emits a retry child and keeps the step's choice.
    let t = done(after_child_failures(
        &r, &shapes, &latest, 0, next, 1, "h[1]",
    ));
    assert_eq!(
        (t.step_index, t.pending_children, t.cfh_iteration),
        (2, 1, Some(0))
    );
    assert_eq!(kinds(&t), vec![(EventKind::Suspended, Some("0"))]);
    let recorded = t.new_instance.unwrap();
    assert_eq!(
        (recorded.cfh, recorded.kind),
        (Some(0), InstanceKind::ChildFailures)
    );
    // Its retry fails too: the handler runs again, with the next iteration.
    let again = RunView {
        failed_children: 1,
        cfh_iteration: Some(0),
        instances: 2,
        ..r
    };
    let ChildFailurePlan::Run { cfh, .. } =
        child_failures(&again, &shapes, &recorded, &failed_children(), "h[1]")
    else {
        panic!()
    };
    assert_eq!(cfh, 1);
}

#[test]
fn a_new_ordinary_step_resets_the_handler_iteration() {
    let r = RunView {
        cfh_iteration: Some(3),
        ..run(0)
    };
    let t = completed(&r, 2, 0, Next::Continue, 0);
    assert_eq!(t.cfh_iteration, None);
}

#[test]
fn rollback_failures_of_children_are_reported_as_such() {
    let mut children = failed_children();
    children.rollback_failed = vec![Failure::new("x::Comp", "refund failed", "c[1]")];
    let latest = Instance {
        seq: 0,
        step: 0,
        iteration: 0,
        cfh: None,
        kind: InstanceKind::Step,
    };
    let ChildFailurePlan::Rethrow { failure, .. } =
        child_failures(&run(1), &steps(2), &latest, &children, "h[1]")
    else {
        panic!()
    };
    assert_eq!(
        failure.kind(),
        "structured_cooperation::ChildRollbackFailed"
    );
    assert_eq!(failure.causes().len(), 2);
}

#[test]
fn goto_by_name_resolves_or_fails_clearly() {
    let shapes = vec![StepShape::plain("check"), StepShape::plain("retry")];
    let t = done(after_step(
        &run(0),
        &shapes,
        0,
        Next::GoToStep("retry"),
        0,
        "h[1]",
    ));
    assert_eq!(t.step_index, 1);
    let f = after_step(&run(0), &shapes, 0, Next::GoToStep("nope"), 0, "h[1]").unwrap_err();
    assert_eq!(
        f.message(),
        "goto step \"nope\": the saga has no such step (it has [\"check\", \"retry\"])"
    );
}

#[test]
fn giving_up_wins_over_everything_on_both_paths() {
    let reason = Failure::new("structured_cooperation::Cancelled", "stop", "ops");
    let r = RunView {
        failed_children: 2,
        ..run(1)
    };
    assert_eq!(
        next_action(&r, &steps(2), Some(reason.clone()), "h[1]"),
        Action::GiveUp {
            step: "1".to_owned(),
            failure: reason.clone()
        }
    );
    let past_end = run(2);
    assert!(matches!(
        next_action(&past_end, &steps(2), Some(reason.clone()), "h[1]"),
        Action::GiveUp { step, .. } if step == "1"
    ));
    let finished = RunView {
        status: RunStatus::Committed,
        ..run(2)
    };
    assert_eq!(
        next_action(&finished, &steps(2), Some(reason), "h[1]"),
        Action::Nothing
    );
}
