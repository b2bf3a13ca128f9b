//! Scripted attempts on the retry and recovery paths: transient failures, exhausted
//! retries, data exceptions in the engine's statements and the runs they poison (see
//! `attempt_tests.rs` for the helpers).

use super::tests::{self, *};
use super::*;
use crate::core::{RetryPolicy, RunView};
use crate::error::Error;
use crate::failure::{StepError, StepResult};
use crate::ids::RunId;
use crate::proto::{ClaimedRun, Fault};

fn transient() -> StepResult<Next> {
    Err(StepError::transient(StepError::msg(
        "the provider timed out",
    )))
}

/// A run on its `retries`+1-th attempt of step 0.
fn attempt_no(retries: u32) -> ClaimedRun {
    ClaimedRun {
        retries,
        ..claimed(RunView::default())
    }
}

#[test]
fn a_transient_failure_discards_the_attempt_and_schedules_another() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    let run = attempt_no(0);
    claim(&mut a, &run);
    let call = user_call(&mut a);
    assert_eq!(call.info.attempt, 1);
    let mut outcome = returned(transient(), true);
    outcome.emissions = vec![child("never-written")];
    a.handle_user(outcome);
    // What the code wrote goes, and nothing it emitted is written.
    assert!(matches!(a.poll(), Io::RollbackToSavepoint));
    ok(&mut a);
    let retry = match a.poll() {
        Io::Run(Stmt::ScheduleRetry(r)) => r,
        other => panic!("expected the retry, got {other:?}"),
    };
    assert_eq!(retry.run, run.id.as_uuid());
    assert_eq!(retry.step, "a");
    assert_eq!(
        retry.check,
        Some(false),
        "the happy path's give-up check runs"
    );
    let policy = RetryPolicy::default();
    let delay = policy.delay(run.id, 1);
    assert_eq!(retry.delay_us, delay.as_micros() as i64);
    assert!(
        retry.failure.contains("the provider timed out"),
        "{}",
        retry.failure
    );
    a.handle_output(Ok(Output::Retried(1)));
    assert!(matches!(a.poll(), Io::Commit));
    ok(&mut a);
    let report = tests::done(&mut a);
    assert!(matches!(report.outcome, Outcome::Ran));
    assert!(report.committed && !report.root_finished);
    assert_eq!((report.retried, report.step_failures), (1, 0));
    assert!(report.woken.is_empty());
}

#[test]
fn a_transient_failure_without_writes_needs_no_savepoint_rollback() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(&mut a, &attempt_no(1));
    assert_eq!(user_call(&mut a).info.attempt, 2);
    a.handle_user(returned(transient(), false));
    assert!(matches!(a.poll(), Io::Run(Stmt::ScheduleRetry(_))));
    // Cancelled while the step ran: the retry is discarded, and the run gives up next.
    a.handle_fault(Fault::GiveUp(Failure::new("x::Cancelled", "stop", "op")));
    assert!(matches!(a.poll(), Io::Rollback));
    ok(&mut a);
    let report = tests::done(&mut a);
    assert!(report.gave_up_after_step && !report.committed);
}

#[test]
fn the_last_attempt_fails_the_run_with_the_last_error() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(&mut a, &attempt_no(2));
    assert_eq!(user_call(&mut a).info.attempt, 3);
    a.handle_user(returned(transient(), false));
    facts(&mut a, Vec::new(), Default::default());
    let t = finish(&mut a);
    assert_eq!(t.status, "rolled_back");
    let failure = t.failure.expect("recorded");
    assert!(failure.contains("the provider timed out"), "{failure}");
    let report = commit(&mut a, CHILD, None);
    assert_eq!((report.retried, report.step_failures), (0, 1));
}

#[test]
fn errors_that_are_not_transient_and_panics_are_never_retried() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(&mut a, &attempt_no(0));
    user_call(&mut a);
    a.handle_user(returned(Err(StepError::msg("card declined")), false));
    facts(&mut a, Vec::new(), Default::default());
    assert_eq!(finish(&mut a).status, "rolled_back");

    let mut a = f.attempt();
    claim(&mut a, &attempt_no(0));
    user_call(&mut a);
    let mut outcome = returned(Ok(Next::Continue), false);
    outcome.result = Err(Box::new("boom"));
    a.handle_user(outcome);
    facts(&mut a, Vec::new(), Default::default());
    assert_eq!(finish(&mut a).status, "rolled_back");
}

