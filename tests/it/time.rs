//! SL-*: durable time — sleep, scheduled steps, periodic sagas, timers on an idle runtime.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use structured_cooperation::{SagaOf, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, TestDb, WAIT, eventually, history_of};

fn db_now(db: &mut TestDb) -> f64 {
    db.admin()
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .unwrap()
        .get(0)
}

fn sl_01_sleep_waits_on_the_database_clock<E: Engine>() {
    let mut db = TestDb::new("sl_01");
    let times = ExecLog::default();
    let saga = {
        let (t0, t2) = (times.clone(), times.clone());
        E::saga("root-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let now: f64 = E::query_one(
                        ctx,
                        "SELECT extract(epoch FROM clock_timestamp())::float8",
                        &[],
                    )?
                    .get(0);
                    t0.push(now.to_string());
                    Ok(())
                },
            )
            .sleep(Duration::from_millis(500))
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let now: f64 = E::query_one(
                        ctx,
                        "SELECT extract(epoch FROM clock_timestamp())::float8",
                        &[],
                    )?
                    .get(0);
                    t2.push(now.to_string());
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .subscribe("root-topic", saga)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    let t: Vec<f64> = times.entries().iter().map(|s| s.parse().unwrap()).collect();
    assert!(t[1] - t[0] >= 0.5, "slept {:.3} s", t[1] - t[0]);
    // The run itself sleeps: no sleep-handler child (a deliberate difference from Scoop).
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-",
            "SEEN@root-handler",
            "SUSPENDED(0)@root-handler",
            "SUSPENDED(1)@root-handler",
            "SUSPENDED(2)@root-handler",
            "COMMITTED(2)@root-handler",
        ]
    );
    let _ = db_now(&mut db);
}

fn sl_02_a_scheduled_step_runs_at_its_time<E: Engine>() {
    let db = TestDb::new("sl_02");
    let ran_at = ExecLog::default();
    let start_after = SystemTime::now() + Duration::from_millis(500);
    let saga = {
        let ran_at = ran_at.clone();
        E::saga("root-handler")
            .scheduled_step(
                move |_: &Value| start_after,
                move |_, _: &Value| -> StepResult {
                    ran_at.push(format!(
                        "{:?}",
                        SystemTime::now().duration_since(start_after).is_ok()
                    ));
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    assert_eq!(saga.step_names(), ["0 (waiting for scheduled time)", "0"]);
    let runtime = E::runtime(&db)
        .subscribe("root-topic", saga)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(ran_at.entries(), ["true"], "the step ran after its time");
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-",
            "SEEN@root-handler",
            "SUSPENDED(0 (waiting for scheduled time))@root-handler",
            "SUSPENDED(0)@root-handler",
            "COMMITTED(0)@root-handler",
        ]
    );
}

/// A timer set while the runtime is otherwise idle fires by itself: the safety net is an hour.
fn a_timer_fires_on_an_idle_runtime_without_the_sweep<E: Engine>() {
    let db = TestDb::new("idle_timer");
    let saga = E::saga("napper")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            ctx.delay_next(Duration::from_millis(300));
            Ok(())
        })
        .step(|_, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .safety_net_interval(Duration::from_secs(3600))
        .subscribe("t", saga)
        .start()
        .unwrap();
    let started = Instant::now();
    let id = runtime.launch("t", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(runtime.stats().sweeps, 1, "only the start-up sweep");
}

fn periodic_saga<E: Engine>(log: &ExecLog) -> SagaOf<E::X> {
    let log = log.clone();
    E::saga("ticker")
        .periodic(Duration::from_millis(200), Some(4))
        .step(
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                log.push(format!("run-{}", ctx.run_count()));
                Ok(())
            },
        )
        .build()
        .unwrap()
}

/// Four runs, 200 ms apart; the runtime is stopped and a new one started in the middle: the
/// chain goes on (its sleeps are rows in the database, not timers in memory).
fn a_periodic_saga_survives_a_runtime_restart<E: Engine>() {
    let mut db = TestDb::new("periodic_restart");
    let log = ExecLog::default();
    let first = E::runtime(&db)
        .subscribe("ticks", periodic_saga::<E>(&log))
        .start()
        .unwrap();
    first.launch("ticks", &json!({"every": "200ms"})).unwrap();
    eventually("the second run", || log.entries().len() >= 2);
    first.shutdown().unwrap();
    let second = E::runtime(&db)
        .subscribe("ticks", periodic_saga::<E>(&log))
        .start()
        .unwrap();
    eventually("four runs", || {
        db.query_i64(
            "SELECT count(*) FROM __S__.runs WHERE handler = 'ticker' AND status = 'committed'",
        ) == 4
    });
    second.wait_idle(WAIT).unwrap();
    let mut runs = log.entries();
    runs.sort();
    assert_eq!(runs, ["run-0", "run-1", "run-2", "run-3"]);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM __S__.runs"),
        4,
        "no fifth run"
    );
    // Each run started at least 200 ms after the previous one (database clock).
    let gaps: i64 = db.query_i64(
        "SELECT count(*) FROM (SELECT started_at - lag(started_at) OVER (ORDER BY started_at) AS gap \
         FROM __S__.runs) g WHERE gap < interval '200 milliseconds'",
    );
    assert_eq!(gaps, 0);
}

both!(
    sl_01_sleep_waits_on_the_database_clock,
    sl_02_a_scheduled_step_runs_at_its_time,
    a_timer_fires_on_an_idle_runtime_without_the_sweep,
    a_periodic_saga_survives_a_runtime_restart,
);
