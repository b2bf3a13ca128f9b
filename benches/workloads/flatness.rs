//! History flatness: whether finished work slows the engine down. w1 runs alternately on a
//! fresh schema (database `sc_bench`) and on one that holds `trees` finished trees the
//! engine itself made (database `sc_bench_history`): nine single-step jobs for every tree
//! of a root with two children and two steps, run by the engine (8 steps per commit, so it
//! takes minutes rather than an hour), with the dead tuples, index entries and history its
//! own updates left; nothing is vacuumed by hand (autovacuum, where the server runs it, or
//! else the runtimes' own vacuum, `RuntimeBuilder::vacuum_runs_after`, as users get it). Three runs of each, interleaved; reports
//! every run, the medians and the spread, and `history_flatness` = median with history ÷
//! median fresh.

use std::time::Instant;

use serde_json::{Value, json};
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

use super::runtimes::Engine;
use super::{
    DATABASE, SCHEMA, WORKERS, admin, fresh_schema, insert_result, report, url, w1_measure,
    wait_zero,
};

const ROUNDS: usize = 3;
const JOBS: usize = 10_000;

pub(crate) fn flatness(trees: usize) {
    let base = url();
    let history_url = ensure_database(&base, "sc_bench_history");
    let label = if trees >= 1_000_000 {
        format!("{}m", trees / 1_000_000)
    } else {
        format!("{}k", trees / 1_000)
    };
    use_database(Some(history_url.clone()));
    let mut history_admin = admin();
    let history_client = fresh_schema(&mut history_admin);
    let made = Instant::now();
    let vacuums = make_history(&mut history_admin, &history_client, trees);
    report(&format!("history_{label}_runtime_vacuums"), vacuums as f64);
    let seconds = made.elapsed().as_secs_f64();
    report(&format!("history_{label}_made_in_s"), seconds);
    // Production tables are vacuumed as they go; a benchmark that starts the moment the
    // history is written would measure the minute before autovacuum's next round. So, when
    // the server runs autovacuum, wait for it (the schema's own settings, see migration 7).
    // A server without it keeps every dead row and index entry: measured as it is.
    let autovacuum: String = history_admin
        .query_one("SHOW autovacuum", &[])
        .unwrap()
        .get(0);
    report(
        "server_autovacuum_on",
        f64::from(u8::from(autovacuum == "on")),
    );
    if autovacuum == "on" {
        let waited = Instant::now();
        wait_for_autovacuum(&mut history_admin);
        report(
            &format!("history_{label}_autovacuum_wait_s"),
            waited.elapsed().as_secs_f64(),
        );
    }
    use_database(None);

    let (mut fresh, mut aged) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        use_database(None);
        let mut admin = admin();
        let client = fresh_schema(&mut admin);
        let rate = w1_measure(&mut admin, &client, JOBS, engine(), "ANALYZE");
        report(&format!("flat_{label}_fresh_r{round}_steps_per_s"), rate);
        fresh.push(rate);

        use_database(Some(history_url.clone()));
        let rate = w1_measure(
            &mut history_admin,
            &history_client,
            JOBS,
            engine(),
            "ANALYZE",
        );
        report(&format!("flat_{label}_history_r{round}_steps_per_s"), rate);
        aged.push(rate);
    }
    use_database(None);
    let (f, a) = (median(&mut fresh), median(&mut aged));
    report(&format!("flat_{label}_fresh_steps_per_s"), f);
    report(&format!("flat_{label}_history_steps_per_s"), a);
    report(&format!("flat_{label}_fresh_spread"), spread(&fresh));
    report(&format!("flat_{label}_history_spread"), spread(&aged));
    let name = if trees == 200_000 {
        "history_flatness".to_owned()
    } else {
        format!("history_flatness_{label}")
    };
    report(&name, a / f);
}

fn engine() -> Engine {
    Engine::Blocking { workers: WORKERS }
}

fn use_database(url: Option<String>) {
    *DATABASE.lock().unwrap() = url;
}

/// `base` with its database replaced by `name`, created if missing.
fn ensure_database(base: &str, name: &str) -> String {
    let mut admin = admin();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .unwrap()
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
    }
    let (prefix, rest) = base
        .rsplit_once('/')
        .expect("DATABASE_URL names a database");
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{prefix}/{name}{query}")
}

/// Runs `trees` finished trees through the engine on the history database: nine w1 jobs
/// (the measured handler's own kind) for every root with two children. Returns how many
/// times the runtime vacuumed `runs` itself.
fn make_history(admin: &mut postgres::Client, client: &Client, trees: usize) -> u64 {
    let job = Saga::builder("w1-job")
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_result(ctx))
        .build()
        .unwrap();
    let root = Saga::builder("history-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            for i in 0..2 {
                ctx.emit("history-child", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_result(ctx))
        .build()
        .unwrap();
    let child = Saga::builder("history-child")
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_result(ctx))
        .build()
        .unwrap();
    let runtime = Runtime::builder(url())
        .schema(SCHEMA)
        .workers(WORKERS)
        .steps_per_commit(8)
        .subscribe("w1", job)
        .subscribe("history", root)
        .subscribe("history-child", child)
        .start()
        .unwrap();
    let jobs: Vec<Value> = (0..900).map(|n| json!({ "n": n })).collect();
    let roots: Vec<Value> = (0..100).map(|n| json!({ "n": n })).collect();
    let mut launched = 0;
    while launched < trees {
        client.launch_many("w1", &jobs).unwrap();
        client.launch_many("history", &roots).unwrap();
        launched += jobs.len() + roots.len();
        // Keep at most a few batches ahead of the runtime, as a steady producer would.
        if launched % 20_000 == 0 {
            wait_zero(
                admin,
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM {SCHEMA}.runs \
                     WHERE handler = $1 AND status <> 'committed' LIMIT 1) left_"
                ),
                "w1-job",
            );
        }
    }
    for handler in ["w1-job", "history-root", "history-child"] {
        wait_zero(
            admin,
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {SCHEMA}.runs \
                 WHERE handler = $1 AND status <> 'committed' LIMIT 1) left_"
            ),
            handler,
        );
    }
    let vacuums = runtime.stats().vacuums;
    runtime.shutdown().unwrap();
    vacuums
}

/// Waits until autovacuum has vacuumed the runs table since now (at most 10 minutes).
fn wait_for_autovacuum(admin: &mut postgres::Client) {
    let count = |admin: &mut postgres::Client| -> i64 {
        admin
            .query_one(
                "SELECT autovacuum_count FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname = 'runs'",
                &[&SCHEMA],
            )
            .unwrap()
            .get(0)
    };
    let before = count(admin);
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while count(admin) == before {
        assert!(Instant::now() < deadline, "autovacuum never vacuumed runs");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// (max - min) / median of the runs.
fn spread(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    let m = median(&mut v);
    (v[v.len() - 1] - v[0]) / m
}
