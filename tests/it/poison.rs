//! Runs that cannot succeed as they are (issue 10): data PostgreSQL refuses is refused
//! before it is written or fails the run once, and a run whose attempts keep failing on
//! infrastructure errors backs off, is counted and listed, and never spins.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{Error, RunStatus, StepContext, StepError, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT, eventually};

/// Makes the engine's own writes fail: inserting a `COMMITTED` history entry for `handler`
/// raises SQLSTATE `code`.
fn refuse_commits(db: &mut TestDb, handler: &str, code: &str) {
    let s = db.schema.clone();
    db.exec(&format!(
        "CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.event = 'COMMITTED' AND NEW.handler = '{handler}' THEN \
             RAISE EXCEPTION 'the disk is on fire' USING ERRCODE = '{code}'; \
           END IF; \
           RETURN NEW; \
         END $$"
    ));
    db.exec(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT ON {s}.history \
         FOR EACH ROW EXECUTE FUNCTION {s}.refuse()"
    ));
}

fn a_run_failing_on_infrastructure_errors_backs_off_and_is_listed<E: Engine>() {
    let mut db = TestDb::new("infra_backoff");
    let saga = E::saga("victim")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(400))
        .subscribe("t", saga)
        .start()
        .unwrap();
    refuse_commits(&mut db, "victim", "XX000");
    let root = runtime.launch("t", &json!({})).unwrap();
    let client = structured_cooperation::Client::builder(&db.url)
        .schema(&db.schema)
        .pool_size(1)
        .connect()
        .unwrap();
    eventually("six consecutive infrastructure failures", || {
        client
            .troubled_runs(10)
            .unwrap()
            .first()
            .is_some_and(|r| r.infra_failures >= 6)
    });
    let troubled = client.troubled_runs(10).unwrap();
    assert_eq!(troubled.len(), 1);
    let run = &troubled[0];
    assert_eq!((run.root_id, run.handler.as_str()), (root, "victim"));
    assert!(
        run.last_error
            .as_deref()
            .is_some_and(|e| e.contains("the disk is on fire")),
        "{run:?}"
    );
    // The wait grew from 10-20 ms to at least half of the 400 ms maximum: it backs off.
    let wait = run
        .wake_at
        .duration_since(run.updated_at)
        .unwrap_or_default();
    assert!(wait >= Duration::from_millis(150), "{wait:?}");
    assert!(runtime.stats().infra_errors >= 6);
    let tree = runtime.tree(root).unwrap();
    assert!(tree[0].infra_failures >= 6);
    assert_eq!(tree[0].status, RunStatus::Active);
    // Once the database takes the writes again, the run finishes and leaves the list.
    db.exec(&format!("DROP TRIGGER refuse ON {}.history", db.schema));
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    assert!(client.troubled_runs(10).unwrap().is_empty());
    assert_eq!(runtime.tree(root).unwrap()[0].infra_failures, 0);
    runtime.shutdown().unwrap();
}

fn a_data_exception_in_the_engines_statements_fails_the_run_once<E: Engine>() {
    let mut db = TestDb::new("data_exception");
    let saga = E::saga("victim")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    // 22023: invalid_parameter_value, a data exception like PostgreSQL's refusal of a value.
    refuse_commits(&mut db, "victim", "22023");
    let root = runtime.launch("t", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::DataRejected");
    assert!(
        failure.message().contains("the disk is on fire"),
        "{failure}"
    );
    // The attempt that met the exception counts it once it is over, which may be after
    // another worker already finished the run.
    eventually("the data error to be counted", || {
        runtime.stats().data_errors >= 1
    });
    assert_eq!(runtime.stats().data_errors, 1);
    runtime.shutdown().unwrap();
}

fn a_payload_postgres_cannot_store_is_refused_before_it_is_written<E: Engine>() {
    let db = TestDb::new("nul_payload");
    let parent = E::saga("parent")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            ctx.emit("child", &json!({ "note": "a\u{0}b" }))?;
            Ok(())
        })
        .build()
        .unwrap();
    let child = E::saga("child")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("parent", parent)
        .subscribe("child", child)
        .start()
        .unwrap();
    let root = runtime.launch("parent", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(
        failure.message(),
        "the payload for topic \"child\" cannot be stored: it contains the character U+0000, \
         which PostgreSQL does not accept in json"
    );
    assert_eq!(runtime.stats().infra_errors, 0, "never retried");
    // Launching such a payload from outside is refused the same way.
    match runtime.launch("parent", &json!({ "x": "\u{0}" })) {
        Err(Error::NotStorable { what, .. }) => {
            assert_eq!(what, "the payload for topic \"parent\"")
        }
        other => panic!("{other:?}"),
    }
    runtime.shutdown().unwrap();
}

