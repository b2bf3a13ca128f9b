//! Periodic and scheduled work as users expect it (issue 10): a periodic saga's next run keeps
//! its launch context; scheduled chains run one occurrence at a time, go on after a failure,
//! are found and stopped by their key, and follow cron expressions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{
    ChainStop, CooperationContext, EmitOptions, RunStatus, Schedule, StepContext, StepError,
    StepResult,
};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, TestDb, WAIT, eventually};

fn tenant_context() -> CooperationContext {
    let mut context = CooperationContext::new();
    context.set_raw("tenant", r#""acme""#).unwrap();
    context
}

fn tenant(ctx: &StepContext<'_, impl structured_cooperation::Flavor>) -> String {
    ctx.context()
        .get_raw("tenant")
        .map_or_else(|| "none".to_owned(), str::to_owned)
}

fn a_periodic_sagas_next_run_keeps_its_launch_context<E: Engine>() {
    let db = TestDb::new("periodic_context");
    let log = ExecLog::default();
    let saga = {
        let log = log.clone();
        E::saga("ticker")
            .periodic(Duration::from_millis(50), Some(3))
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    log.push(format!("run-{} {}", ctx.run_count(), tenant(ctx)));
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db).subscribe("ticks", saga).start().unwrap();
    runtime
        .launch_with(
            "ticks",
            &json!({}),
            EmitOptions::new().context(tenant_context()),
        )
        .unwrap();
    eventually("three runs", || log.entries().len() == 3);
    let mut runs = log.entries();
    runs.sort();
    assert_eq!(
        runs,
        [r#"run-0 "acme""#, r#"run-1 "acme""#, r#"run-2 "acme""#]
    );
    runtime.shutdown().unwrap();
}

/// An occurrence's run count, start, end and tenant.
type Span = (u32, Instant, Instant, String);

/// Occurrences every 100 ms whose step takes 250 ms: they never overlap (the next one is
/// launched when the previous one ends), the times missed meanwhile are skipped, every
/// occurrence starts from the launch context, a failing occurrence does not end the chain,
/// and starting the chain again with its key changes nothing. Then it is stopped by key.
fn a_scheduled_chain_runs_one_occurrence_at_a_time_until_stopped<E: Engine>() {
    let db = TestDb::new("chain_every");
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let saga = {
        let spans = spans.clone();
        E::saga("report")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let start = Instant::now();
                    // A long occurrence: the behaviour under test is that the next one waits.
                    std::thread::sleep(Duration::from_millis(250));
                    let n = ctx.run_count();
                    spans
                        .lock()
                        .unwrap()
                        .push((n, start, Instant::now(), tenant(ctx)));
                    if n == 1 {
                        return Err(StepError::msg("occurrence 1 fails"));
                    }
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .workers(4)
        .subscribe("reports", saga)
        .start()
        .unwrap();
    let client = db.client();
    let every = Schedule::every(Duration::from_millis(100));
    let options = EmitOptions::new().context(tenant_context());
    let started = client
        .schedule_with("nightly", "reports", &json!({}), &every, options.clone())
        .unwrap();
    assert_eq!((started.occurrences, started.key.as_str()), (1, "nightly"));
    assert_eq!(started.schedule, "every 100ms");
    eventually("four occurrences", || spans.lock().unwrap().len() >= 4);
    // Starting it again is a no-op that reports where it is.
    let again = client
        .schedule_with("nightly", "reports", &json!({}), &every, options)
        .unwrap();
    assert_eq!(again.key, "nightly");
    assert!(again.occurrences >= 4, "{again:?}");
    assert_eq!(
        client
            .stop_chain("nightly", "ops", "report retired")
            .unwrap(),
        ChainStop::Stopped
    );
    assert_eq!(
        client.stop_chain("nightly", "ops", "again").unwrap(),
        ChainStop::AlreadyStopped
    );
    assert_eq!(
        client.stop_chain("no-such-chain", "ops", "x").unwrap(),
        ChainStop::Unknown
    );
    eventually("every occurrence finished", || {
        let info = client.chain("nightly").unwrap().unwrap();
        info.latest_status.is_some_and(RunStatus::is_terminal)
    });
    runtime.wait_idle(WAIT).unwrap();
    let info = client.chain("nightly").unwrap().unwrap();
    assert!(info.stopped_at.is_some());
    let spans = spans.lock().unwrap().clone();
    // Nothing ran after the stop but what had started, and nothing is left to run.
    assert!(
        info.occurrences as usize <= spans.len() + 1,
        "{info:?} {}",
        spans.len()
    );
    let mut by_start = spans.clone();
    by_start.sort_by_key(|s| s.1);
    for pair in by_start.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "occurrence {} started before occurrence {} ended",
            pair[1].0,
            pair[0].0
        );
        assert_eq!(pair[1].0, pair[0].0 + 1, "in order, none twice");
    }
    assert!(spans.iter().all(|s| s.3 == r#""acme""#), "{spans:?}");
    assert!(
        spans.iter().any(|s| s.0 == 2),
        "the chain went on after occurrence 1 failed"
    );
    // An occurrence that was waiting for its time when the chain stopped gave up.
    if info.occurrences as usize > spans.len() {
        let outcome = runtime.outcome(info.latest_root).unwrap();
        let failure = outcome.runs()[0].failure.clone().unwrap();
        assert_eq!(failure.kind(), "structured_cooperation::ChainStopped");
        assert_eq!(failure.message(), "report retired");
    }
    runtime.shutdown().unwrap();
}

/// A chain whose next occurrence is an hour away: stopping it makes that occurrence give up
/// at once, without running its step.
fn stopping_a_chain_ends_the_occurrence_waiting_for_its_time<E: Engine>() {
    let db = TestDb::new("chain_stop_waiting");
    let log = ExecLog::default();
    let saga = {
        let log = log.clone();
        E::saga("hourly")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    log.push(format!("occurrence-{}", ctx.run_count()));
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db).subscribe("hourly", saga).start().unwrap();
    let client = db.client();
    let hourly = Schedule::every(Duration::from_secs(3600));
    client.schedule("h", "hourly", &json!({}), &hourly).unwrap();
    eventually("the second occurrence waits", || {
        client.chain("h").unwrap().unwrap().occurrences == 2
    });
    let waiting = client.chain("h").unwrap().unwrap();
    assert_eq!(waiting.latest_status, Some(RunStatus::Active));
    let at = waiting.latest_scheduled_for.unwrap();
    assert!(at > std::time::SystemTime::now() + Duration::from_secs(3000));
    assert_eq!(
        client.stop_chain("h", "ops", "retired").unwrap(),
        ChainStop::Stopped
    );
    let outcome = runtime.wait_for(waiting.latest_root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert_eq!(log.entries(), ["occurrence-0"]);
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(
        client.chain("h").unwrap().unwrap().occurrences,
        2,
        "no third"
    );
    runtime.shutdown().unwrap();
}

both!(
    a_periodic_sagas_next_run_keeps_its_launch_context,
    a_scheduled_chain_runs_one_occurrence_at_a_time_until_stopped,
    stopping_a_chain_ends_the_occurrence_waiting_for_its_time,
);

#[test]
fn bad_chain_keys_and_idempotency_keys_on_chains_are_refused() {
    let db = TestDb::new("chain_bad");
    let client = db.client();
    let every = Schedule::every(Duration::from_secs(1));
    assert!(client.schedule("", "t", &json!({}), &every).is_err());
    let keyed = EmitOptions::new().idempotency_key("k");
    let e = client
        .schedule_with("c", "t", &json!({}), &every, keyed)
        .unwrap_err();
    assert!(e.to_string().contains("give no idempotency key"), "{e}");
    assert!(client.chain("c").unwrap().is_none());
}

/// Every second, by a cron expression with a seconds field, in a named time zone.
#[cfg(feature = "cron")]
#[test]
fn a_cron_chain_runs_at_its_times() {
    use structured_cooperation::{Runtime, Saga};
    let db = TestDb::new("chain_cron");
    let times = ExecLog::default();
    let saga = {
        let times = times.clone();
        Saga::builder("cron")
            .step(move |_, _: &Value| -> StepResult {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                times.push(format!("{}", now.as_millis()));
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime: Runtime = db.runtime().subscribe("cron", saga).start().unwrap();
    let schedule = Schedule::cron("* * * * * *")
        .unwrap()
        .in_timezone("America/New_York")
        .unwrap();
    let chain = db
        .client()
        .schedule("every-second", "cron", &json!({}), &schedule)
        .unwrap();
    assert_eq!(chain.schedule, "cron \"* * * * * *\" in America/New_York");
    eventually("three occurrences", || times.entries().len() >= 3);
    db.client()
        .stop_chain("every-second", "test", "done")
        .unwrap();
    let ms: Vec<u128> = times.entries().iter().map(|t| t.parse().unwrap()).collect();
    for pair in ms.windows(2) {
        // Each at a whole second of its own (started up to a few ms after it).
        assert!(pair[1] / 1000 > pair[0] / 1000, "{ms:?}");
    }
    runtime.shutdown().unwrap();
}
