//! Operations at scale (issue 12): listing the newest 50 failed roots with a small and a
//! large history, and pruning engine-made trees.
//!
//! The engine makes 5,000 two-level trees (a root whose first step emits two children; one
//! root in ten fails in its second step and rolls back); the newest 50 failed roots are
//! listed 30 times (median). Then `SC_BENCH_LIST_ROWS` (default 1,000,000) older finished
//! roots, one in a hundred failed, are added in bulk behind them, shaped like the engine's,
//! and the listing is timed again. Finally the 5,000 engine-made trees are pruned.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use structured_cooperation::{
    RunFilter, RunStatus, Runtime, Saga, StepContext, StepError, StepResult,
};

use super::{SCHEMA, WORKERS, fresh_schema, prelaunch, report, url};

const TREES: usize = 5_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn sagas() -> (Saga, Saga) {
    let root = Saga::builder("ops-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("ops-child", &json!({ "c": 0 }))?;
            ctx.emit("ops-child", &json!({ "c": 1 }))?;
            Ok(())
        })
        .step(|_: &mut StepContext<'_>, p: &Value| -> StepResult {
            if p["n"].as_u64().is_some_and(|n| n % 10 == 0) {
                return Err(StepError::with_kind("bench::Declined", "declined"));
            }
            Ok(())
        })
        .build()
        .unwrap();
    let child = Saga::builder("ops-child")
        .step(|_: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) })
        .rollback(|_, _: &Value, _| Ok(()))
        .build()
        .unwrap();
    (root, child)
}

/// Median time of listing the newest 50 failed roots, in milliseconds.
fn time_listing(client: &structured_cooperation::Client) -> f64 {
    let filter = RunFilter::roots()
        .status(RunStatus::RolledBack)
        .status(RunStatus::RollbackFailed)
        .limit(50);
    let mut times = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        let page = client.list_runs(&filter).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(page.runs.len(), 50);
    }
    median(times)
}

pub(crate) fn operations(admin: &mut postgres::Client) {
    let client = fresh_schema(admin);
    client.register_handler("ops-root", "ops-root").unwrap();
    client.register_handler("ops-child", "ops-child").unwrap();
    prelaunch(&client, "ops-root", TREES);
    let (root, child) = sagas();
    let runtime = Runtime::builder(url())
        .schema(SCHEMA)
        .workers(WORKERS)
        .subscribe("ops-root", root)
        .subscribe("ops-child", child)
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left: i64 = admin
            .query_one(
                &format!(
                    "SELECT count(*) FROM {SCHEMA}.runs \
                     WHERE status IN ('active', 'rolling_back')"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} runs left");
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.shutdown().unwrap();
    admin
        .batch_execute(&format!("VACUUM ANALYZE {SCHEMA}.runs, {SCHEMA}.messages"))
        .unwrap();
    let small_rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {SCHEMA}.runs"), &[])
        .unwrap()
        .get(0);
    let small = time_listing(&client);

    let extra: i64 = std::env::var("SC_BENCH_LIST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Older finished roots behind the engine's, shaped like them (finished_at left empty so
    // that the prune below measures the engine-made trees alone).
    admin
        .batch_execute(&format!(
            "INSERT INTO {SCHEMA}.messages (id, root_id, topic, payload, created_at)
             SELECT id, id, 'ops-root', jsonb_build_object('n', i),
                    now() - interval '30 days' + i * interval '1 ms'
             FROM (SELECT {SCHEMA}.uuid_v7() AS id, i FROM generate_series(1, {extra}) i) s;
             INSERT INTO {SCHEMA}.runs (id, root_id, message_id, handler, topic, status,
                                        step_index, instances, wake_at, created_at, started_at)
             SELECT {SCHEMA}.uuid_v7(), m.id, m.id, 'ops-root', 'ops-root',
                    CASE WHEN (m.payload ->> 'n')::int % 100 = 0 THEN 'rolled_back'
                         ELSE 'committed' END,
                    2, 2, m.created_at, m.created_at, m.created_at
             FROM {SCHEMA}.messages m WHERE m.created_at < now() - interval '1 day';"
        ))
        .unwrap();
    admin
        .batch_execute(&format!("VACUUM ANALYZE {SCHEMA}.runs, {SCHEMA}.messages"))
        .unwrap();
    let large = time_listing(&client);
    report("list_failed_roots_rows_small", small_rows as f64);
    report("list_failed_roots_ms_small", small);
    report("list_failed_roots_rows_large", (small_rows + extra) as f64);
    report("list_failed_roots_ms_large", large);
    report("list_flatness", small / large);

    let start = Instant::now();
    let pruned = client.prune(SystemTime::now()).unwrap();
    let took = start.elapsed().as_secs_f64();
    assert_eq!(pruned.trees, TREES as u64, "{pruned:?}");
    report("prune_trees", pruned.trees as f64);
    report("prune_trees_per_s", pruned.trees as f64 / took);
}
