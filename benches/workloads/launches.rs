//! Launch rates from one thread: one root at a time (`Client::launch`, its own transaction
//! each), and in batches (`Client::launch_many`, one transaction per batch). A handler is
//! registered for the topic, so every launch also creates its run, as in production.

use std::time::Instant;

use serde_json::json;

use super::{fresh_schema, report};

const ROUNDS: usize = 3;
const SINGLE: usize = 2_000;
const BATCH: usize = 1_000;
const BATCHES: usize = 20;

/// `launch_per_s` and `launch_many_per_s`: every round, then the median.
pub(crate) fn launches(admin: &mut postgres::Client) {
    let client = fresh_schema(admin);
    client.register_handler("launches", "launch-job").unwrap();
    for i in 0..100 {
        client.launch("launches", &json!({ "warm": i })).unwrap();
    }
    let mut single = Vec::new();
    let mut many = Vec::new();
    for round in 1..=ROUNDS {
        let started = Instant::now();
        for i in 0..SINGLE {
            client.launch("launches", &json!({ "n": i })).unwrap();
        }
        let rate = SINGLE as f64 / started.elapsed().as_secs_f64();
        report(&format!("launch_per_s_r{round}"), rate);
        single.push(rate);

        let payloads: Vec<_> = (0..BATCH).map(|i| json!({ "n": i })).collect();
        let started = Instant::now();
        for _ in 0..BATCHES {
            let roots = client.launch_many("launches", &payloads).unwrap();
            assert_eq!(roots.len(), BATCH);
        }
        let rate = (BATCH * BATCHES) as f64 / started.elapsed().as_secs_f64();
        report(&format!("launch_many_per_s_r{round}"), rate);
        many.push(rate);
    }
    report("launch_per_s", median(&mut single));
    report("launch_many_per_s", median(&mut many));
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
