//! Criterion micro-benchmarks of user-visible latencies on an idle runtime (needs
//! `DATABASE_URL`; `scripts/bench --criterion` provides one):
//!
//! * `launch`: one launch on the global scope, in its own transaction;
//! * `round_trip/one_step`: launch a one-step root and wait until it committed;
//! * `round_trip/parent_child`: a root whose step emits one child, until the root committed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use structured_cooperation::{Runtime, Saga, StepContext, StepResult};

const SCHEMA: &str = "sc_bench_criterion";

fn url() -> String {
    std::env::var("DATABASE_URL")
        .expect("set DATABASE_URL (scripts/bench --criterion provisions a database and sets it)")
}

fn benches(c: &mut Criterion) {
    let mut admin = postgres::Client::connect(&url(), postgres::NoTls)
        .expect("DATABASE_URL must point at a reachable PostgreSQL");
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .unwrap();
    let leaf = || {
        Saga::builder("leaf")
            .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
            .build()
            .unwrap()
    };
    let parent = Saga::builder("parent")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("child", &json!({}))?;
            Ok(())
        })
        .build()
        .unwrap();
    let runtime = Runtime::builder(url())
        .schema(SCHEMA)
        .subscribe("one-step", leaf())
        .subscribe("parent", parent)
        .subscribe("child", {
            Saga::builder("child")
                .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
                .build()
                .unwrap()
        })
        .start()
        .unwrap();
    runtime
        .client()
        .register_external_handler("launch-only", "nobody-runs-this")
        .unwrap();

    c.bench_function("launch", |b| {
        b.iter(|| {
            runtime
                .client()
                .launch("launch-only", &json!({"n": 1}))
                .unwrap()
        })
    });
    let mut group = c.benchmark_group("round_trip");
    group.sample_size(50);
    group.bench_function("one_step", |b| {
        b.iter(|| {
            let root = runtime.launch("one-step", &json!({})).unwrap();
            assert!(
                runtime
                    .wait_for(root, Duration::from_secs(10))
                    .unwrap()
                    .is_committed()
            );
        })
    });
    group.bench_function("parent_child", |b| {
        b.iter(|| {
            let root = runtime.launch("parent", &json!({})).unwrap();
            assert!(
                runtime
                    .wait_for(root, Duration::from_secs(10))
                    .unwrap()
                    .is_committed()
            );
        })
    });
    group.finish();
    runtime.shutdown().unwrap();
    admin
        .batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
        .unwrap();
}

criterion_group! {
    name = engine;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(engine);
