//! Scripted attempts on the child-failure and rollback paths (see `attempt_tests.rs`).

use std::collections::HashMap;

use super::tests::*;
use super::*;
use crate::core::decide::ChildrenOf;
use crate::core::{RunStatus, RunView};
use crate::failure::StepError;
use crate::ids::new_uuid;
use crate::proto::{ClaimedRun, Emitted, Requested};

#[test]
fn a_child_failure_handler_returning_next_carries_on() {
    let f = Fixture::new(&["a+f", "b"]);
    let mut a = f.attempt();
    let run = claimed(RunView {
        step_index: 1,
        instances: 1,
        failed_children: 1,
        ..RunView::default()
    });
    claim(&mut a, &run);
    let broke = Failure::new("x::Broke", "child broke", "c[2]");
    let children = HashMap::from([(
        0,
        ChildrenOf {
            rolled_back: vec![broke.clone()],
            ..ChildrenOf::default()
        },
    )]);
    facts(&mut a, vec![step_instance(0, 0)], children);
    let call = user_call(&mut a);
    let CallKind::ChildFailures(failures) = &call.kind else {
        panic!("{:?}", call.kind)
    };
    assert_eq!(failures.children(), [broke]);
    assert_eq!((failures.next(), failures.iteration()), (Next::Continue, 0));
    assert_eq!(call.info.phase, Phase::ChildFailures);
    // The handler retries the step.
    a.handle_user(returned(Ok(Next::Repeat), false));
    let t = finish(&mut a);
    assert_eq!((t.status, t.step_index, t.step_iteration), ("active", 0, 1));
    assert_eq!(
        (t.instance_kind, t.cfh_iteration),
        (Some("child_failures"), Some(0))
    );
    assert_eq!(t.check, Some(false));
    let report = commit(&mut a, CHILD, None);
    assert!(report.committed);
}

#[test]
fn children_that_failed_without_a_handler_fail_the_run() {
    let f = Fixture::new(&["a", "b"]);
    let mut a = f.attempt();
    let run = claimed(RunView {
        step_index: 1,
        instances: 1,
        failed_children: 1,
        ..RunView::default()
    });
    claim(&mut a, &run);
    let children = HashMap::from([(
        0,
        ChildrenOf {
            rolled_back: vec![Failure::new("x::Broke", "child broke", "c[2]")],
            ..ChildrenOf::default()
        },
    )]);
    facts(&mut a, vec![step_instance(0, 0)], children);
    // No user code: the run fails in step a, with the facts already read.
    let t = finish(&mut a);
    assert_eq!(
        t.event_kinds,
        ["ROLLING_BACK", "SUSPENDED", "SUSPENDED", "ROLLED_BACK"]
    );
    assert!(t.failure.expect("recorded").contains("ChildRolledBack"));
}

#[test]
fn children_failing_a_run_that_has_no_instances_is_an_inconsistency_not_a_loop() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    let run = claimed(RunView {
        failed_children: 1,
        ..RunView::default()
    });
    claim(&mut a, &run);
    facts(&mut a, Vec::new(), HashMap::new());
    let t = finish(&mut a);
    assert!(t.failure.expect("recorded").contains("InconsistentState"));
}

/// A run rolling back whose only step (which compensates) is next to be undone.
fn rolling_back() -> ClaimedRun {
    let mut run = claimed(RunView {
        status: RunStatus::RollingBack,
        step_index: 1,
        instances: 1,
        rollback_cursor: Some(1),
        rollback_seen: true,
        ..RunView::default()
    });
    let cause = Failure::new("x::Declined", "card declined", "pay[1]");
    run.failure = Some(serde_json::to_string(&cause).unwrap());
    run
}

