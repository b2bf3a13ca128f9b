//! Scripted attempts: every answer a database or user code could give, fed by hand. No
//! PostgreSQL is involved; each test checks the exact I/O the machine asks for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::core::decide::ChildrenOf;
use crate::core::schedule::Backoff;
use crate::core::{InstanceKind, RetryPolicy, RunStatus, RunView};
use crate::error::Error;
use crate::failure::{StepError, StepResult};
use crate::ids::{MessageId, RootId, RunId, new_uuid};
use crate::options::EmitOptions;
use crate::proto::{Claimed, ClaimedRun, Emitted, Postponed};
use crate::saga::Emission;

/// A handler named `h` with the given steps (`+c`: compensates, `+f`: handles child failures).
pub(super) struct Fixture {
    name: Arc<str>,
    steps: Vec<StepShape>,
}

impl Fixture {
    pub(super) fn new(steps: &[&str]) -> Fixture {
        Fixture {
            name: Arc::from("h"),
            steps: steps
                .iter()
                .map(|s| {
                    let mut parts = s.split('+');
                    let name = parts.next().unwrap_or_default();
                    let flags: Vec<&str> = parts.collect();
                    StepShape {
                        name: name.to_owned(),
                        compensates: flags.contains(&"c"),
                        handles_child_failures: flags.contains(&"f"),
                        retry: RetryPolicy::default(),
                    }
                })
                .collect(),
        }
    }

    pub(super) fn attempt(&self) -> Attempt<'_> {
        let handler = HandlerRef {
            name: &self.name,
            source: "h[1]",
            steps: &self.steps,
            versions: &[],
            served: "",
        };
        Attempt::new(
            handler,
            "worker-1",
            &[],
            Backoff::default(),
            std::time::SystemTime::UNIX_EPOCH,
        )
    }
}

pub(crate) fn claimed(view: RunView) -> ClaimedRun {
    ClaimedRun {
        id: RunId::from_uuid(new_uuid()),
        root_id: RootId::from_uuid(new_uuid()),
        message_id: MessageId::from_uuid(new_uuid()),
        topic: "t".to_owned(),
        view,
        payload: r#"{"order":7}"#.to_owned(),
        failure: None,
        give_up: None,
        run_count: 0,
        context: None,
        rollback_context: None,
        poison: None,
        retries: 0,
        top_level: true,
        launch_context: None,
        occurrence: None,
        chain_stop: None,
        version: None,
        xact: Some(7),
    }
}

pub(super) fn ok(a: &mut Attempt<'_>) {
    a.handle_output(Ok(Output::Done));
}

/// Claims `run` (in a new transaction) and answers the announcement: the attempt's next
/// question is whatever the run's state leads to.
pub(super) fn claim(a: &mut Attempt<'_>, run: &ClaimedRun) {
    match a.poll() {
        Io::Claim(c) => assert_eq!((c.handler, c.worker), ("h", "worker-1")),
        other => panic!("{other:?}"),
    }
    a.handle_output(Ok(Output::Claimed(Claimed::Due(Box::new(run.clone())))));
    assert!(matches!(a.poll(), Io::Announce));
    a.handle_announced();
}

/// What user code returns, having touched the transaction or not, emitting nothing.
pub(super) fn returned(result: StepResult<Next>, touched: bool) -> UserOutcome {
    UserOutcome {
        result: Ok(result),
        emissions: Vec::new(),
        savepoint: if touched {
            SavepointState::Touched
        } else {
            SavepointState::Untouched
        },
        wake: Wake::Now,
        context: CooperationContext::new(),
    }
}

pub(super) fn child(topic: &str) -> Emission {
    let mut e = Emission::new(topic, &json!({"n": 1}), &EmitOptions::new(), 1 << 20).unwrap();
    e.scoped = true;
    e
}

pub(super) fn user_call(a: &mut Attempt<'_>) -> UserCall {
    match a.poll() {
        Io::CallUser(call) => call,
        other => panic!("expected user code, got {other:?}"),
    }
}

pub(super) fn finish<'h>(a: &mut Attempt<'h>) -> crate::proto::Finish<'h> {
    match a.poll() {
        Io::Run(Stmt::Finish(f)) => f,
        other => panic!("expected the transition, got {other:?}"),
    }
}

