//! End-to-end workloads against a real PostgreSQL, printed as `name=value` lines (run by
//! `scripts/bench`, which also measures the machine's ceiling with pgbench).
//!
//! * w1: 10,000 pre-launched single-step jobs (each inserts one row) drained by 4 workers;
//! * w3: 500 pre-launched roots whose first step emits 10 messages to a one-step handler
//!   (each inserts one row) and whose second step (one insert) then runs: 12 steps a tree;
//! * wake latency: on an idle runtime, from a last child's commit to its parent's next step;
//! * history flatness: w1 on a fresh schema and on one holding 200,000 finished trees the
//!   engine made, alternately, three times each (`flat1m`: 1,000,000 trees, not by default);
//! * idle transactions: 8 workers, 20 handlers, nothing to do, for 10 s;
//! * w4: 100 pre-launched roots, each emitting 10 children of which one fails; the root then
//!   rolls back and its 9 committed children run their compensations (one insert each);
//! * sleep lateness: 1,000 runs sleeping 1 s each, how late (after `wake_at`) they woke;
//! * cancel: from `cancel(root)` until every run of a depth-3, fan-out-5 tree is terminal;
//! * launches from one thread: one at a time, and 1,000 per `launch_many`;
//! * batched: w1 with 4, 8, 16 and 32 steps per commit (16 is `batched_w1_steps_per_s`);
//! * round trips per step, counted on the wire by a proxy, for a no-op step and a step
//!   inserting one row (one worker);
//! * tokio (with the `tokio` feature): w1 and w3 on the tokio runtime, same workers;
//! * scale (with the `tokio` feature): w1 on both runtimes with 1, 4 and 16 workers, and tokio
//!   with 64 tasks on 16 connections; writes `target/bench/blocking_vs_tokio.svg`;
//! * ops: listing the newest 50 failed roots with 5,000 engine-made trees and then with
//!   `SC_BENCH_LIST_ROWS` (default 1,000,000) more roots behind them; pruning the engine-made
//!   trees (trees per second).
//!
//! Environment: `DATABASE_URL` (required), `SC_BENCH_ONLY` (comma-separated subset of
//! `w1,w3,batched,trips,launch,wake,flat,flat1m,w4,idle,sleep,cancel,tokio,scale,ops`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use postgres::NoTls;
use serde_json::{Value, json};
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

#[path = "workloads/control.rs"]
mod control;
#[path = "workloads/flatness.rs"]
mod flatness;
#[path = "workloads/launches.rs"]
mod launches;
#[path = "workloads/operations.rs"]
mod operations;
#[path = "workloads/runtimes.rs"]
mod runtimes;
#[path = "workloads/trips.rs"]
mod trips;

use runtimes::Engine;

const WORKERS: usize = 4;
const SCHEMA: &str = "sc_bench";

/// The database the workloads use, when it is not `DATABASE_URL`'s (see `flatness.rs`, which
/// keeps history in a database of its own).
static DATABASE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn url() -> String {
    if let Some(url) = DATABASE.lock().unwrap().clone() {
        return url;
    }
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        eprintln!("set DATABASE_URL (scripts/bench provisions a database and sets it)");
        std::process::exit(2)
    })
}

fn admin() -> postgres::Client {
    postgres::Client::connect(&url(), NoTls).unwrap_or_else(|e| {
        eprintln!("cannot connect to DATABASE_URL: {e}");
        std::process::exit(2)
    })
}

fn report(name: &str, value: f64) {
    println!("{name}={value:.3}");
}

fn wanted(name: &str) -> bool {
    match std::env::var("SC_BENCH_ONLY") {
        Ok(only) => only.split(',').any(|w| w.trim() == name),
        Err(_) => true,
    }
}

/// Whether `SC_BENCH_ONLY` names the workload (for the long ones, never run by default).
fn explicitly(name: &str) -> bool {
    std::env::var("SC_BENCH_ONLY").is_ok_and(|only| only.split(',').any(|w| w.trim() == name))
}

fn fresh_schema(admin: &mut postgres::Client) -> Client {
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .unwrap();
    let client = Client::builder(url()).schema(SCHEMA).connect().unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TABLE {SCHEMA}.results (id bigserial PRIMARY KEY, run_id uuid NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .unwrap();
    client
}

/// The business write every measured step does: one row, through a statement prepared once
/// per connection (as an application's hot path would be).
fn insert_result(ctx: &mut StepContext<'_>) -> StepResult {
    let run = ctx.run_id().as_uuid();
    let insert = ctx.prepare_cached(&format!(
        "INSERT INTO {SCHEMA}.results (run_id) VALUES ($1)"
    ))?;
    ctx.tx().execute(&insert, &[&run])?;
    Ok(())
}

/// Launches `n` roots on `topic`, 1,000 per transaction (`launch_many`).
fn prelaunch(client: &Client, topic: &str, n: usize) {
    for chunk in 0..n.div_ceil(1000) {
        let payloads: Vec<Value> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| json!({ "n": i }))
            .collect();
        client.launch_many(topic, &payloads).unwrap();
    }
}

