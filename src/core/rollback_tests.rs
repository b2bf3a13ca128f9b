//! Tests of `core::rollback`.
use super::*;

fn inst(seq: u32, step: usize, cfh: Option<u32>) -> Instance {
    Instance {
        seq,
        step,
        iteration: 0,
        cfh,
        kind: if cfh.is_some() {
            InstanceKind::ChildFailures
        } else {
            InstanceKind::Step
        },
    }
}

fn shapes(names: &[&str], compensating: &[usize]) -> Vec<StepShape> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| StepShape {
            compensates: compensating.contains(&i),
            ..StepShape::plain(n)
        })
        .collect()
}

fn names(plan: &Plan) -> Vec<&str> {
    plan.subs.iter().map(|s| s.name.as_str()).collect()
}

fn trace(t: &Transition) -> Vec<String> {
    t.events
        .iter()
        .map(|e| format!("{}({})", e.kind, e.step.as_deref().unwrap_or("-")))
        .collect()
}

fn cause() -> Failure {
    Failure::new("x::Boom", "boom", "h[1]")
}

#[test]
fn plans_undo_newest_first_with_scoops_names() {
    let steps = shapes(&["A", "B"], &[]);
    // A three times (a loop), then B, then a child-failure handler of B.
    let instances = [
        inst(0, 0, None),
        inst(1, 0, None),
        inst(2, 1, None),
        inst(3, 1, Some(0)),
    ];
    let plan = plan(&instances, &steps);
    assert_eq!(
        names(&plan),
        [
            "Rollback of B[0,0] (rolling back child scopes)",
            "Rollback of B[0,] (rolling back child scopes)",
            "Rollback of B[0,]",
            "Rollback of A[1,] (rolling back child scopes)",
            "Rollback of A[1,]",
            "Rollback of A[0,] (rolling back child scopes)",
            "Rollback of A[0,]",
        ]
    );
    assert_eq!(plan.sentinel, "Rollback of A[0,]");
}

#[test]
fn synthetic_names_never_collide_with_step_names() {
    let steps = shapes(&["Rollback of x", "y (rolling back child scopes)"], &[]);
    let plan = plan(&[inst(0, 1, None)], &steps);
    assert_eq!(
        names(&plan),
        [
            "Rollback of $y (rolling back child scopes)[0,] (rolling back child scopes)$",
            "Rollback of $y (rolling back child scopes)[0,]",
        ]
    );
}

#[test]
fn a_failure_in_the_first_step_rolls_back_at_once_with_the_sentinel() {
    let steps = shapes(&["0", "1"], &[0]);
    let plan = plan(&[], &steps);
    let run = RunView::default();
    let children = HashMap::new();
    let c = cause();
    let ctx = Ctx {
        run: &run,
        steps: &steps,
        plan: &plan,
        cause: &c,
        children: &children,
        source: "h[1]",
    };
    let t = begin(&ctx, "0");
    assert_eq!(t.status, RunStatus::RolledBack);
    assert_eq!(
        trace(&t),
        ["ROLLING_BACK(0)", "ROLLED_BACK(Rollback of 0[0,])"]
    );
    assert_eq!(t.failure, Some(c));
}

#[test]
fn golden_trace_3_children_then_the_compensation_in_its_own_transaction() {
    // Step 0 emitted one message (nobody listens) and compensates; step 1 failed.
    let steps = shapes(&["0", "1"], &[0]);
    let plan = plan(&[inst(0, 0, None)], &steps);
    let run = RunView {
        instances: 1,
        step_index: 1,
        ..RunView::default()
    };
    let message = uuid::Uuid::now_v7();
    let children = HashMap::from([(
        0,
        ChildrenOf {
            messages: vec![message],
            ..ChildrenOf::default()
        },
    )]);
    let c = cause();
    let ctx = Ctx {
        run: &run,
        steps: &steps,
        plan: &plan,
        cause: &c,
        children: &children,
        source: "h[1]",
    };
    let t = begin(&ctx, "1");
    assert_eq!(t.status, RunStatus::RollingBack);
    assert_eq!(
        trace(&t),
        [
            "ROLLING_BACK(1)",
            "ROLLBACK_EMITTED(Rollback of 0[0,] (rolling back child scopes))",
            "SUSPENDED(Rollback of 0[0,] (rolling back child scopes))",
        ]
    );
    assert_eq!(t.events[1].message, Some(message));
    assert_eq!(
        t.events[1].failure.as_ref().unwrap().kind(),
        kinds::PARENT_SAID_SO
    );
    assert_eq!((t.rollback_cursor, t.pending_children), (Some(1), 0));
    // Next claim: the compensation runs, then the run is rolled back.
    let run = RunView {
        status: RunStatus::RollingBack,
        rollback_cursor: Some(1),
        instances: 1,
        rollback_seen: true,
        ..RunView::default()
    };
    let ctx = Ctx { run: &run, ..ctx };
    let Advance::Compensate(c) = resume(&ctx) else {
        panic!()
    };
    assert_eq!(
        (c.cursor, c.instance.step, c.name.as_str()),
        (1, 0, "Rollback of 0[0,]")
    );
    let t = after_compensation(&ctx, c, Ok(()), false, 0);
    assert_eq!(
        trace(&t),
        [
            "SUSPENDED(Rollback of 0[0,])",
            "ROLLED_BACK(Rollback of 0[0,])"
        ]
    );
    assert_eq!(t.status, RunStatus::RolledBack);
}