/// Answers the reads of the run's instances and children.
pub(super) fn facts(
    a: &mut Attempt<'_>,
    instances: Vec<Instance>,
    children: HashMap<u32, ChildrenOf>,
) {
    assert!(matches!(a.poll(), Io::Run(Stmt::Instances(_))));
    a.handle_output(Ok(Output::Instances(instances)));
    assert!(matches!(a.poll(), Io::Run(Stmt::Children(_))));
    a.handle_output(Ok(Output::Children(children)));
}

/// Answers the transition, the commit, and (if asked) the release; returns the report.
pub(super) fn commit(a: &mut Attempt<'_>, applied: Applied, released: Option<&str>) -> Report {
    a.handle_output(Ok(Output::Applied(applied)));
    assert!(matches!(a.poll(), Io::Commit));
    ok(a);
    if applied.release_pending {
        assert!(matches!(a.poll(), Io::RunAutocommit(Stmt::Release(_))));
        a.handle_output(Ok(Output::Released(released.map(str::to_owned))));
    }
    done(a)
}

/// Answers the rollback after an infrastructure fault on a claimed run and the postponement
/// that follows it; returns the report.
pub(super) fn postponed(a: &mut Attempt<'_>) -> Report {
    assert!(matches!(a.poll(), Io::Rollback));
    ok(a);
    match a.poll() {
        Io::RunAutocommit(Stmt::Postpone(p)) => assert!(p.base_us > 0.0 && p.max_us >= p.base_us),
        other => panic!("expected the postponement, got {other:?}"),
    }
    a.handle_output(Ok(Output::Postponed(Some(Postponed {
        failures: 1,
        wait: Duration::from_millis(40),
    }))));
    let report = done(a);
    assert!(matches!(report.outcome, Outcome::Failed(_)));
    assert!(report.postponed.is_some());
    report
}

pub(super) fn done(a: &mut Attempt<'_>) -> Report {
    match a.poll() {
        Io::Done(report) => report,
        other => panic!("expected the end, got {other:?}"),
    }
}

pub(super) const CHILD: Applied = Applied {
    is_root: false,
    release_pending: false,
};

pub(super) fn step_instance(seq: u32, step: usize) -> Instance {
    Instance {
        seq,
        step,
        iteration: 0,
        cfh: None,
        kind: InstanceKind::Step,
    }
}

