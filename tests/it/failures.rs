//! Failing steps: recorded with their error (or panic), the run rolls back, and the worker
//! thread survives. (The rollback path itself is exercised in `rollback.rs`.)

use serde::Deserialize;
use serde_json::{Value, json};
use structured_cooperation::{EventKind, RunStatus, Saga, StepContext, StepError, StepResult};

use crate::util::{ExecLog, Gate, TestDb, WAIT, eventually, history_of};

#[derive(Debug)]
struct CardDeclined;

impl std::fmt::Display for CardDeclined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}

impl std::error::Error for CardDeclined {}

/// One step that fails when the payload says so, in the requested way.
fn flaky() -> Saga {
    Saga::builder("flaky")
        .step(|_ctx, p: &Value| -> StepResult {
            match p["fail"].as_str() {
                Some("error") => Err(CardDeclined.into()),
                Some("panic") => panic!("boom at {}", p["n"]),
                _ => Ok(()),
            }
        })
        .build()
        .unwrap()
}

#[test]
fn a_step_error_is_recorded_and_the_worker_survives() {
    let db = TestDb::new("step_error");
    // One worker: if the failure killed it, nothing after it would run.
    let runtime = db
        .runtime()
        .workers(1)
        .subscribe("pay", flaky())
        .start()
        .unwrap();
    let failed = runtime.launch("pay", &json!({"fail": "error"})).unwrap();
    let ok = runtime.launch("pay", &json!({"fail": "no"})).unwrap();
    let outcome = runtime.wait_for(failed, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert!(runtime.wait_for(ok, WAIT).unwrap().is_committed());
    assert_eq!(
        history_of(&runtime, failed),
        [
            "EMITTED@-",
            "SEEN@flaky",
            "ROLLING_BACK(0)@flaky",
            "ROLLED_BACK(Rollback of 0[0,])@flaky"
        ]
    );
    let history = runtime.history(failed).unwrap();
    let failure = history[2]
        .failure
        .as_ref()
        .expect("ROLLING_BACK carries the failure");
    assert!(failure.kind().ends_with("CardDeclined"), "{failure}");
    assert_eq!(failure.message(), "card declined");
    assert_eq!(failure.source(), format!("flaky[{}]", runtime.instance()));
    assert_eq!(failure.step(), Some("0"));
    assert_eq!(outcome.runs()[0].failure.as_ref(), Some(failure));
    // Counted when the attempt that did it is over, which may be just after the
    // tree is seen finished.
    eventually("the step_failures to be counted", || {
        runtime.stats().step_failures >= 1
    });
    assert_eq!(runtime.stats().step_failures, 1);
}

#[test]
fn a_panicking_step_is_recorded_and_the_worker_survives() {
    let db = TestDb::new("step_panic");
    let runtime = db
        .runtime()
        .workers(1)
        .subscribe("pay", flaky())
        .start()
        .unwrap();
    let roots: Vec<_> = (0..3)
        .map(|n| {
            let fail = if n == 1 { "panic" } else { "no" };
            runtime
                .launch("pay", &json!({"fail": fail, "n": n}))
                .unwrap()
        })
        .collect();
    let outcomes: Vec<_> = roots
        .iter()
        .map(|&r| runtime.wait_for(r, WAIT).unwrap())
        .collect();
    assert!(outcomes[0].is_committed() && outcomes[2].is_committed());
    let failure = outcomes[1].runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "panic");
    assert_eq!(failure.message(), "boom at 1");
    runtime.shutdown().unwrap();
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
}