/// Waits until `handler` has no unfinished runs left. Counts through the index of runnable
/// runs, so that the polling itself costs the same however much history the tables hold.
/// (Only for handlers whose runs have no children: a run waiting for children is not in that
/// index.)
fn wait_drained(admin: &mut postgres::Client, handler: &str) {
    // Whether one is left (not how many): one index probe, so that the polling takes next
    // to nothing from the workload it waits for.
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM {SCHEMA}.runs WHERE handler = $1 \
         AND status IN ('active', 'rolling_back') AND pending_children = 0 LIMIT 1) left_"
    );
    wait_zero(admin, &sql, handler);
}

fn wait_zero(admin: &mut postgres::Client, sql: &str, handler: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left: i64 = admin.query_one(sql, &[&handler]).unwrap().get(0);
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {left} runs of {handler} left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn db_now(admin: &mut postgres::Client) -> f64 {
    admin
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .unwrap()
        .get(0)
}

fn job_saga() -> Saga {
    Saga::builder("w1-job")
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_result(ctx))
        .build()
        .unwrap()
}

/// Drains `jobs` pre-launched jobs on the blocking runtime with `WORKERS` workers; returns
/// steps per second (database clock: from just before the runtime starts to the last job's
/// commit).
fn w1_run(admin: &mut postgres::Client, client: &Client, jobs: usize) -> f64 {
    w1_run_on(admin, client, jobs, Engine::Blocking { workers: WORKERS })
}

/// [`w1_run`] on the given runtime.
fn w1_run_on(admin: &mut postgres::Client, client: &Client, jobs: usize, engine: Engine) -> f64 {
    w1_measure(admin, client, jobs, engine, "VACUUM ANALYZE")
}

/// w1 after `prepare` (`VACUUM ANALYZE`, or `ANALYZE` to leave the dead tuples the engine's
/// own updates left) on the runs table.
fn w1_measure(
    admin: &mut postgres::Client,
    client: &Client,
    jobs: usize,
    engine: Engine,
    prepare: &str,
) -> f64 {
    client.register_handler("w1", "w1-job").unwrap();
    prelaunch(client, "w1", jobs);
    admin
        .batch_execute(&format!("{prepare} {SCHEMA}.runs"))
        .unwrap();
    let start = db_now(admin);
    let stop = runtimes::start_w1(engine);
    wait_drained(admin, "w1-job");
    let end: f64 = admin
        .query_one(
            &format!(
                "SELECT extract(epoch FROM max(finished_at))::float8 FROM {SCHEMA}.runs \
                 WHERE handler = 'w1-job' AND finished_at >= to_timestamp($1)"
            ),
            &[&start],
        )
        .unwrap()
        .get(0);
    stop();
    jobs as f64 / (end - start)
}

/// w1 with several steps per commit: each batch size in turn, twice (best of two, as w1).
fn batched_w1(admin: &mut postgres::Client) {
    for per_commit in [4, 8, 16, 32] {
        let mut best = 0.0f64;
        for _ in 0..2 {
            let client = fresh_schema(admin);
            let engine = Engine::Batched {
                workers: WORKERS,
                per_commit,
            };
            best = best.max(w1_run_on(admin, &client, 10_000, engine));
        }
        report(&format!("batched_w1_k{per_commit}_steps_per_s"), best);
        if per_commit == RECOMMENDED_PER_COMMIT {
            report("batched_w1_steps_per_s", best);
        }
    }
}

/// The batch size BENCHMARKS.md and the docs recommend (`batched_w1_steps_per_s`).
const RECOMMENDED_PER_COMMIT: usize = 16;

fn w1(admin: &mut postgres::Client) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..2 {
        let client = fresh_schema(admin);
        best = best.max(w1_run(admin, &client, 10_000));
    }
    report("w1_steps_per_s", best);
    best
}

fn w3(admin: &mut postgres::Client) {
    let rate = w3_on(admin, Engine::Blocking { workers: WORKERS }, true);
    report("w3_steps_per_s", rate);
}