fn a_failure_whose_text_postgres_cannot_store_is_recorded_anyway<E: Engine>() {
    let db = TestDb::new("nul_failure");
    let saga = E::saga("victim")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            Err(StepError::msg("bad byte: \u{0} here"))
        })
        .build()
        .unwrap();
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.message(), "bad byte: \u{fffd} here");
    assert_eq!(runtime.stats().infra_errors, 0);
    runtime.shutdown().unwrap();
}

fn a_sleep_the_database_cannot_represent_fails_the_run<E: Engine>() {
    let db = TestDb::new("endless_sleep");
    let saga = E::saga("sleeper")
        .sleep(Duration::from_secs(u64::MAX / 4))
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::DataRejected");
    assert!(failure.message().contains("out of range"), "{failure}");
    runtime.shutdown().unwrap();
}

/// A run whose every attempt kills its own connection (so nothing can be recorded with the
/// failure), while healthy runs of the same handler keep succeeding (which resets the
/// handler's in-memory backoff): the failures are recorded by later attempts, and the run is
/// pushed back further each time instead of being retried every few milliseconds.
fn a_run_killing_its_connection_backs_off_amid_healthy_runs<E: Engine>() {
    let db = TestDb::new("killer_backoff");
    let attempts = Arc::new(AtomicUsize::new(0));
    let saga = {
        let attempts = attempts.clone();
        E::saga("mixed")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, payload: &Value| -> StepResult {
                    if payload["poison"] == json!(true) {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        E::execute(ctx, "SELECT pg_terminate_backend(pg_backend_pid())", &[])?;
                    }
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .workers(2)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(400))
        .subscribe("t", saga)
        .start()
        .unwrap();
    let poison = runtime.launch("t", &json!({ "poison": true })).unwrap();
    let started = std::time::Instant::now();
    let mut healthy = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        healthy.push(runtime.launch("t", &json!({ "poison": false })).unwrap());
        // Paced launches over the observation window: the load is the scenario.
        std::thread::sleep(Duration::from_millis(25));
    }
    let tried = attempts.load(Ordering::SeqCst);
    // Waits of 10-20, 20-40, 40-80, ... up to 200-400 ms: at most a dozen tries in 1.5 s
    // (retried at the handler's reset backoff, it was tried every 25-50 ms: 30 and more).
    assert!((3..=14).contains(&tried), "{tried} attempts in 1.5 s");
    for root in healthy {
        assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    }
    let tree = runtime.tree(poison).unwrap();
    assert_eq!(tree[0].status, RunStatus::Active);
    assert!(tree[0].infra_failures >= 2, "{:?}", tree[0]);
    runtime.cancel(poison, "test", "enough").unwrap();
    runtime.shutdown().unwrap();
}

both!(
    a_run_killing_its_connection_backs_off_amid_healthy_runs,
    a_run_failing_on_infrastructure_errors_backs_off_and_is_listed,
    a_data_exception_in_the_engines_statements_fails_the_run_once,
    a_payload_postgres_cannot_store_is_refused_before_it_is_written,
    a_failure_whose_text_postgres_cannot_store_is_recorded_anyway,
    a_sleep_the_database_cannot_represent_fails_the_run,
);