#[test]
fn committed_children_are_asked_to_roll_back_and_awaited() {
    let steps = shapes(&["0"], &[]);
    let plan = plan(&[inst(0, 0, None)], &steps);
    let run = RunView {
        status: RunStatus::RollingBack,
        rollback_cursor: Some(0),
        instances: 1,
        rollback_seen: false,
        ..RunView::default()
    };
    let children = HashMap::from([(
        0,
        ChildrenOf {
            messages: vec![uuid::Uuid::now_v7()],
            committed: 2,
            ..ChildrenOf::default()
        },
    )]);
    let c = Failure::rollback_requested("feelz", "master-system");
    let ctx = Ctx {
        run: &run,
        steps: &steps,
        plan: &plan,
        cause: &c,
        children: &children,
        source: "root[1]",
    };
    let Advance::Done(t) = resume(&ctx) else {
        panic!()
    };
    assert_eq!(
        trace(&t),
        [
            "ROLLING_BACK(-)",
            "ROLLBACK_EMITTED(Rollback of 0[0,] (rolling back child scopes))",
            "SUSPENDED(Rollback of 0[0,] (rolling back child scopes))",
        ]
    );
    assert_eq!(
        (t.pending_children, t.waited_instance, t.rollback_cursor),
        (2, Some(0), Some(1))
    );
    let (instance, request) = t.rollback_request.clone().unwrap();
    assert_eq!(instance, 0);
    assert_eq!(request.causes()[0], c);
    // They rolled back: the rest folds into one transaction.
    let resumed = RunView {
        rollback_cursor: Some(1),
        waited_instance: Some(0),
        rollback_seen: true,
        ..run.clone()
    };
    let ctx = Ctx {
        run: &resumed,
        ..ctx
    };
    let Advance::Done(t) = resume(&ctx) else {
        panic!()
    };
    assert_eq!(
        trace(&t),
        [
            "SUSPENDED(Rollback of 0[0,])",
            "ROLLED_BACK(Rollback of 0[0,])"
        ]
    );
}

#[test]
fn a_childs_failed_rollback_stops_the_parents_rollback() {
    let steps = shapes(&["0", "1"], &[0, 1]);
    let plan = plan(&[inst(0, 0, None), inst(1, 1, None)], &steps);
    let run = RunView {
        status: RunStatus::RollingBack,
        rollback_cursor: Some(1),
        waited_instance: Some(1),
        instances: 2,
        rollback_seen: true,
        ..RunView::default()
    };
    let child_failure = Failure::new("x::Refund", "refund failed", "child[2]");
    let children = HashMap::from([(
        1,
        ChildrenOf {
            rollback_failed: vec![child_failure.clone()],
            ..ChildrenOf::default()
        },
    )]);
    let c = cause();
    let ctx = Ctx {
        run: &run,
        steps: &steps,
        plan: &plan,
        cause: &c,
        children: &children,
        source: "root[1]",
    };
    let Advance::Done(t) = resume(&ctx) else {
        panic!()
    };
    assert_eq!(t.status, RunStatus::RollbackFailed);
    assert_eq!(
        trace(&t),
        ["ROLLBACK_FAILED(Rollback of 1[0,] (rolling back child scopes))"]
    );
    let failure = t.rollback_failure.unwrap();
    assert_eq!(failure.kind(), kinds::CHILD_ROLLBACK_FAILED);
    assert_eq!(failure.causes(), [child_failure, c]);
}

#[test]
fn the_own_cause_is_not_repeated_when_a_child_already_carries_it() {
    let c = cause();
    let nested = Failure::new("x::Refund", "refund failed", "child[2]")
        .with_cause(Failure::parent_said_so(&c, "root[1]"));
    let f = Failure::child_rollback_failed("s", vec![nested.clone()], Some(&c), "root[1]");
    assert_eq!(f.causes(), [nested]);
}