/// The w3 sagas of the blocking runtime.
fn w3_sagas() -> (Saga, Saga) {
    let root = Saga::builder("w3-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            for i in 0..10 {
                ctx.emit("w3-child", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_result(ctx))
        .build()
        .unwrap();
    let child = Saga::builder("w3-child")
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_result(ctx))
        .build()
        .unwrap();
    (root, child)
}

/// w3 on the given runtime: returns steps per second (and reports the root latency when
/// `latency`).
fn w3_on(admin: &mut postgres::Client, engine: Engine, latency: bool) -> f64 {
    let client = fresh_schema(admin);
    let roots = 500usize;
    client.register_handler("w3", "w3-root").unwrap();
    client.register_handler("w3-child", "w3-child").unwrap();
    prelaunch(&client, "w3", roots);
    let start = db_now(admin);
    let stop = runtimes::start_w3(engine);
    // Roots wait for their children, so once no root is left unfinished, nothing is. (The
    // schema is fresh and small, so a plain count is cheap here.)
    wait_zero(
        admin,
        &format!("SELECT count(*) FROM {SCHEMA}.runs WHERE handler = $1 AND status <> 'committed'"),
        "w3-root",
    );
    let pending: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM {SCHEMA}.runs WHERE status <> 'committed'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "every run of w3 commits");
    let row = admin
        .query_one(
            &format!(
                "SELECT extract(epoch FROM max(finished_at))::float8,
                        (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM (
                            SELECT extract(epoch FROM r.finished_at - s.at) * 1000 AS ms
                            FROM {SCHEMA}.runs r
                            JOIN {SCHEMA}.history s ON s.root_id = r.root_id AND s.run_id = r.id
                                                   AND s.event = 'SEEN'
                            WHERE r.parent_id IS NULL) t)::float8
                 FROM {SCHEMA}.runs"
            ),
            &[],
        )
        .unwrap();
    let (end, p50): (f64, f64) = (row.get(0), row.get(1));
    stop();
    let steps = roots * 12;
    if latency {
        report("w3_root_p50_ms", p50);
    }
    steps as f64 / (end - start)
}

/// Parent-child pairs one at a time on an idle runtime. Each parent's second step measures,
/// on the database clock, how long ago its (only) child committed.
fn wake(admin: &mut postgres::Client, split: bool) -> (f64, f64) {
    let _client = fresh_schema(admin);
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let parent = {
        let samples = samples.clone();
        Saga::builder("wake-parent")
            .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.emit("wake-child", &json!({}))?;
                Ok(())
            })
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                let run = ctx.run_id().as_uuid();
                let ms: f64 = ctx
                    .tx()
                    .query_one(
                        &format!(
                            "SELECT (extract(epoch FROM clock_timestamp() - max(finished_at)) \
                             * 1000)::float8 FROM {SCHEMA}.runs WHERE parent_id = $1"
                        ),
                        &[&run],
                    )?
                    .get(0);
                samples.lock().unwrap().push(ms);
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = Saga::builder("wake-child")
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    // With `split`, parent and child live in different runtimes: the wake-up then travels
    // through a NOTIFY and the other runtime's listener instead of an in-process hint.
    let (a, b) = if split {
        let a = Runtime::builder(url())
            .schema(SCHEMA)
            .workers(WORKERS)
            .subscribe("wake", parent)
            .start()
            .unwrap();
        let b = Runtime::builder(url())
            .schema(SCHEMA)
            .workers(WORKERS)
            .subscribe("wake-child", child)
            .start()
            .unwrap();
        (a, Some(b))
    } else {
        let a = Runtime::builder(url())
            .schema(SCHEMA)
            .workers(WORKERS)
            .subscribe("wake", parent)
            .subscribe("wake-child", child)
            .start()
            .unwrap();
        (a, None)
    };
    for _ in 0..200 {
        let root = a.launch("wake", &json!({})).unwrap();
        assert!(
            a.wait_for(root, Duration::from_secs(30))
                .unwrap()
                .is_committed()
        );
    }
    a.shutdown().unwrap();
    if let Some(b) = b {
        b.shutdown().unwrap();
    }
    let mut s = samples.lock().unwrap().clone();
    s.sort_by(f64::total_cmp);
    let pct = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.99))
}

