//! Retries of steps after transient failures (issue 10): a retry that then commits, retries
//! that run out, a retry that survives a restart, a cancellation during a retry's wait, and
//! PostgreSQL's serialization failures counted as transient.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{RetryPolicy, RunStatus, StepContext, StepError, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT, eventually, history_of, wait_for_event};

/// Quick retries for tests: 10 ms, then 20 ms, ...
fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts).backoff(Duration::from_millis(10), Duration::from_millis(50))
}

fn flaky() -> StepError {
    StepError::transient(StepError::msg("the provider timed out"))
}

/// Creates `<schema>_writes` in `public`: what each attempt wrote before failing.
fn writes_table(db: &mut TestDb) -> String {
    let table = format!("public.{}_writes", db.schema);
    db.exec(&format!("DROP TABLE IF EXISTS {table}"));
    db.exec(&format!("CREATE TABLE {table} (attempt int NOT NULL)"));
    table
}

fn retry_then_commit<E: Engine>() {
    let mut db = TestDb::new("retry_then_commit");
    let table = writes_table(&mut db);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let saga = {
        let (attempts, table) = (attempts.clone(), table.clone());
        E::saga("charge")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let attempt = ctx.attempt();
                    attempts.lock().unwrap().push(attempt);
                    let n = i32::try_from(attempt).unwrap();
                    E::execute(ctx, &format!("INSERT INTO {table} VALUES ($1)"), &[&n])?;
                    ctx.emit("audit", &json!({ "attempt": attempt }))?;
                    if attempt < 3 {
                        return Err(flaky());
                    }
                    Ok(())
                },
            )
            .retry(quick(3))
            .build()
            .unwrap()
    };
    let audit = E::saga("audit")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("charges", saga)
        .subscribe("audit", audit)
        .start()
        .unwrap();
    let root = runtime.launch("charges", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert!(outcome.is_committed(), "{outcome:?}");
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    // Only the successful attempt's write and emission survive.
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {table} WHERE attempt = 3")),
        1
    );
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {table}")), 1);
    let trace = history_of(&runtime, root);
    assert_eq!(
        trace,
        [
            "EMITTED@-",
            "SEEN@charge",
            "RETRYING(0)@charge",
            "RETRYING(0)@charge",
            "EMITTED(0)@charge",
            "SUSPENDED(0)@charge",
            "SEEN@audit",
            "SUSPENDED(0)@audit",
            "COMMITTED(0)@audit",
            "COMMITTED(0)@charge",
        ]
    );
    let history = runtime.history(root).unwrap();
    let retried = history
        .iter()
        .find(|e| e.kind == structured_cooperation::EventKind::Retrying)
        .unwrap();
    let failure = retried
        .failure
        .as_ref()
        .expect("a retry records its failure");
    assert_eq!(failure.message(), "the provider timed out");
    assert_eq!(failure.step(), Some("0"));
    // Counted when the attempt that did it is over, which may be just after the
    // tree is seen finished.
    eventually("the retries to be counted", || runtime.stats().retries >= 2);
    assert_eq!(runtime.stats().retries, 2);
    assert_eq!(runtime.stats().step_failures, 0);
    let tree = runtime.tree(root).unwrap();
    assert_eq!(
        (tree[0].retries, tree[0].last_error.as_deref()),
        (0, None),
        "reset once the run moved on"
    );
    runtime.shutdown().unwrap();
}

fn retries_run_out_and_the_run_rolls_back_with_the_last_error<E: Engine>() {
    let db = TestDb::new("retries_run_out");
    let attempts = Arc::new(Mutex::new(0));
    let saga = {
        let attempts = attempts.clone();
        E::saga("charge")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    *attempts.lock().unwrap() += 1;
                    Err(StepError::transient(StepError::msg(format!(
                        "timeout on attempt {}",
                        ctx.attempt()
                    ))))
                },
            )
            .build()
            .unwrap()
    };
    // No policy given: the default, three attempts.
    let runtime = E::runtime(&db).subscribe("flaky", saga).start().unwrap();
    let root = runtime.launch("flaky", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    // The default policy: three attempts.
    assert_eq!(*attempts.lock().unwrap(), 3);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.message(), "timeout on attempt 3");
    let retrying = history_of(&runtime, root)
        .iter()
        .filter(|e| e.starts_with("RETRYING"))
        .count();
    assert_eq!(retrying, 2);
    // Counted when the attempt that did it is over, which may be just after the
    // tree is seen finished.
    eventually("the step_failures to be counted", || {
        runtime.stats().step_failures >= 1
    });
    assert_eq!(runtime.stats().step_failures, 1);
    runtime.shutdown().unwrap();
}

