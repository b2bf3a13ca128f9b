//! Scripted attempts that end their step in one round trip ([`Io::Conclude`]): what is asked
//! together, and what each way of failing means (see `attempt_tests.rs` for the helpers).

use super::tests::{self, *};
use super::*;
use crate::core::RunView;
use crate::error::Error;
use crate::proto::{Conclude, Concluded};

/// Runs a one-step run (top-level or a child) to its conclusion.
fn concluding<'h>(f: &'h Fixture, top_level: bool, chain: bool) -> (Attempt<'h>, Conclude<'h>) {
    let mut a = f.attempt().conclude_steps(true).chain_claims(chain);
    let mut run = claimed(RunView::default());
    run.top_level = top_level;
    tests::claim(&mut a, &run);
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), true));
    match a.poll() {
        Io::Conclude(c) => (a, c),
        other => panic!("expected the conclusion, got {other:?}"),
    }
}

#[test]
fn a_root_concludes_with_the_next_claim_and_no_release() {
    let f = Fixture::new(&["a"]);
    let (mut a, c) = concluding(&f, true, true);
    assert_eq!(c.finish.status, "committed");
    assert!(c.release.is_none(), "a root has no parent");
    assert!(c.claim.is_some());
    assert_eq!(
        c.xact,
        Some(7),
        "the claim's transaction id, to check the commit with"
    );
    let next = Claimed::Due(Box::new(claimed(RunView::default())));
    a.handle_output(Ok(Output::Concluded(Concluded {
        applied: Applied {
            is_root: true,
            release_pending: false,
        },
        released: None,
        claimed: Some(next.clone()),
    })));
    let report = tests::done(&mut a);
    assert!(report.committed && report.root_finished);
    assert!(matches!(report.outcome, Outcome::Ran));
    assert_eq!(report.next_claim, Some(next));
}

#[test]
fn a_finishing_child_releases_its_parent_in_the_same_round_trip() {
    let f = Fixture::new(&["a"]);
    let (mut a, c) = concluding(&f, false, false);
    assert!(c.release.is_some());
    assert!(c.claim.is_none(), "not asked to chain");
    a.handle_output(Ok(Output::Concluded(Concluded {
        applied: Applied {
            is_root: false,
            release_pending: true,
        },
        released: Some(Some("parent".to_owned())),
        claimed: None,
    })));
    let report = tests::done(&mut a);
    assert!(report.committed && !report.root_finished);
    assert_eq!(report.woken, ["parent"]);
    assert!(report.release_error.is_none());
}

#[test]
fn a_step_that_does_not_finish_its_run_releases_nothing() {
    let f = Fixture::new(&["a", "b"]);
    let (_, c) = concluding(&f, false, true);
    assert_eq!(c.finish.status, "active");
    assert!(c.release.is_none());
}

#[test]
fn a_transition_that_failed_is_handled_as_before() {
    let f = Fixture::new(&["a"]);
    let (mut a, _) = concluding(&f, true, true);
    a.handle_conclude_error(ConcludeError::NotCommitted(Error::Connect("gone".into())));
    // The driver ended the transaction already; it answers the rollback at once.
    let report = postponed(&mut a);
    assert!(!report.committed);
}

#[test]
fn a_failure_after_the_commit_keeps_the_step_committed() {
    let f = Fixture::new(&["a"]);
    let (mut a, _) = concluding(&f, true, true);
    a.handle_conclude_error(ConcludeError::Committed(Error::Connect("claim".into())));
    let report = tests::done(&mut a);
    assert!(report.committed && report.root_finished);
    assert!(matches!(report.outcome, Outcome::Failed(_)));
    assert!(report.next_claim.is_none());

    // For a child, the release may not have happened: a sweep does it.
    let (mut a, _) = concluding(&f, false, true);
    a.handle_conclude_error(ConcludeError::Committed(Error::Connect("release".into())));
    let report = tests::done(&mut a);
    assert!(report.committed);
    assert!(matches!(report.outcome, Outcome::Ran));
    assert!(report.release_error.is_some());
}

#[test]
fn an_unknown_commit_is_retried_from_the_database() {
    let f = Fixture::new(&["a"]);
    let (mut a, _) = concluding(&f, true, true);
    a.handle_conclude_error(ConcludeError::Unknown(Error::Connect("reset".into())));
    let report = tests::done(&mut a);
    assert!(!report.committed);
    assert!(matches!(report.outcome, Outcome::Failed(_)));
}

#[test]
fn without_conclusions_the_transition_comes_alone() {
    let f = Fixture::new(&["a"]);
    let mut a = f.attempt().chain_claims(true);
    tests::claim(&mut a, &claimed(RunView::default()));
    user_call(&mut a);
    a.handle_user(returned(Ok(Next::Continue), true));
    finish(&mut a);
}

#[test]
fn a_release_the_conclusion_did_not_carry_is_left_to_a_sweep() {
    let f = Fixture::new(&["a"]);
    let (mut a, _) = concluding(&f, true, true);
    let next = Claimed::Due(Box::new(claimed(RunView::default())));
    // The database says the run has a parent to release, though the claim said it had none.
    a.handle_output(Ok(Output::Concluded(Concluded {
        applied: Applied {
            is_root: false,
            release_pending: true,
        },
        released: None,
        claimed: Some(next.clone()),
    })));
    let report = tests::done(&mut a);
    assert!(report.committed);
    assert!(report.release_error.is_some(), "a sweep releases it");
    assert_eq!(report.next_claim, Some(next));
}