#[test]
fn a_happy_step_writes_its_emissions_then_its_transition() {
    let f = Fixture::new(&["a", "b"]);
    let mut a = f.attempt();
    let run = claimed(RunView::default());
    claim(&mut a, &run);
    let call = user_call(&mut a);
    assert_eq!(call.kind, CallKind::Step);
    assert_eq!(
        (
            call.info.step_index,
            call.info.step_name.as_str(),
            call.info.phase
        ),
        (0, "a", Phase::Step)
    );
    assert_eq!(&*call.info.payload, r#"{"order":7}"#);
    let emissions = vec![child("payments"), child("shipping")];
    let ids: Vec<_> = emissions.iter().map(|e| e.id).collect();
    let mut outcome = returned(Ok(Next::Continue), true);
    outcome.emissions = emissions;
    outcome.wake = Wake::After(Duration::from_secs(5));
    a.handle_user(outcome);
    match a.poll() {
        Io::Run(Stmt::Emit(e)) => {
            assert_eq!(e.ids, ids);
            assert_eq!(
                e.check,
                Some(false),
                "the happy path's give-up check runs first"
            );
            assert_eq!(e.step.as_deref(), Some("a"));
            assert_eq!(e.run, Some(run.id.as_uuid()));
        }
        other => panic!("{other:?}"),
    }
    a.handle_output(Ok(Output::Emitted(Emitted {
        children: 3,
        handlers: vec!["pay".to_owned(), "ship".to_owned()],
        ..Emitted::default()
    })));
    let t = finish(&mut a);
    assert_eq!(
        (t.status, t.step_index, t.pending_children),
        ("active", 1, 3)
    );
    assert_eq!(t.event_kinds, ["SUSPENDED"]);
    assert_eq!(t.messages, ids);
    assert_eq!(t.wake_in_us, Some(5_000_000));
    assert_eq!((t.check, t.write_context), (Some(false), true));
    assert_eq!(t.instance_kind, Some("step"));
    let report = commit(&mut a, CHILD, None);
    assert!(matches!(report.outcome, Outcome::Ran));
    assert!(report.committed && !report.root_finished);
    assert_eq!(report.woken, ["pay", "ship"]);
    assert_eq!(report.step_failures, 0);
}

#[test]
fn a_finished_child_releases_its_parent_after_the_commit() {
    let f = Fixture::new(&["only"]);
    let mut a = f.attempt();
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    let t = finish(&mut a);
    assert_eq!(t.status, "committed");
    assert_eq!(t.event_kinds, ["SUSPENDED", "COMMITTED"]);
    let applied = Applied {
        is_root: false,
        release_pending: true,
    };
    let report = commit(&mut a, applied, Some("parent"));
    assert_eq!(report.woken, ["parent"]);
    assert!(report.committed && report.release_error.is_none());
}

#[test]
fn the_release_failing_after_the_commit_is_left_to_a_sweep() {
    let f = Fixture::new(&["only"]);
    let mut a = f.attempt();
    let run = claimed(RunView::default());
    claim(&mut a, &run);
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    finish(&mut a);
    a.handle_output(Ok(Output::Applied(Applied {
        is_root: false,
        release_pending: true,
    })));
    assert!(matches!(a.poll(), Io::Commit));
    ok(&mut a);
    assert!(matches!(a.poll(), Io::RunAutocommit(Stmt::Release(_))));
    a.handle_output(Err(Error::Connect("connection reset".to_owned())));
    let report = done(&mut a);
    assert!(
        matches!(report.outcome, Outcome::Ran),
        "the step itself committed"
    );
    assert!(report.committed);
    let (released, error) = report.release_error.expect("reported");
    assert_eq!(released, run.id);
    assert!(error.to_string().contains("connection reset"));
}

#[test]
fn a_transaction_left_aborted_by_user_code_is_its_failure() {
    let f = Fixture::new(&["a", "b"]);
    let mut a = f.attempt();
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    // The code ran a statement that failed, ignored the error, and returned success.
    a.handle_user(returned(Ok(Next::Continue), true));
    finish(&mut a);
    a.handle_fault(Fault::Aborted(Error::Connect(
        "current transaction is aborted".to_owned(),
    )));
    assert!(matches!(a.poll(), Io::RollbackToSavepoint));
    ok(&mut a);
    facts(&mut a, Vec::new(), HashMap::new());
    let t = finish(&mut a);
    assert_eq!(t.status, "rolled_back");
    assert_eq!(t.event_kinds, ["ROLLING_BACK", "ROLLED_BACK"]);
    let failure = t.failure.expect("recorded");
    assert!(
        failure.contains("structured_cooperation::TransactionAborted"),
        "{failure}"
    );
    assert_eq!(t.check, None);
    let report = commit(&mut a, CHILD, None);
    assert_eq!(report.step_failures, 1);
}

#[test]
fn an_aborted_transaction_without_user_writes_is_the_engines() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    finish(&mut a);
    a.handle_fault(Fault::Aborted(Error::Connect("aborted".to_owned())));
    let report = postponed(&mut a);
    assert_eq!(report.step_failures, 0);
}

#[test]
fn a_panicking_step_fails_the_run_with_the_panic() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    let mut outcome = returned(Ok(Next::Continue), false);
    outcome.result = Err(Box::new("the step blew up"));
    outcome.emissions = vec![child("never-written")];
    a.handle_user(outcome);
    // Nothing it emitted is written, and there is no savepoint to roll back to.
    facts(&mut a, Vec::new(), HashMap::new());
    let t = finish(&mut a);
    assert_eq!(t.event_kinds, ["ROLLING_BACK", "ROLLED_BACK"]);
    assert!(t.messages.is_empty());
    let failure = t.failure.expect("recorded");
    assert!(failure.contains("the step blew up"), "{failure}");
    let report = commit(&mut a, CHILD, None);
    assert_eq!(report.step_failures, 1);
    assert!(report.woken.is_empty());
}