fn a_saga_default_policy_applies_to_steps_without_their_own<E: Engine>() {
    let db = TestDb::new("default_retry");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let saga = {
        let (a, b) = (attempts.clone(), attempts.clone());
        E::saga("two")
            .default_retry(quick(2))
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    a.lock().unwrap().push(format!("a{}", ctx.attempt()));
                    if ctx.attempt() < 2 {
                        return Err(flaky());
                    }
                    Ok(())
                },
            )
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    b.lock().unwrap().push(format!("b{}", ctx.attempt()));
                    Err(flaky())
                },
            )
            .retry(RetryPolicy::NEVER)
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert_eq!(*attempts.lock().unwrap(), ["a1", "a2", "b1"]);
    runtime.shutdown().unwrap();
}

fn a_retry_survives_a_restart<E: Engine>() {
    let db = TestDb::new("retry_restart");
    let saga = || {
        E::saga("charge")
            .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                if ctx.attempt() == 1 {
                    return Err(flaky());
                }
                Ok(())
            })
            .retry(
                RetryPolicy::attempts(2)
                    .backoff(Duration::from_millis(600), Duration::from_secs(1)),
            )
            .build()
            .unwrap()
    };
    let first = E::runtime(&db)
        .subscribe("charges", saga())
        .start()
        .unwrap();
    let root = first.launch("charges", &json!({})).unwrap();
    wait_for_event(&first, root, "RETRYING(0)@charge");
    first.shutdown().unwrap();
    // The wait is the run's own timer in the database: a new runtime picks it up.
    let second = E::runtime(&db)
        .subscribe("charges", saga())
        .start()
        .unwrap();
    let outcome = second.wait_for(root, WAIT).unwrap();
    assert!(outcome.is_committed(), "{outcome:?}");
    let trace = history_of(&second, root);
    assert_eq!(
        trace,
        [
            "EMITTED@-",
            "SEEN@charge",
            "RETRYING(0)@charge",
            "SUSPENDED(0)@charge",
            "COMMITTED(0)@charge",
        ]
    );
    second.shutdown().unwrap();
}

fn a_cancellation_ends_a_retry_wait<E: Engine>() {
    let db = TestDb::new("retry_cancel");
    let saga = E::saga("charge")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Err(flaky()) })
        .retry(
            RetryPolicy::attempts(5).backoff(Duration::from_secs(3600), Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    let runtime = E::runtime(&db).subscribe("charges", saga).start().unwrap();
    let root = runtime.launch("charges", &json!({})).unwrap();
    wait_for_event(&runtime, root, "RETRYING(0)@charge");
    let tree = runtime.tree(root).unwrap();
    assert_eq!(tree[0].retries, 1, "visible while it waits");
    assert_eq!(
        tree[0].last_error.as_deref(),
        Some("the provider timed out")
    );
    runtime.cancel(root, "ops", "no more retries").unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert!(failure.message().contains("no more retries"), "{failure}");
    runtime.shutdown().unwrap();
}

fn serialization_failures_in_the_steps_own_statements_are_retried<E: Engine>() {
    let db = TestDb::new("retry_serialization");
    let saga = E::saga("report")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            if ctx.attempt() == 1 {
                // As a concurrent serializable transaction would make it fail.
                E::execute(
                    ctx,
                    "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access' \
                     USING ERRCODE = '40001'; END $$",
                    &[],
                )?;
            }
            Ok(())
        })
        .retry(quick(2))
        .build()
        .unwrap();
    let runtime = E::runtime(&db).subscribe("reports", saga).start().unwrap();
    let root = runtime.launch("reports", &json!({})).unwrap();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    let history = runtime.history(root).unwrap();
    let retried: Vec<_> = history
        .iter()
        .filter(|e| e.kind == structured_cooperation::EventKind::Retrying)
        .collect();
    assert_eq!(retried.len(), 1);
    let failure = retried[0].failure.as_ref().unwrap();
    assert!(
        failure.message().contains("could not serialize access"),
        "{failure}"
    );
    runtime.shutdown().unwrap();
}

both!(
    retry_then_commit,
    retries_run_out_and_the_run_rolls_back_with_the_last_error,
    a_saga_default_policy_applies_to_steps_without_their_own,
    a_retry_survives_a_restart,
    a_cancellation_ends_a_retry_wait,
    serialization_failures_in_the_steps_own_statements_are_retried,
);