fn w4(admin: &mut postgres::Client) {
    let client = fresh_schema(admin);
    admin
        .batch_execute(&format!(
            "CREATE TABLE {SCHEMA}.compensations (run_id uuid PRIMARY KEY, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .unwrap();
    let root = Saga::builder("w4-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            for i in 0..10 {
                ctx.emit("w4-child", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .build()
        .unwrap();
    let child = Saga::builder("w4-child")
        .step(|ctx: &mut StepContext<'_>, p: &Value| -> StepResult {
            if p["i"] == 0 {
                return Err(structured_cooperation::StepError::msg("out of stock"));
            }
            insert_result(ctx)
        })
        .rollback(|ctx, _: &Value, _| {
            let run = ctx.run_id().as_uuid();
            let insert = ctx.prepare_cached(&format!(
                "INSERT INTO {SCHEMA}.compensations (run_id) VALUES ($1)"
            ))?;
            ctx.tx().execute(&insert, &[&run])?;
            Ok(())
        })
        .build()
        .unwrap();
    let roots = 100usize;
    client.register_handler("w4", "w4-root").unwrap();
    client.register_handler("w4-child", "w4-child").unwrap();
    prelaunch(&client, "w4", roots);
    let start = db_now(admin);
    let runtime = Runtime::builder(url())
        .schema(SCHEMA)
        .workers(WORKERS)
        .subscribe("w4", root)
        .subscribe("w4-child", child)
        .start()
        .unwrap();
    // A root finishes rolling back only after all its children did.
    wait_zero(
        admin,
        &format!(
            "SELECT count(*) FROM {SCHEMA}.runs WHERE handler = $1 AND status <> 'rolled_back'"
        ),
        "w4-root",
    );
    let row = admin
        .query_one(
            &format!(
                "SELECT extract(epoch FROM max(finished_at))::float8,
                        (SELECT count(*) FROM {SCHEMA}.compensations)::int8
                 FROM {SCHEMA}.runs"
            ),
            &[],
        )
        .unwrap();
    let (end, compensations): (f64, i64) = (row.get(0), row.get(1));
    runtime.shutdown().unwrap();
    let seconds = end - start;
    report("w4_seconds", seconds);
    report("w4_compensations_per_s", compensations as f64 / seconds);
    report(
        "w4_compensations_per_tree",
        compensations as f64 / roots as f64,
    );
}

fn xacts(admin: &mut postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database \
             WHERE datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0)
}

fn idle(admin: &mut postgres::Client) {
    let _client = fresh_schema(admin);
    let mut builder = Runtime::builder(url()).schema(SCHEMA).workers(8);
    for i in 0..20 {
        let saga = Saga::builder(format!("idle-{i}"))
            .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
            .build()
            .unwrap();
        builder = builder.subscribe(format!("idle-topic-{i}"), saga);
    }
    let runtime = builder.start().unwrap();
    // Backends report their counters to pg_stat_database up to ~10 s late; let the start-up
    // burst land before the window opens.
    std::thread::sleep(Duration::from_secs(11));
    let before = xacts(admin);
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let after = xacts(admin);
    // The first snapshot's own transaction is counted in the second one.
    let observed = (after - before - 1).max(0);
    let stats = runtime.stats();
    runtime.shutdown().unwrap();
    report("idle_tx_per_s", observed as f64 / window.as_secs_f64());
    report("idle_sweeps", stats.sweeps as f64);
}

fn main() {
    let mut admin = admin();
    if wanted("w1") {
        w1(&mut admin);
    }
    if wanted("w3") {
        w3(&mut admin);
    }
    if wanted("batched") {
        batched_w1(&mut admin);
    }
    if wanted("trips") {
        trips::round_trips();
    }
    if wanted("launch") {
        launches::launches(&mut admin);
    }
    if wanted("wake") {
        let (p50, p99) = wake(&mut admin, false);
        report("wake_latency_p50_ms", p50);
        report("wake_latency_p99_ms", p99);
        let (p50, p99) = wake(&mut admin, true);
        report("wake_latency_via_notify_p50_ms", p50);
        report("wake_latency_via_notify_p99_ms", p99);
    }
    if wanted("flat") {
        flatness::flatness(200_000);
    }
    if explicitly("flat1m") {
        flatness::flatness(1_000_000);
    }
    if wanted("w4") {
        w4(&mut admin);
    }
    if wanted("sleep") {
        let (p50, p99) = control::sleep_lateness(&mut admin);
        report("sleep_lateness_p50_ms", p50);
        report("sleep_lateness_p99_ms", p99);
    }
    if wanted("cancel") {
        let (median, max) = control::cancel_depth3(&mut admin);
        report("cancel_depth3_ms", median);
        report("cancel_depth3_max_ms", max);
    }
    if wanted("idle") {
        idle(&mut admin);
    }
    if wanted("tokio") {
        runtimes::tokio_figures(&mut admin);
    }
    if wanted("scale") {
        runtimes::scaling(&mut admin);
    }
    if wanted("ops") {
        operations::operations(&mut admin);
    }
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .unwrap();
}
