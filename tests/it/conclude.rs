//! A step ends in one round trip (its transition, the commit, a finished child's release and
//! the next claim): what happens when that round trip fails after the commit, or at it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use structured_cooperation::{RunStatus, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{Gate, TestDb, WAIT, eventually};

/// The claim that follows a step's commit fails (a trigger refuses the `SEEN` entry of the
/// run it claims, once): the step stays committed and is neither run again nor failed, and it
/// is counted as a committed step; the refused run is claimed again and finishes.
fn a_claim_failing_after_the_commit_keeps_the_step_committed<E: Engine>() {
    let mut db = TestDb::new("conclude_claim_fails");
    let ran = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    let saga = {
        let (ran, gate) = (ran.clone(), gate.clone());
        E::saga("one")
            .step(
                move |_: &mut StepContext<'_, E::X>, p: &Value| -> StepResult {
                    ran.fetch_add(1, Ordering::SeqCst);
                    if p["first"] == json!(true) {
                        gate.pass();
                    }
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    // One worker: the first run's conclusion is what claims the second.
    let runtime = E::runtime(&db)
        .workers(1)
        .subscribe("t", saga)
        .start()
        .unwrap();
    // (The trigger is in place before any step holds a lock on the history.)
    let s = db.schema.clone();
    db.exec(&format!(
        "CREATE TABLE {s}.refuse_for (root uuid); CREATE SEQUENCE {s}.refusals; \
         CREATE FUNCTION {s}.refuse_seen() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.event = 'SEEN' AND NEW.root_id IN (SELECT root FROM {s}.refuse_for) \
              AND nextval('{s}.refusals') = 1 THEN \
             RAISE EXCEPTION 'no claims today' USING ERRCODE = 'XX000'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_seen BEFORE INSERT ON {s}.history \
         FOR EACH ROW EXECUTE FUNCTION {s}.refuse_seen()"
    ));
    let first = runtime.launch("t", &json!({ "first": true })).unwrap();
    gate.wait_for_waiting(1);
    let second = runtime.launch("t", &json!({ "first": false })).unwrap();
    db.exec(&format!("INSERT INTO {s}.refuse_for VALUES ('{second}')"));
    gate.open();
    assert!(runtime.wait_for(first, WAIT).unwrap().is_committed());
    assert!(runtime.wait_for(second, WAIT).unwrap().is_committed());
    assert!(
        db.query_i64("SELECT last_value FROM __S__.refusals") >= 1,
        "the claim after the first run's commit was refused"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 2, "each step ran once");
    // Both steps counted as committed, the refused claim as an infrastructure error.
    eventually("both steps to be counted", || runtime.stats().steps >= 2);
    assert_eq!(runtime.stats().steps, 2);
    assert!(runtime.stats().infra_errors >= 1);
    assert_eq!(runtime.tree(first).unwrap()[0].infra_failures, 0);
    runtime.shutdown().unwrap();
}

/// A constraint checked at commit refuses what the step wrote: nothing is committed, and the
/// run fails with the refusal instead of being retried forever.
fn a_commit_refused_by_a_deferred_constraint_fails_the_run<E: Engine>() {
    let mut db = TestDb::new("conclude_deferred");
    let s = db.schema.clone();
    let ran = Arc::new(AtomicUsize::new(0));
    let saga = {
        let (ran, s) = (ran.clone(), s.clone());
        E::saga("book")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    ran.fetch_add(1, Ordering::SeqCst);
                    // Both rows go in; the duplicate is only found at the commit.
                    E::execute(ctx, &format!("INSERT INTO {s}.seats VALUES (7), (7)"), &[])?;
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    // One worker: another could claim the run between the rollback and the mark that fails it.
    let runtime = E::runtime(&db)
        .workers(1)
        .subscribe("t", saga)
        .start()
        .unwrap();
    db.exec(&format!(
        "CREATE TABLE {s}.seats (seat int, CONSTRAINT one_per_seat UNIQUE (seat) \
         DEFERRABLE INITIALLY DEFERRED)"
    ));
    let root = runtime.launch("t", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::DataRejected");
    assert!(failure.message().contains("one_per_seat"), "{failure}");
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {s}.seats")), 0);
    assert_eq!(ran.load(Ordering::SeqCst), 1, "not retried");
    runtime.shutdown().unwrap();
}

both!(
    a_claim_failing_after_the_commit_keeps_the_step_committed,
    a_commit_refused_by_a_deferred_constraint_fails_the_run,
);