#[test]
fn a_compensation_that_fails_ends_the_rollback_failed() {
    let f = Fixture::new(&["a+c"]);
    let mut a = f.attempt();
    claim(&mut a, &rolling_back());
    facts(&mut a, vec![step_instance(0, 0)], HashMap::new());
    let call = user_call(&mut a);
    let CallKind::Compensation(cause) = &call.kind else {
        panic!("{:?}", call.kind)
    };
    assert_eq!(cause.message(), "card declined");
    assert_eq!(
        (call.info.phase, call.info.successor_ran),
        (Phase::Compensation, false)
    );
    let mut outcome = returned(Err(StepError::msg("refund failed")), true);
    outcome.emissions = vec![child("never-written")];
    a.handle_user(outcome);
    assert!(matches!(a.poll(), Io::RollbackToSavepoint));
    ok(&mut a);
    let t = finish(&mut a);
    assert_eq!(t.status, "rollback_failed");
    assert_eq!(t.event_kinds, ["ROLLBACK_FAILED"]);
    assert_eq!(t.event_steps[0].as_deref(), Some("Rollback of a[0,]"));
    assert!(
        t.rollback_failure
            .expect("recorded")
            .contains("refund failed")
    );
    assert!(t.messages.is_empty());
    let report = commit(&mut a, CHILD, None);
    assert_eq!(report.step_failures, 1);
}

#[test]
fn a_compensation_that_succeeds_finishes_the_rollback() {
    let f = Fixture::new(&["a+c"]);
    let mut a = f.attempt();
    claim(&mut a, &rolling_back());
    facts(&mut a, vec![step_instance(0, 0)], HashMap::new());
    user_call(&mut a);
    let mut outcome = returned(Ok(Next::Continue), true);
    outcome.emissions = vec![child("refunds")];
    a.handle_user(outcome);
    match a.poll() {
        Io::Run(Stmt::Emit(e)) => {
            assert_eq!(e.check, Some(true), "the rollback path's check");
            assert_eq!(e.step.as_deref(), Some("Rollback of a[0,]"));
        }
        other => panic!("{other:?}"),
    }
    a.handle_output(Ok(Output::Emitted(Emitted {
        children: 1,
        handlers: vec!["refund".to_owned()],
        ..Emitted::default()
    })));
    let t = finish(&mut a);
    // The rollback waits for the refund the compensation emitted.
    assert_eq!((t.status, t.pending_children), ("rolling_back", 1));
    assert_eq!(t.instance_kind, Some("compensation"));
    assert_eq!(t.check, Some(true));
    let report = commit(&mut a, CHILD, None);
    assert_eq!(report.woken, ["refund"]);
}

#[test]
fn committed_children_are_asked_to_roll_back_before_the_transition() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    let mut run = rolling_back();
    run.view.rollback_cursor = Some(0);
    run.rollback_context = Some(r#"{"tenant":"acme"}"#.to_owned());
    claim(&mut a, &run);
    let children = HashMap::from([(
        0,
        ChildrenOf {
            messages: vec![new_uuid()],
            committed: 2,
            ..ChildrenOf::default()
        },
    )]);
    facts(&mut a, vec![step_instance(0, 0)], children);
    match a.poll() {
        Io::Run(Stmt::RequestRollback(r)) => {
            assert_eq!(r.instance, 0);
            assert_eq!(r.context.as_deref(), Some(r#"{"tenant":"acme"}"#));
        }
        other => panic!("{other:?}"),
    }
    a.handle_output(Ok(Output::Requested(Requested {
        children: 2,
        handlers: vec!["pay".to_owned()],
    })));
    let t = finish(&mut a);
    assert_eq!((t.status, t.pending_children), ("rolling_back", 2));
    assert_eq!(t.event_kinds, ["ROLLBACK_EMITTED", "SUSPENDED"]);
    // The merged rollback context is saved (and the pending one cleared).
    assert_eq!(
        (t.write_context, t.context.as_deref()),
        (true, Some(r#"{"tenant":"acme"}"#))
    );
    let report = commit(&mut a, CHILD, None);
    assert_eq!(report.woken, ["pay"]);
}