#[test]
fn a_data_exception_in_the_engines_statements_poisons_the_run() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    let run = attempt_no(0);
    claim(&mut a, &run);
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), true));
    finish(&mut a);
    a.handle_fault(Fault::Data(Error::UnexpectedData(
        "unsupported Unicode escape sequence".to_owned(),
    )));
    assert!(matches!(a.poll(), Io::Rollback));
    ok(&mut a);
    let poison = match a.poll() {
        Io::RunAutocommit(Stmt::Poison(p)) => p,
        other => panic!("expected the poison, got {other:?}"),
    };
    assert_eq!(poison.run, run.id.as_uuid());
    let failure: Failure = serde_json::from_str(&poison.failure).unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::DataRejected");
    assert!(
        failure.message().contains("unsupported Unicode escape"),
        "{failure}"
    );
    assert_eq!(failure.step(), Some("a"));
    a.handle_output(Ok(Output::Poisoned(Some(true))));
    let report = tests::done(&mut a);
    assert!(report.poisoned);
    assert!(
        matches!(report.outcome, Outcome::Ran),
        "the worker claims again at once"
    );

    // Claimed next, the run fails with the stored failure instead of running the step.
    let mut a = f.attempt();
    claim(
        &mut a,
        &ClaimedRun {
            poison: Some(failure.clone()),
            ..run
        },
    );
    facts(&mut a, Vec::new(), Default::default());
    let t = finish(&mut a);
    assert_eq!(t.status, "rolled_back");
    let recorded: Failure = serde_json::from_str(&t.failure.unwrap()).unwrap();
    assert_eq!(recorded.message(), failure.message());
}

#[test]
fn a_recovery_that_fails_too_ends_the_attempt_with_the_first_error() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(&mut a, &attempt_no(0));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    finish(&mut a);
    a.handle_output(Err(Error::Connect("reset".to_owned())));
    assert!(matches!(a.poll(), Io::Rollback));
    a.handle_output(Err(Error::Connect("still gone".to_owned())));
    let report = tests::done(&mut a);
    match report.outcome {
        Outcome::Failed(Error::Connect(m)) => assert_eq!(m, "reset"),
        other => panic!("{other:?}"),
    }
    assert!(report.postponed.is_none());

    // A failed commit is not followed by anything: it may have committed.
    let mut a = f.attempt();
    let run = claimed(RunView {
        step_index: 1,
        ..RunView::default()
    });
    claim(&mut a, &run);
    finish(&mut a);
    a.handle_output(Ok(Output::Applied(CHILD)));
    assert!(matches!(a.poll(), Io::Commit));
    a.handle_output(Err(Error::Connect("reset".to_owned())));
    assert!(matches!(tests::done(&mut a).outcome, Outcome::Failed(_)));
}

#[test]
fn failures_that_could_not_be_recorded_are_recorded_by_the_next_attempt() {
    let f = Fixture::new(&["a"]);
    // The connection died with the failure: the recovery fails too, and the failure is owed.
    let mut a = f.attempt();
    let run = attempt_no(0);
    claim(&mut a, &run);
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    finish(&mut a);
    a.handle_output(Err(Error::Connect("gone".to_owned())));
    assert!(matches!(a.poll(), Io::Rollback));
    a.handle_output(Err(Error::Connect("still gone".to_owned())));
    let report = tests::done(&mut a);
    assert_eq!(report.unrecorded.len(), 1);
    assert_eq!(report.unrecorded[0].0, run.id);
    assert!(report.unrecorded[0].1.contains("gone"));

    // The next attempt records it first, then goes on as usual.
    let other = RunId::from_uuid(uuid::Uuid::from_u128(7));
    let mut a = f
        .attempt()
        .owing(vec![report.unrecorded[0].clone(), (other, "x".into())]);
    for expected in [run.id, other] {
        match a.poll() {
            Io::RunAutocommit(Stmt::Postpone(p)) => assert_eq!(p.run, expected.as_uuid()),
            io => panic!("expected a postponement, got {io:?}"),
        }
        a.handle_output(Ok(Output::Postponed(None)));
    }
    assert!(matches!(a.poll(), Io::Claim(_)));

    // If it cannot record them either, it owes them still and tries its own work anyway.
    let mut a = f
        .attempt()
        .owing(vec![(run.id, "e".into()), (other, "x".into())]);
    assert!(matches!(a.poll(), Io::RunAutocommit(Stmt::Postpone(_))));
    a.handle_output(Err(Error::Connect("down".to_owned())));
    assert!(matches!(a.poll(), Io::Claim(_)));
    a.handle_output(Err(Error::Connect("down".to_owned())));
    let report = tests::done(&mut a);
    let owed: Vec<RunId> = report.unrecorded.iter().map(|(r, _)| *r).collect();
    assert_eq!(owed, [run.id, other]);
}
