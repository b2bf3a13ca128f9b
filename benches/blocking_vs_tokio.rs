//! Criterion group `blocking_vs_tokio`: the same workloads on the blocking runtime and on the
//! tokio runtime, with equal workers (1, 4, 16), and tokio also with 64 tasks sharing 16
//! connections. Needs `DATABASE_URL` and the `tokio` feature (`scripts/bench --criterion`).
//!
//! * `w1/<runtime>/<workers>`: single-step jobs (one insert each), launched in one
//!   transaction, timed from its commit until every job committed; throughput per job;
//! * `w3/<runtime>/<workers>`: roots that emit 10 children (one insert each) and then insert
//!   once: 12 step transactions per root; throughput per root;
//! * `round_trip/<runtime>`: launch a root whose step emits one child, and wait until the
//!   root committed, one at a time on an otherwise idle runtime (4 workers), measured first
//!   on the fresh schema.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use structured_cooperation::tokio as sct;
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

const SCHEMA: &str = "sc_bench_vs";

fn url() -> String {
    std::env::var("DATABASE_URL")
        .expect("set DATABASE_URL (scripts/bench --criterion provisions a database and sets it)")
}

fn insert_blocking(ctx: &mut StepContext<'_>) -> StepResult {
    let run = ctx.run_id().as_uuid();
    let insert = ctx.prepare_cached(&format!(
        "INSERT INTO {SCHEMA}.results (run_id) VALUES ($1)"
    ))?;
    ctx.tx().execute(&insert, &[&run])?;
    Ok(())
}

async fn insert_tokio(ctx: &mut sct::StepContext<'_>) -> StepResult {
    let run = ctx.run_id().as_uuid();
    let insert = ctx
        .prepare_cached(&format!(
            "INSERT INTO {SCHEMA}.results (run_id) VALUES ($1)"
        ))
        .await?;
    ctx.tx().await.execute(&insert, &[&run]).await?;
    Ok(())
}

fn blocking_sagas() -> Vec<(&'static str, Saga)> {
    let job = Saga::builder("job")
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_blocking(ctx))
        .build()
        .unwrap();
    let root = Saga::builder("fan-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            for i in 0..10 {
                ctx.emit("fan-child", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_blocking(ctx))
        .build()
        .unwrap();
    let child = Saga::builder("fan-child")
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_blocking(ctx))
        .build()
        .unwrap();
    let parent = Saga::builder("rt-parent")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("rt-child", &json!({}))?;
            Ok(())
        })
        .build()
        .unwrap();
    let leaf = Saga::builder("rt-child")
        .step(|_ctx: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    vec![
        ("jobs", job),
        ("fan", root),
        ("fan-child", child),
        ("rt-parent", parent),
        ("rt-child", leaf),
    ]
}

fn tokio_sagas() -> Vec<(&'static str, sct::Saga)> {
    let job = sct::Saga::builder("job")
        .step(|ctx, _: &Value| Box::pin(async move { insert_tokio(ctx).await }))
        .build()
        .unwrap();
    let root = sct::Saga::builder("fan-root")
        .step(|ctx, _: &Value| {
            Box::pin(async move {
                for i in 0..10 {
                    ctx.emit("fan-child", &json!({ "i": i }))?;
                }
                StepResult::Ok(())
            })
        })
        .step(|ctx, _: &Value| Box::pin(async move { insert_tokio(ctx).await }))
        .build()
        .unwrap();
    let child = sct::Saga::builder("fan-child")
        .step(|ctx, _: &Value| Box::pin(async move { insert_tokio(ctx).await }))
        .build()
        .unwrap();
    let parent = sct::Saga::builder("rt-parent")
        .step(|ctx, _: &Value| {
            Box::pin(async move {
                ctx.emit("rt-child", &json!({}))?;
                StepResult::Ok(())
            })
        })
        .build()
        .unwrap();
    let leaf = sct::Saga::builder("rt-child")
        .step(|_ctx, _: &Value| Box::pin(async move { StepResult::Ok(()) }))
        .build()
        .unwrap();
    vec![
        ("jobs", job),
        ("fan", root),
        ("fan-child", child),
        ("rt-parent", parent),
        ("rt-child", leaf),
    ]
}

/// A running runtime of either kind.
enum Served {
    Blocking(Runtime),
    Tokio(tokio::runtime::Runtime, sct::Runtime),
}