#[test]
fn a_failing_step_rolls_back_to_its_savepoint_and_undoes_earlier_steps() {
    let f = Fixture::new(&["a+c", "b"]);
    let mut a = f.attempt();
    let run = claimed(RunView {
        step_index: 1,
        instances: 1,
        ..RunView::default()
    });
    claim(&mut a, &run);
    let call = user_call(&mut a);
    assert_eq!(call.info.step_index, 1);
    a.handle_user(returned(Err(StepError::msg("card declined")), true));
    assert!(matches!(a.poll(), Io::RollbackToSavepoint));
    ok(&mut a);
    facts(&mut a, vec![step_instance(0, 0)], HashMap::new());
    let t = finish(&mut a);
    // Step a's compensation runs in a transaction of its own.
    assert_eq!((t.status, t.rollback_cursor), ("rolling_back", Some(1)));
    assert_eq!(t.event_kinds, ["ROLLING_BACK", "SUSPENDED"]);
    assert_eq!(t.event_steps[0].as_deref(), Some("b"));
    commit(&mut a, CHILD, None);
}

#[test]
fn an_invalid_goto_fails_the_step_before_its_emissions_are_written() {
    let f = Fixture::new(&["a", "b"]);
    let mut a = f.attempt();
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    let mut outcome = returned(Ok(Next::GoTo(9)), false);
    outcome.emissions = vec![child("x")];
    a.handle_user(outcome);
    facts(&mut a, Vec::new(), HashMap::new());
    let t = finish(&mut a);
    let failure = t.failure.expect("recorded");
    assert!(failure.contains("InvalidGoTo"), "{failure}");
}

#[test]
fn a_give_up_raised_by_the_end_of_step_check_discards_the_step() {
    let f = Fixture::new(&["a", "b"]);
    let mut a = f.attempt();
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    let mut outcome = returned(Ok(Next::Continue), true);
    outcome.emissions = vec![child("payments")];
    a.handle_user(outcome);
    assert!(matches!(a.poll(), Io::Run(Stmt::Emit(_))));
    a.handle_fault(Fault::GiveUp(Failure::new(
        "structured_cooperation::Cancelled",
        "the customer left",
        "ui",
    )));
    assert!(matches!(a.poll(), Io::Rollback));
    ok(&mut a);
    let report = done(&mut a);
    assert!(matches!(report.outcome, Outcome::Ran));
    assert!(report.gave_up_after_step && !report.committed);
    assert_eq!(report.step_failures, 0);
}

#[test]
fn a_run_that_must_give_up_before_its_step_starts_its_rollback() {
    let f = Fixture::new(&["a", "b"]);
    let mut a = f.attempt();
    let mut run = claimed(RunView {
        step_index: 1,
        instances: 1,
        ..RunView::default()
    });
    run.give_up = Some(Failure::new(
        "structured_cooperation::MissedDeadline",
        "too late",
        "x",
    ));
    claim(&mut a, &run);
    facts(&mut a, vec![step_instance(0, 0)], HashMap::new());
    let t = finish(&mut a);
    assert_eq!(t.event_kinds[0], "ROLLING_BACK");
    assert_eq!(t.event_steps[0].as_deref(), Some("b"));
    assert!(t.failure.expect("recorded").contains("too late"));
    assert!(
        !t.write_context,
        "no code ran and no rollback context is pending"
    );
}

#[test]
fn infrastructure_errors_before_user_code_end_the_attempt() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    assert!(matches!(a.poll(), Io::Claim(_)));
    a.handle_output(Err(Error::Connect("reset".to_owned())));
    let report = done(&mut a);
    assert!(matches!(report.outcome, Outcome::Failed(Error::Connect(_))));
    assert!(!report.committed);
}

#[test]
fn infrastructure_errors_after_user_code_are_not_the_users() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), true));
    finish(&mut a);
    a.handle_output(Err(Error::Connect("connection reset".to_owned())));
    // No rollback to the savepoint, no recorded failure: the run is pushed back and retried
    // as it was.
    let report = postponed(&mut a);
    assert_eq!(report.step_failures, 0);
}

