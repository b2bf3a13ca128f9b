//! DL-*: deadlines — inherited (earliest wins, with a trace), and enforced on both paths.

use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{Deadlines, EventKind, RunStatus, Saga, StepContext, StepResult};

use crate::util::{ExecLog, Gate, TestDb, WAIT, eventually};

fn emitter(name: &str, topic: &'static str, deadlines: Deadlines) -> Saga {
    Saga::builder(name)
        .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit_with(topic, &json!({}), &deadlines)?;
            Ok(())
        })
        .build()
        .unwrap()
}

/// Three levels, each adding a happy-path deadline: every run has the earliest of its own and
/// its ancestors', and a trace of all of them with their sources.
#[test]
fn deadlines_are_inherited_across_three_levels_and_the_earliest_wins() {
    let mut db = TestDb::new("deadline_inheritance");
    let gate = Gate::default();
    let leaf = {
        let gate = gate.clone();
        Saga::builder("grandchild")
            .step(move |_, _: &Value| -> StepResult {
                gate.pass();
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe(
            "root-topic",
            emitter(
                "root",
                "child-topic",
                Deadlines::new().happy_path_within(Duration::from_secs(1800), "root handler"),
            ),
        )
        .subscribe(
            "child-topic",
            emitter(
                "child",
                "grandchild-topic",
                Deadlines::new().happy_path_within(Duration::from_secs(7200), "child handler"),
            ),
        )
        .subscribe("grandchild-topic", leaf)
        .start()
        .unwrap();
    let id = runtime
        .launch_with(
            "root-topic",
            &json!({}),
            Deadlines::new().happy_path_within(Duration::from_secs(3600), "root system"),
        )
        .unwrap();
    gate.wait_for_waiting(1);
    // Seconds from now to each run's effective happy-path deadline, and its trace's sources.
    let schema = db.schema.clone();
    let mut deadline = |handler: &str| -> (i64, String) {
        let row = db
            .admin()
            .query_one(
                &format!(
                    "SELECT round(extract(epoch FROM happy_deadline - clock_timestamp()))::int8, \
                     (SELECT string_agg(e->>'source', ', ' ORDER BY n) FROM \
                      jsonb_array_elements(deadline_trace) WITH ORDINALITY t(e, n)) \
                     FROM {schema}.runs WHERE handler = $1"
                ),
                &[&handler],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (root_in, root_trace) = deadline("root");
    let (child_in, child_trace) = deadline("child");
    let (grand_in, grand_trace) = deadline("grandchild");
    assert!((3590..=3600).contains(&root_in), "{root_in}");
    assert!(
        (1790..=1800).contains(&child_in),
        "the root handler's 30 min win: {child_in}"
    );
    assert!(
        (1790..=1800).contains(&grand_in),
        "the child's 2 h do not extend it: {grand_in}"
    );
    assert_eq!(root_trace, "root system");
    assert_eq!(child_trace, "root system, root handler");
    assert_eq!(grand_trace, "root system, root handler, child handler");
    gate.open();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
}

/// A missed happy-path deadline wakes a sleeping run, which gives up and rolls back (its
/// compensations run); the failure names the deadline and who set it.
#[test]
fn a_missed_happy_path_deadline_rolls_the_run_back() {
    let db = TestDb::new("happy_deadline");
    let log = ExecLog::default();
    let saga = {
        let log = log.clone();
        Saga::builder("slow")
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .rollback(move |_, _: &Value, cause| {
                log.push(format!("compensated because {}", cause.kind()));
                Ok(())
            })
            .sleep(Duration::from_secs(3600))
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .safety_net_interval(Duration::from_secs(3600))
        .subscribe("t", saga)
        .start()
        .unwrap();
    let id = runtime
        .launch_with(
            "t",
            &json!({}),
            Deadlines::new().happy_path_within(Duration::from_millis(300), "checkout"),
        )
        .unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert_eq!(
        log.entries(),
        ["compensated because structured_cooperation::MissedDeadline"]
    );
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::MissedDeadline");
    assert_eq!(failure.source(), "checkout");
    assert!(
        failure
            .message()
            .starts_with("missed the happy path deadline"),
        "{failure}"
    );
    assert!(failure.message().contains("set by checkout"), "{failure}");
}

/// Rollback deadlines fire (Scoop's D4): a compensation that takes too long is discarded and
/// the rollback fails.
#[test]
fn a_missed_rollback_deadline_fails_the_rollback() {
    let mut db = TestDb::new("rollback_deadline");
    let gate = Gate::default();
    let saga = {
        let gate = gate.clone();
        Saga::builder("undo-slowly")
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .rollback(move |_, _: &Value, _| {
                gate.pass();
                Ok(())
            })
            .step(|_, _: &Value| -> StepResult {
                Err(structured_cooperation::StepError::msg("something broke"))
            })
            .build()
            .unwrap()
    };
    let runtime = db.runtime().subscribe("t", saga).start().unwrap();
    let id = runtime
        .launch_with(
            "t",
            &json!({}),
            Deadlines::new().rollback_within(Duration::from_millis(200), "ops"),
        )
        .unwrap();
    gate.wait_for_waiting(1);
    // Hold the compensation until the database clock has passed the deadline.
    eventually("the rollback deadline to pass", || {
        db.query_i64("SELECT count(*) FROM __S__.runs WHERE rollback_deadline < clock_timestamp()")
            == 1
    });
    gate.open();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    let run = &outcome.runs()[0];
    assert_eq!(run.status, RunStatus::RollbackFailed);
    let failure = run.rollback_failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::MissedDeadline");
    assert!(
        failure
            .message()
            .starts_with("missed the rollback deadline"),
        "{failure}"
    );
    assert!(
        runtime.stats().gave_up_after_step >= 1,
        "the late compensation was discarded"
    );
}

/// After an absolute deadline nothing runs: the run gives up, and its rollback fails at once
/// without compensating.
#[test]
fn after_an_absolute_deadline_nothing_is_compensated() {
    let db = TestDb::new("absolute_deadline");
    let log = ExecLog::default();
    let saga = {
        let log = log.clone();
        Saga::builder("doomed")
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .rollback(move |_, _: &Value, _| {
                log.push("compensated");
                Ok(())
            })
            .sleep(Duration::from_secs(3600))
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .build()
            .unwrap()
    };
    let runtime = db.runtime().subscribe("t", saga).start().unwrap();
    // The first step must commit before the deadline (else there is nothing to compensate
    // and the rollback succeeds): two seconds leave room for a machine busy with other tests.
    let id = runtime
        .launch_with(
            "t",
            &json!({}),
            Deadlines::new().absolute_within(Duration::from_secs(2), "sla"),
        )
        .unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    let run = &outcome.runs()[0];
    assert_eq!(
        runtime.history(id).unwrap()[2].kind,
        structured_cooperation::EventKind::Suspended,
        "the first step committed before the deadline"
    );
    assert_eq!(run.status, RunStatus::RollbackFailed);
    assert!(
        log.entries().is_empty(),
        "no compensation after the absolute deadline"
    );
    assert!(
        run.rollback_failure
            .as_ref()
            .unwrap()
            .message()
            .starts_with("missed the absolute deadline")
    );
    let kinds: Vec<EventKind> = runtime
        .history(id)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::RollingBack) && kinds.contains(&EventKind::RollbackFailed));
}