#[test]
fn a_payload_that_does_not_fit_the_handler_type_is_a_clear_failure() {
    let db = TestDb::new("payload_mismatch");
    let saga = Saga::builder("orders")
        .step(|_ctx, _order: &Order| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = db.runtime().subscribe("orders", saga).start().unwrap();
    let root = runtime
        .launch("orders", &json!({"id": "not a number"}))
        .unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::PayloadMismatch");
    assert!(
        failure.message().contains(&format!(
            "the payload of message {root} on topic \"orders\" does not deserialize into"
        )) && failure.message().contains("Order"),
        "{failure}"
    );
    assert!(failure.message().contains("invalid type"), "{failure}");
    // A well-formed payload still works.
    let good = runtime.launch("orders", &json!({"id": 7})).unwrap();
    assert!(runtime.wait_for(good, WAIT).unwrap().is_committed());
}

#[test]
fn a_failed_child_fails_its_parent_by_default() {
    let db = TestDb::new("failed_child");
    let log = ExecLog::default();
    let root = {
        let (log, log2) = (log.clone(), log.clone());
        Saga::builder("root-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                log.push("root:s1");
                ctx.emit("pay", &json!({"fail": "error"}))?;
                ctx.emit("pay", &json!({"fail": "no"}))?;
                Ok(())
            })
            .step(move |_ctx, _: &Value| -> StepResult {
                log2.push("root:s2");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("pay", flaky())
        .start()
        .unwrap();
    let root_id = runtime.launch("root-topic", &json!({})).unwrap();
    let outcome = runtime.wait_for(root_id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert_eq!(log.entries(), ["root:s1"], "the second step never runs");
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::ChildRolledBack");
    assert_eq!(failure.step(), Some("0"));
    assert_eq!(
        failure.causes().len(),
        1,
        "only the failed child is a cause"
    );
    assert!(failure.causes()[0].kind().ends_with("CardDeclined"));
    let history = runtime.history(root_id).unwrap();
    let child_done = history
        .iter()
        .position(|e| e.kind == EventKind::RolledBack)
        .unwrap();
    let parent_fails = history
        .iter()
        .position(|e| e.to_string() == "ROLLING_BACK(0)@root-handler")
        .unwrap();
    assert!(
        child_done < parent_fails,
        "the parent failed after its child finished"
    );
}

#[test]
fn a_step_that_ignores_a_failed_statement_is_failed_clearly() {
    let db = TestDb::new("aborted_tx");
    let saga = Saga::builder("careless")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            let _ = ctx.tx().execute("SELECT 1/0", &[]);
            Ok(())
        })
        .build()
        .unwrap();
    let runtime = db.runtime().subscribe("t", saga).start().unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::TransactionAborted");
    assert!(
        failure.message().contains("current transaction is aborted"),
        "{failure}"
    );
    assert_eq!(runtime.stats().infra_errors, 0);
}

#[test]
fn a_failure_in_a_later_step_names_that_step() {
    let db = TestDb::new("later_step");
    let saga = Saga::builder("two-steps")
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .step_named("charge", |_ctx, _: &Value| -> StepResult {
            Err(StepError::with_kind(
                "billing::Declined",
                "insufficient funds",
            ))
        })
        .build()
        .unwrap();
    let runtime = db.runtime().subscribe("t", saga).start().unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(
        history_of(&runtime, root),
        [
            "EMITTED@-",
            "SEEN@two-steps",
            "SUSPENDED(0)@two-steps",
            "ROLLING_BACK(charge)@two-steps",
            "SUSPENDED(Rollback of 0[0,] (rolling back child scopes))@two-steps",
            "SUSPENDED(Rollback of 0[0,])@two-steps",
            "ROLLED_BACK(Rollback of 0[0,])@two-steps"
        ]
    );
    let failure = runtime.history(root).unwrap()[3].failure.clone().unwrap();
    assert_eq!(
        failure.to_string(),
        format!(
            "[two-steps[{}]] billing::Declined: insufficient funds (step \"charge\")",
            runtime.instance()
        )
    );
}

/// Our own failures are not the user's: a worker's connection dies in the middle of a step; the
/// run is retried from its last committed state (the step runs again) and commits — it is not
/// rolled back — and the runtime counts the error.
#[test]
fn a_lost_connection_mid_step_is_retried_not_rolled_back() {
    let mut db = TestDb::new("lost_connection");
    let gate = Gate::default();
    let log = ExecLog::default();
    let saga = {
        let (gate, log) = (gate.clone(), log.clone());
        Saga::builder("fragile")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                log.push("attempt");
                if log.entries().len() == 1 {
                    gate.pass();
                }
                ctx.tx().execute("SELECT 1", &[])?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .workers(1)
        .retry_backoff(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_millis(100),
        )
        .subscribe("t", saga)
        .start()
        .unwrap();
    let id = runtime.launch("t", &json!({})).unwrap();
    gate.wait_for_waiting(1);
    let killed = db.query_i64(&format!(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'sc-worker:{}'",
        db.schema
    ));
    assert_eq!(killed, 1);
    gate.open();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert!(outcome.is_committed(), "{outcome:?}");
    assert_eq!(log.entries(), ["attempt", "attempt"]);
    // Counted when the attempt that did it is over, which may be just after the
    // tree is seen finished.
    eventually("the infra_errors to be counted", || {
        runtime.stats().infra_errors >= 1
    });
    assert!(runtime.stats().infra_errors >= 1);
    assert_eq!(runtime.stats().step_failures, 0);
    let kinds: Vec<EventKind> = runtime
        .history(id)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(!kinds.contains(&EventKind::RollingBack), "{kinds:?}");
}