#[test]
fn nothing_due_rolls_back_and_says_when_to_come_back() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    assert!(matches!(a.poll(), Io::Claim(_)));
    a.handle_output(Ok(Output::Claimed(Claimed::Nothing)));
    assert!(matches!(a.poll(), Io::Rollback));
    ok(&mut a);
    assert!(matches!(done(&mut a).outcome, Outcome::Empty(None)));

    let mut a = f.attempt();
    a.poll();
    let later = Claimed::Later(Duration::from_millis(250));
    a.handle_output(Ok(Output::Claimed(later)));
    assert!(matches!(a.poll(), Io::Rollback));
    ok(&mut a);
    match done(&mut a).outcome {
        Outcome::Empty(Some(wait)) => assert_eq!(wait, Duration::from_millis(250)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_last_step_done_and_children_finished_commits_without_user_code() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(
        &mut a,
        &claimed(RunView {
            step_index: 1,
            instances: 1,
            ..RunView::default()
        }),
    );
    let t = finish(&mut a);
    assert_eq!((t.status, t.check), ("committed", Some(false)));
    let root = Applied {
        is_root: true,
        release_pending: false,
    };
    let report = commit(&mut a, root, None);
    assert!(report.root_finished);
}

#[test]
fn a_stale_claim_of_a_finished_run_leaves_no_trace() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    claim(
        &mut a,
        &claimed(RunView {
            status: RunStatus::Committed,
            ..RunView::default()
        }),
    );
    assert!(matches!(a.poll(), Io::Rollback));
    ok(&mut a);
    let report = done(&mut a);
    assert!(matches!(report.outcome, Outcome::Ran) && !report.committed);
}

#[test]
#[should_panic(expected = "poll called twice")]
fn polling_twice_without_an_answer_is_a_driver_bug() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt();
    a.poll();
    a.poll();
}

#[test]
fn a_chained_commit_claims_the_next_run_and_the_next_attempt_resumes_with_it() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt().chain_claims(true);
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), true));
    finish(&mut a);
    a.handle_output(Ok(Output::Applied(Applied {
        is_root: true,
        release_pending: false,
    })));
    match a.poll() {
        Io::CommitClaim(c) => assert_eq!((c.handler, c.worker), ("h", "worker-1")),
        other => panic!("expected the commit with the next claim, got {other:?}"),
    }
    let next = claimed(RunView::default());
    let next_claim = Claimed::Due(Box::new(next.clone()));
    a.handle_output(Ok(Output::Claimed(next_claim.clone())));
    let report = done(&mut a);
    assert!(report.committed);
    assert!(matches!(report.outcome, Outcome::Ran));
    assert_eq!(report.next_claim, Some(next_claim.clone()));

    // The next attempt starts from that claim: no claim of its own.
    let mut b = f.attempt().resume(next_claim);
    assert!(matches!(b.poll(), Io::Announce));
    b.handle_announced();
    assert_eq!(user_call(&mut b).info.run_id, next.id);

    // Nothing due: the resumed attempt ends the transaction the commit opened.
    let mut c = f.attempt().resume(Claimed::Nothing);
    assert!(matches!(c.poll(), Io::Rollback));
    ok(&mut c);
    assert!(matches!(done(&mut c).outcome, Outcome::Empty(None)));
}

#[test]
fn a_commit_followed_by_a_release_does_not_claim() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt().chain_claims(true);
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    finish(&mut a);
    let report = commit(
        &mut a,
        Applied {
            is_root: false,
            release_pending: true,
        },
        Some("parent"),
    );
    assert!(report.next_claim.is_none());
    assert_eq!(report.woken, ["parent"]);
}

#[test]
fn a_failed_chained_commit_is_a_failed_commit() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt().chain_claims(true);
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    finish(&mut a);
    a.handle_output(Ok(Output::Applied(Applied {
        is_root: true,
        release_pending: false,
    })));
    assert!(matches!(a.poll(), Io::CommitClaim(_)));
    a.handle_output(Err(Error::Connect("reset".to_owned())));
    let report = done(&mut a);
    assert!(matches!(report.outcome, Outcome::Failed(_)));
    assert!(!report.committed);
    assert!(report.next_claim.is_none());
}

#[test]
fn a_chained_commit_may_be_answered_without_a_claim() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt().chain_claims(true);
    claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), false));
    finish(&mut a);
    a.handle_output(Ok(Output::Applied(Applied {
        is_root: true,
        release_pending: false,
    })));
    assert!(matches!(a.poll(), Io::CommitClaim(_)));
    // The driver committed only (failures are owed): the next attempt starts afresh.
    ok(&mut a);
    let report = done(&mut a);
    assert!(report.committed && report.root_finished);
    assert!(matches!(report.outcome, Outcome::Ran));
    assert!(report.next_claim.is_none());
}