impl Served {
    fn blocking(workers: usize) -> Served {
        let mut builder = Runtime::builder(url()).schema(SCHEMA).workers(workers);
        for (topic, saga) in blocking_sagas() {
            builder = builder.subscribe(topic, saga);
        }
        Served::Blocking(builder.start().unwrap())
    }

    fn tokio(workers: usize, connections: usize) -> Served {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let runtime = rt.block_on(async {
            let mut builder = sct::Runtime::builder(url())
                .schema(SCHEMA)
                .workers(workers)
                .connections(connections);
            for (topic, saga) in tokio_sagas() {
                builder = builder.subscribe(topic, saga);
            }
            builder.start().await.unwrap()
        });
        Served::Tokio(rt, runtime)
    }

    fn round_trip(&self) {
        match self {
            Served::Blocking(runtime) => {
                let root = runtime.launch("rt-parent", &json!({})).unwrap();
                assert!(
                    runtime
                        .wait_for(root, Duration::from_secs(30))
                        .unwrap()
                        .is_committed()
                );
            }
            Served::Tokio(rt, runtime) => rt.block_on(async {
                let root = runtime.launch("rt-parent", &json!({})).await.unwrap();
                let outcome = runtime
                    .wait_for(root, Duration::from_secs(30))
                    .await
                    .unwrap();
                assert!(outcome.is_committed());
            }),
        }
    }

    fn stop(self) {
        match self {
            Served::Blocking(runtime) => runtime.shutdown().unwrap(),
            Served::Tokio(rt, runtime) => rt.block_on(runtime.shutdown()).unwrap(),
        }
    }
}

/// Launches `n` roots on `topic` in one transaction, and times from its commit until no run
/// of `handler` is left unfinished.
fn drain(
    client: &Client,
    admin: &mut postgres::Client,
    topic: &str,
    handler: &str,
    n: u64,
) -> Duration {
    let mut conn = client.pool().get().unwrap();
    let mut tx = conn.transaction().unwrap();
    for i in 0..n {
        client
            .launch_in(&mut tx, topic, &json!({ "i": i }))
            .unwrap();
    }
    let start = Instant::now();
    tx.commit().unwrap();
    let unfinished =
        format!("SELECT count(*) FROM {SCHEMA}.runs WHERE handler = $1 AND status <> 'committed'");
    while admin
        .query_one(&unfinished, &[&handler])
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let mut admin = postgres::Client::connect(&url(), postgres::NoTls)
        .expect("DATABASE_URL must point at a reachable PostgreSQL");
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .unwrap();
    let client = Client::builder(url()).schema(SCHEMA).connect().unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TABLE {SCHEMA}.results (id bigserial PRIMARY KEY, run_id uuid NOT NULL)"
        ))
        .unwrap();
    // (name, workers or connections, tokio tasks; `None`: the blocking runtime)
    let configs: [(&str, usize, Option<usize>); 7] = [
        ("blocking", 1, None),
        ("tokio", 1, Some(1)),
        ("blocking", 4, None),
        ("tokio", 4, Some(4)),
        ("blocking", 16, None),
        ("tokio", 16, Some(16)),
        ("tokio_64_tasks", 16, Some(64)),
    ];

    let mut group = c.benchmark_group("blocking_vs_tokio");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    // Round trips first, on a fresh schema: the throughput configurations leave tens of
    // thousands of finished runs and dead rows behind, which would slow a single round trip.
    // Started one after the other: both serve the same handlers on one schema, so a second
    // runtime alive during the first one's round trips would take some of its work.
    for name in ["blocking", "tokio"] {
        let served = match name {
            "blocking" => Served::blocking(4),
            _ => Served::tokio(4, 4),
        };
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("round_trip", name), |b| {
            b.iter(|| served.round_trip())
        });
        served.stop();
    }
    for (name, workers, tasks) in &configs {
        let served = match tasks {
            None => Served::blocking(*workers),
            Some(tasks) => Served::tokio(*tasks, *workers),
        };
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new(format!("w1/{name}"), workers),
            workers,
            |b, _| b.iter_custom(|iters| drain(&client, &mut admin, "jobs", "job", iters)),
        );
        group.throughput(Throughput::Elements(12));
        group.bench_with_input(
            BenchmarkId::new(format!("w3/{name}"), workers),
            workers,
            |b, _| b.iter_custom(|iters| drain(&client, &mut admin, "fan", "fan-root", iters)),
        );
        served.stop();
    }
    group.finish();
}

criterion_group!(blocking_vs_tokio, benches);
criterion_main!(blocking_vs_tokio);
