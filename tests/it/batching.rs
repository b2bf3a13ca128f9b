//! Steps per commit (issue 13): several steps of one handler in one transaction, each under
//! its own savepoint. A failing step rolls back alone; trees (whose finishing children commit
//! the batch at once, to release their parents) run as usual. Process kills: see
//! `tests/multiprocess/batched.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{
    Deadlines, EmitOptions, RunStatus, StepContext, StepError, StepResult,
};

use crate::engine::{Engine, Served, both};
use crate::util::{Gate, TestDb, WAIT, eventually};

fn a_failing_step_rolls_back_alone_in_its_batch<E: Engine>() {
    let mut db = TestDb::new("batched_failure");
    let s = db.schema.clone();
    let insert = format!("INSERT INTO {s}.done (n) VALUES ($1)");
    let saga = E::saga("batched-job")
        .step(
            move |ctx: &mut StepContext<'_, E::X>, payload: &Value| -> StepResult {
                let n = payload["n"].as_i64().unwrap_or(-1);
                E::execute(ctx, &insert, &[&n])?;
                if n % 10 == 3 {
                    return Err(StepError::msg("every tenth job fails"));
                }
                Ok(())
            },
        )
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .workers(2)
        .steps_per_commit(8)
        .subscribe("jobs", saga)
        .start()
        .unwrap();
    db.exec(&format!("CREATE TABLE {s}.done (n int8 PRIMARY KEY)"));
    let payloads: Vec<Value> = (0..100).map(|n| json!({ "n": n })).collect();
    let roots = runtime.launch_many("jobs", &payloads).unwrap();
    for (n, root) in roots.iter().enumerate() {
        let outcome = runtime.wait_for(*root, WAIT).unwrap();
        let expected = if n % 10 == 3 {
            RunStatus::RolledBack
        } else {
            RunStatus::Committed
        };
        assert_eq!(outcome.runs()[0].status, expected, "job {n}: {outcome:?}");
    }
    // The failing steps' inserts were discarded, nobody else's.
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {s}.done")), 90);
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.done WHERE n % 10 = 3")),
        0
    );
    every_run_seen_once(&mut db, 100);
    runtime.shutdown().unwrap();
}

both!(a_failing_step_rolls_back_alone_in_its_batch);

/// A batch claims several runs at once and writes each one's `SEEN` as its step starts: a
/// batch that ends early (a step rolled back to its savepoint commits the others) unlocks
/// the runs it had not reached without a trace, so every run has exactly one.
fn every_run_seen_once(db: &mut TestDb, runs: i64) {
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!(
            "SELECT count(DISTINCT run_id) FROM {s}.history WHERE event = 'SEEN'"
        )),
        runs
    );
    assert_eq!(
        db.query_i64(&format!(
            "SELECT count(*) FROM (SELECT run_id FROM {s}.history WHERE event = 'SEEN' \
             GROUP BY run_id HAVING count(*) > 1) twice"
        )),
        0
    );
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.runs")),
        runs
    );
}

fn trees_run_batched<E: Engine>() {
    let mut db = TestDb::new("batched_trees");
    let s = db.schema.clone();
    let insert = format!("INSERT INTO {s}.done (run_id) VALUES ($1)");
    let (insert_parent, insert_child) = (insert.clone(), insert);
    let parent = E::saga("batched-parent")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            for i in 0..5 {
                ctx.emit("batched-children", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .step(
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                let run = ctx.run_id().as_uuid();
                E::execute(ctx, &insert_parent, &[&run])?;
                Ok(())
            },
        )
        .build()
        .unwrap();
    let child = E::saga("batched-child")
        .step(
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                let run = ctx.run_id().as_uuid();
                E::execute(ctx, &insert_child, &[&run])?;
                Ok(())
            },
        )
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .steps_per_commit(16)
        .subscribe("batched-parents", parent)
        .subscribe("batched-children", child)
        .start()
        .unwrap();
    db.exec(&format!("CREATE TABLE {s}.done (run_id uuid PRIMARY KEY)"));
    let payloads: Vec<Value> = (0..20).map(|n| json!({ "n": n })).collect();
    let roots = runtime.launch_many("batched-parents", &payloads).unwrap();
    for root in roots {
        assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    }
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.done")),
        20 * 6
    );
    every_run_seen_once(&mut db, 20 * 6);
    runtime.shutdown().unwrap();
}

both!(trees_run_batched);

/// A batch claims its runs together; one waiting for its turn whose deadline passes meanwhile
/// still runs its step, but the step's end finds the deadline missed: its writes are rolled
/// back and the run gives up, as when a deadline passes during a step.
fn a_deadline_missed_while_waiting_in_a_batch_gives_up<E: Engine>() {
    let mut db = TestDb::new("batched_deadline");
    let s = db.schema.clone();
    let client = db.client();
    db.exec(&format!("CREATE TABLE {s}.done (n int8 PRIMARY KEY)"));
    client.register_handler("queued", "queued-job").unwrap();
    // Both wait before any runtime starts, so that one claim takes both: `first` (launched
    // first, so stepped first) and `late`, whose deadline passes while `first` is held.
    let first = client.launch("queued", &json!({ "n": 1 })).unwrap();
    let within = Duration::from_millis(500);
    let launched = Instant::now();
    let late = client
        .launch_with(
            "queued",
            &json!({ "n": 2 }),
            EmitOptions::new().deadlines(Deadlines::new().happy_path_within(within, "test")),
        )
        .unwrap();
    let gate = Gate::default();
    let held = gate.clone();
    let ran_late = Arc::new(AtomicBool::new(false));
    let ran = ran_late.clone();
    let insert = format!("INSERT INTO {s}.done (n) VALUES ($1)");
    let saga = E::saga("queued-job")
        .step(
            move |ctx: &mut StepContext<'_, E::X>, payload: &Value| -> StepResult {
                let n = payload["n"].as_i64().unwrap_or(-1);
                if n == 1 {
                    held.pass();
                } else {
                    ran.store(true, Ordering::SeqCst);
                }
                E::execute(ctx, &insert, &[&n])?;
                Ok(())
            },
        )
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .workers(1)
        .steps_per_commit(4)
        .subscribe("queued", saga)
        .start()
        .unwrap();
    gate.wait_for_waiting(1);
    eventually("the deadline to pass", || {
        launched.elapsed() > within + Duration::from_millis(100)
    });
    gate.open();
    assert!(runtime.wait_for(first, WAIT).unwrap().is_committed());
    let outcome = runtime.wait_for(late, WAIT).unwrap();
    let run = &outcome.runs()[0];
    assert_eq!(run.status, RunStatus::RolledBack, "{outcome:?}");
    let failure = run.failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::MissedDeadline");
    // Its step ran (after the deadline: it was claimed before), and what it wrote was
    // rolled back.
    assert!(ran_late.load(Ordering::SeqCst));
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.done WHERE n = 2")),
        0
    );
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.done WHERE n = 1")),
        1
    );
    every_run_seen_once(&mut db, 2);
    runtime.shutdown().unwrap();
}

both!(a_deadline_missed_while_waiting_in_a_batch_gives_up);

#[test]
fn steps_per_commit_is_bounded() {
    let db = TestDb::new("batched_bounds");
    for k in [0, 33] {
        let err = db.runtime().steps_per_commit(k).start().unwrap_err();
        assert!(err.to_string().contains("steps_per_commit"), "{err}");
    }
}