#[test]
fn a_failing_compensation_ends_in_rollback_failed() {
    let steps = shapes(&["0"], &[0]);
    let plan = plan(&[inst(0, 0, None)], &steps);
    let run = RunView {
        status: RunStatus::RollingBack,
        rollback_cursor: Some(1),
        instances: 1,
        rollback_seen: true,
        ..RunView::default()
    };
    let children = HashMap::new();
    let c = cause();
    let ctx = Ctx {
        run: &run,
        steps: &steps,
        plan: &plan,
        cause: &c,
        children: &children,
        source: "h[1]",
    };
    let Advance::Compensate(c) = resume(&ctx) else {
        panic!()
    };
    let boom = Failure::new("panic", "compensation broke", "h[1]");
    let t = after_compensation(&ctx, c, Err(boom.clone()), false, 0);
    assert_eq!(t.status, RunStatus::RollbackFailed);
    assert_eq!(t.rollback_failure, Some(boom));
    assert_eq!(trace(&t), ["ROLLBACK_FAILED(Rollback of 0[0,])"]);
}

#[test]
fn a_compensation_that_emits_waits_for_its_children_and_fails_if_they_do() {
    let steps = shapes(&["0"], &[0]);
    let plan = plan(&[inst(0, 0, None)], &steps);
    let run = RunView {
        status: RunStatus::RollingBack,
        rollback_cursor: Some(1),
        instances: 1,
        rollback_seen: true,
        ..RunView::default()
    };
    let none = HashMap::new();
    let c = cause();
    let ctx = Ctx {
        run: &run,
        steps: &steps,
        plan: &plan,
        cause: &c,
        children: &none,
        source: "h[1]",
    };
    let Advance::Compensate(c) = resume(&ctx) else {
        panic!()
    };
    let t = after_compensation(&ctx, c, Ok(()), true, 1);
    assert_eq!(
        (t.pending_children, t.waited_instance, t.instances),
        (1, Some(1), 2)
    );
    assert_eq!(t.new_instance.unwrap().kind, InstanceKind::Compensation);
    // The refund it emitted failed: the compensation did not happen.
    let resumed = RunView {
        rollback_cursor: Some(2),
        waited_instance: Some(1),
        instances: 2,
        ..run.clone()
    };
    let children = HashMap::from([(
        1,
        ChildrenOf {
            rolled_back: vec![cause()],
            ..ChildrenOf::default()
        },
    )]);
    let ctx = Ctx {
        run: &resumed,
        children: &children,
        ..ctx
    };
    let Advance::Done(t) = resume(&ctx) else {
        panic!()
    };
    assert_eq!(t.status, RunStatus::RollbackFailed);
    assert_eq!(
        t.rollback_failure.unwrap().kind(),
        kinds::CHILD_OF_COMPENSATION_FAILED
    );
}

#[test]
fn a_missed_rollback_deadline_fails_the_rollback_where_it_stands() {
    let steps = shapes(&["0", "1"], &[0, 1]);
    let plan = plan(&[inst(0, 0, None), inst(1, 1, None)], &steps);
    let run = RunView {
        status: RunStatus::RollingBack,
        rollback_cursor: Some(2),
        instances: 2,
        rollback_seen: true,
        ..RunView::default()
    };
    let children = HashMap::new();
    let c = cause();
    let ctx = Ctx {
        run: &run,
        steps: &steps,
        plan: &plan,
        cause: &c,
        children: &children,
        source: "h[1]",
    };
    let late = Failure::new("structured_cooperation::MissedDeadline", "too late", "ops");
    let t = give_up(&ctx, late.clone());
    assert_eq!(t.status, RunStatus::RollbackFailed);
    assert_eq!(t.rollback_failure, Some(late));
    assert_eq!(
        trace(&t),
        ["ROLLBACK_FAILED(Rollback of 0[0,] (rolling back child scopes))"]
    );
}

#[test]
fn a_missing_cause_becomes_unknown_cause() {
    let stored = Failure::new("x::Y", "why", "h[1]");
    assert_eq!(cause_or_unknown(Some(stored.clone()), "h[2]"), stored);
    let unknown = cause_or_unknown(None, "h[2]");
    assert_eq!(unknown.kind(), "structured_cooperation::UnknownCause");
    assert_eq!(unknown.source(), "h[2]");
}

#[test]
fn the_successor_ran_when_the_next_step_executed_after_the_undone_one() {
    let inst = |seq, step, kind| Instance {
        seq,
        step,
        iteration: 0,
        cfh: None,
        kind,
    };
    let try_step = inst(0, 0, InstanceKind::Step);
    // The finally step (index 1) ran after the try step.
    let ran = [try_step, inst(1, 1, InstanceKind::Step)];
    assert!(successor_ran(&ran, &try_step));
    // Only the try step ran, or its child-failure handler after it: finally did not.
    assert!(!successor_ran(&[try_step], &try_step));
    let handled = [try_step, inst(1, 0, InstanceKind::ChildFailures)];
    assert!(!successor_ran(&handled, &try_step));
    // A later execution of the try step is undone before the earlier finally mattered.
    let looped = [
        inst(0, 1, InstanceKind::Step),
        inst(1, 0, InstanceKind::Step),
    ];
    assert!(!successor_ran(&looped, &looped[1]));
}
