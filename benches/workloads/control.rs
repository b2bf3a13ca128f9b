//! Time and cancellation workloads: how late durable sleeps wake, and how fast a cancellation
//! brings a whole tree to rest.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Runtime, Saga, StepContext, StepResult};

use super::{SCHEMA, WORKERS, db_now, fresh_schema, prelaunch, url, wait_zero};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 1,000 pre-launched runs whose first step sleeps 1 s; the step after the sleep records how
/// long after its run's `wake_at` it started (database clock). Returns (p50, p99) in ms.
pub(crate) fn sleep_lateness(admin: &mut postgres::Client) -> (f64, f64) {
    const RUNS: usize = 1000;
    let client = fresh_schema(admin);
    let samples = Arc::new(Mutex::new(Vec::with_capacity(RUNS)));
    let saga = {
        let samples = samples.clone();
        Saga::builder("sleeper")
            .sleep(Duration::from_secs(1))
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                let run = ctx.run_id().as_uuid();
                let late = ctx.prepare_cached(&format!(
                    "SELECT (extract(epoch FROM clock_timestamp() - wake_at) * 1000)::float8 \
                     FROM {SCHEMA}.runs WHERE id = $1"
                ))?;
                let ms: f64 = ctx.tx().query_one(&late, &[&run])?.get(0);
                samples.lock().unwrap().push(ms);
                Ok(())
            })
            .build()
            .unwrap()
    };
    client.register_handler("sleep", "sleeper").unwrap();
    prelaunch(&client, "sleep", RUNS);
    let runtime = Runtime::builder(url())
        .schema(SCHEMA)
        .workers(WORKERS)
        .subscribe("sleep", saga)
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while samples.lock().unwrap().len() < RUNS {
        assert!(Instant::now() < deadline, "sleepers did not all wake");
        std::thread::sleep(Duration::from_millis(20));
    }
    runtime.shutdown().unwrap();
    let mut s = samples.lock().unwrap().clone();
    s.sort_by(f64::total_cmp);
    assert!(s[0] >= 0.0, "a sleeper woke {} ms early", -s[0]);
    (percentile(&s, 0.5), percentile(&s, 0.99))
}

/// Trees of depth 3 and fan-out 5 (1 + 5 + 25 runs) whose leaves sleep for an hour; once every
/// leaf sleeps, `cancel(root)` and time (database clock) until the last run of the tree is
/// terminal. Returns (median, max) in ms over 10 trees.
pub(crate) fn cancel_depth3(admin: &mut postgres::Client) -> (f64, f64) {
    const TREES: usize = 10;
    let _client = fresh_schema(admin);
    let fan_out = |name: &str, to: &'static str| {
        Saga::builder(name)
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                for i in 0..5 {
                    ctx.emit(to, &json!({ "i": i }))?;
                }
                Ok(())
            })
            .build()
            .unwrap()
    };
    let leaf = Saga::builder("cx-leaf")
        .sleep(Duration::from_secs(3600))
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = Runtime::builder(url())
        .schema(SCHEMA)
        .workers(WORKERS)
        .subscribe("cx-root", fan_out("cx-root", "cx-mid"))
        .subscribe("cx-mid", fan_out("cx-mid", "cx-leaf"))
        .subscribe("cx-leaf", leaf)
        .start()
        .unwrap();
    let sleeping = format!(
        "SELECT 25 - count(*) FROM {SCHEMA}.runs WHERE root_id = $1::text::uuid \
         AND handler = 'cx-leaf' AND step_index = 1 AND status = 'active'"
    );
    let unfinished = format!(
        "SELECT count(*) FROM {SCHEMA}.runs WHERE root_id = $1::text::uuid \
         AND status IN ('active', 'rolling_back')"
    );
    let took = format!(
        "SELECT count(*)::int8, (extract(epoch FROM max(finished_at)) * 1000)::float8 \
         FROM {SCHEMA}.runs WHERE root_id = $1::text::uuid"
    );
    let mut samples = Vec::with_capacity(TREES);
    for _ in 0..TREES {
        let root = runtime.launch("cx-root", &json!({})).unwrap();
        let key = root.to_string();
        wait_zero(admin, &sleeping, &key);
        let start_ms = db_now(admin) * 1000.0;
        assert!(
            runtime.cancel(root, "bench", "stop").unwrap().is_recorded(),
            "the cancellation was refused"
        );
        wait_zero(admin, &unfinished, &key);
        let row = admin.query_one(&took, &[&key]).unwrap();
        assert_eq!(row.get::<_, i64>(0), 31, "a depth-3 tree of fan-out 5");
        samples.push(row.get::<_, f64>(1) - start_ms);
    }
    runtime.shutdown().unwrap();
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), samples[TREES - 1])
}
