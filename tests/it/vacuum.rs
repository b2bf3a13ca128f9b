//! A runtime vacuums `runs` itself when autovacuum does not (issue 13, history flatness):
//! every finished step leaves a dead entry in the claim's index, which later claims walk past
//! until a vacuum removes it.

use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{Error, RunStatus, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT, eventually};

/// Runs `jobs` one-step jobs to the end on a runtime that sweeps every 100 ms, with
/// autovacuum off for the schema's `runs` table.
fn run_jobs<E: Engine>(db: &mut TestDb, vacuum_after: Option<u64>, jobs: usize) -> E::Runtime {
    let saga = E::saga("vacuum-job")
        .step(|_ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(db)
        .workers(2)
        .safety_net_interval(Duration::from_millis(100))
        .vacuum_runs_after(vacuum_after)
        .subscribe("vacuum-jobs", saga)
        .start()
        .unwrap();
    // Whatever the server says, this table is not autovacuumed.
    db.exec(&format!(
        "ALTER TABLE {}.runs SET (autovacuum_enabled = false)",
        db.schema
    ));
    let payloads: Vec<Value> = (0..jobs).map(|n| json!({ "n": n })).collect();
    for root in runtime.launch_many("vacuum-jobs", &payloads).unwrap() {
        let outcome = runtime.wait_for(root, WAIT).unwrap();
        assert_eq!(outcome.runs()[0].status, RunStatus::Committed);
    }
    runtime
}

/// The vacuums anyone ran on the schema's `runs` by hand (not autovacuum).
fn manual_vacuums(db: &mut TestDb) -> i64 {
    db.query_i64("SELECT pg_stat_get_vacuum_count('__S__.runs'::regclass)")
}

fn a_runtime_vacuums_runs_when_autovacuum_does_not<E: Engine>() {
    let mut db = TestDb::new("self_vacuum");
    let runtime = run_jobs::<E>(&mut db, Some(100), 300);
    // The server's statistics lag a little; the sweeps (every 100 ms) look again until they
    // see the dead versions.
    eventually("the runtime's vacuum", || runtime.stats().vacuums >= 1);
    eventually("the server to count it", || manual_vacuums(&mut db) >= 1);
    eventually("the dead versions gone", || {
        db.query_i64(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = '__S__.runs'::regclass",
        ) < 100
    });
    runtime.shutdown().unwrap();
}

both!(a_runtime_vacuums_runs_when_autovacuum_does_not);

fn a_runtime_told_not_to_vacuum_leaves_runs_alone<E: Engine>() {
    let mut db = TestDb::new("no_self_vacuum");
    let runtime = run_jobs::<E>(&mut db, None, 300);
    // Ten sweeps after the work: each one would have vacuumed by now.
    let sweeps = runtime.stats().sweeps;
    eventually("ten more sweeps", || runtime.stats().sweeps >= sweeps + 10);
    assert_eq!(runtime.stats().vacuums, 0);
    assert_eq!(manual_vacuums(&mut db), 0);
    runtime.shutdown().unwrap();
}

both!(a_runtime_told_not_to_vacuum_leaves_runs_alone);

#[test]
fn a_zero_vacuum_threshold_is_refused() {
    let db = TestDb::new("vacuum_zero");
    let err = db
        .runtime()
        .vacuum_runs_after(Some(0))
        .subscribe(
            "t",
            structured_cooperation::Saga::builder("h")
                .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
                .build()
                .unwrap(),
        )
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("vacuum_runs_after"), "{err}");
}
