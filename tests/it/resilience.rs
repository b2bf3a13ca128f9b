//! Wake-ups without the listener, deep trees, and many children finishing at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{RunId, RunStatus, Runtime, Saga, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, Gate, TestDb, WAIT, eventually, history_of};

fn listener_pids(db: &mut TestDb) -> i64 {
    db.query_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sc-listener:{}'",
        db.schema
    ))
}

fn kill_listeners(db: &mut TestDb) -> i64 {
    db.query_i64(&format!(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'sc-listener:{}'",
        db.schema
    ))
}

#[test]
fn killing_the_listen_connection_mid_run_loses_nothing() {
    let mut db = TestDb::new("listener_killed");
    let gate = Gate::default();
    let root = Saga::builder("root-handler")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("child-topic", &json!({}))?;
            Ok(())
        })
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let child = {
        let gate = gate.clone();
        Saga::builder("child-handler")
            .step(move |_ctx, p: &Value| -> StepResult {
                if p["gated"].as_bool() == Some(true) {
                    gate.pass();
                }
                Ok(())
            })
            .build()
            .unwrap()
    };
    let gated_root = Saga::builder("gated-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("child-topic", &json!({"gated": true}))?;
            Ok(())
        })
        .build()
        .unwrap();
    // Parents and children live in different runtimes, so a child's completion reaches its
    // parent only through the database: a notification, or a sweep. The safety net is far
    // beyond the test's patience, so only the listener (after reconnecting) can do it.
    let parents = db
        .runtime()
        .safety_net_interval(Duration::from_secs(3600))
        .subscribe("root-topic", root)
        .subscribe("gated-topic", gated_root)
        .start()
        .unwrap();
    let children = db
        .runtime()
        .safety_net_interval(Duration::from_secs(3600))
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let held = parents.launch("gated-topic", &json!({})).unwrap();
    gate.wait_for_waiting(1);
    assert_eq!(kill_listeners(&mut db), 2);
    // Work launched while the listeners are down must not be lost either.
    let roots: Vec<_> = (0..10)
        .map(|_| parents.client().launch("root-topic", &json!({})).unwrap())
        .collect();
    gate.open();
    assert!(parents.wait_for(held, WAIT).unwrap().is_committed());
    for root in roots {
        assert!(parents.wait_for(root, WAIT).unwrap().is_committed());
    }
    eventually("both listeners to reconnect", || {
        listener_pids(&mut db) == 2
    });
    assert!(parents.stats().listener_reconnects >= 1);
    assert!(children.stats().listener_reconnects >= 1);
    // And notifications flow again afterwards.
    let after = parents.client().launch("root-topic", &json!({})).unwrap();
    assert!(parents.wait_for(after, WAIT).unwrap().is_committed());
}

#[test]
fn the_rule_is_transitive_across_three_levels() {
    let db = TestDb::new("three_levels");
    let log = ExecLog::default();
    let gate = Gate::default();
    let level = |name: &str, emits: Option<&'static str>, log: &ExecLog, gate: Option<Gate>| {
        let (log1, log2, n1, n2) = (
            log.clone(),
            log.clone(),
            format!("{name}:s1"),
            format!("{name}:s2"),
        );
        Saga::builder(name)
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                log1.push(n1.clone());
                if let Some(topic) = emits {
                    ctx.emit(topic, &json!({}))?;
                }
                if let Some(gate) = &gate {
                    gate.pass();
                }
                Ok(())
            })
            .step(move |_ctx, _: &Value| -> StepResult {
                log2.push(n2.clone());
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("root-topic", level("root", Some("child-topic"), &log, None))
        .subscribe(
            "child-topic",
            level("child", Some("grandchild-topic"), &log, None),
        )
        .subscribe(
            "grandchild-topic",
            level("grandchild", None, &log, Some(gate.clone())),
        )
        .start()
        .unwrap();
    let root = runtime.launch("root-topic", &json!({})).unwrap();
    gate.wait_for_waiting(1);
    assert_eq!(log.entries(), ["root:s1", "child:s1", "grandchild:s1"]);
    gate.open();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    assert_eq!(
        log.entries(),
        [
            "root:s1",
            "child:s1",
            "grandchild:s1",
            "grandchild:s2",
            "child:s2",
            "root:s2"
        ]
    );
    let tree = runtime.client().tree(root).unwrap();
    assert_eq!(
        tree.iter()
            .map(|r| (r.handler.as_str(), r.depth))
            .collect::<Vec<_>>(),
        [("root", 0), ("child", 1), ("grandchild", 2)]
    );
}

#[test]
fn golden_trace_1_the_last_steps_children_finish_before_commit() {
    let db = TestDb::new("golden_1");
    let root = Saga::builder("root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("child-topic", &json!({}))?;
            Ok(())
        })
        .build()
        .unwrap();
    let child = Saga::builder("child")
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-",
            "SEEN@root",
            "EMITTED(0)@root",
            "SUSPENDED(0)@root",
            "SEEN@child",
            "SUSPENDED(0)@child",
            "COMMITTED(0)@child",
            "COMMITTED(0)@root",
        ]
    );
}

fn fan_out(children: usize) -> Saga {
    Saga::builder("parent")
        .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            for i in 0..children {
                ctx.emit("leaf-topic", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap()
}

fn leaf() -> Saga {
    Saga::builder("leaf")
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap()
}

/// Siblings finishing at the same moment all update their parent's row. Lock order (child
/// before parent, never the reverse) means they queue instead of deadlocking: no attempt may
/// end in an infrastructure error.
#[test]
fn many_children_finishing_at_once_never_deadlock() {
    let mut db = TestDb::new("no_deadlock");
    let start = |db: &TestDb| -> Runtime {
        db.runtime()
            .workers(4)
            .subscribe("parent-topic", fan_out(40))
            .subscribe("leaf-topic", leaf())
            .start()
            .unwrap()
    };
    let (a, b) = (start(&db), start(&db));
    let roots: Vec<_> = (0..10)
        .map(|_| a.client().launch("parent-topic", &json!({})).unwrap())
        .collect();
    for root in roots {
        assert!(a.wait_for(root, WAIT).unwrap().is_committed());
    }
    assert_eq!(
        db.query_i64("SELECT count(*) FROM __S__.runs WHERE status = 'committed'"),
        10 + 10 * 40
    );
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.infra_errors + sb.infra_errors, 0, "{sa:?} {sb:?}");
    assert!(
        sa.steps > 0 && sb.steps > 0,
        "both runtimes took part: {sa:?} {sb:?}"
    );
}

/// A child's final transaction commits and the process dies before the short follow-up that
/// tells the parent. The child stays marked `release_pending`, and a sweep finishes the job.
#[test]
fn a_release_lost_in_a_crash_is_finished_by_the_sweep() {
    let mut db = TestDb::new("lost_release");
    let client = db.client();
    client
        .register_external_handler("approvals", "manager")
        .unwrap();
    let root = Saga::builder("order")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("approvals", &json!({}))?;
            Ok(())
        })
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .safety_net_interval(Duration::from_millis(200))
        .subscribe("orders", root)
        .start()
        .unwrap();
    let root_id = runtime.launch("orders", &json!({})).unwrap();
    runtime.wait_idle(WAIT).unwrap();
    // What the child's final step transaction leaves behind, without the release.
    db.exec(&format!(
        "UPDATE {}.runs SET status = 'committed', release_pending = true, \
         finished_at = clock_timestamp() WHERE handler = 'manager'",
        db.schema
    ));
    assert!(runtime.wait_for(root_id, WAIT).unwrap().is_committed());
    assert_eq!(
        db.query_i64("SELECT count(*) FROM __S__.runs WHERE release_pending"),
        0
    );
}

/// 200 trees on three runtimes: each root's second step fails after its five children
/// committed, so the root asks them to roll back and their compensations and releases race
/// each other and their parent on every runtime. No infrastructure error may reach a user
/// (every run ends rolled back with the step's own failure), and every compensation commits
/// exactly once. The internal retries are printed (run with `--nocapture`).
#[test]
fn two_hundred_trees_rolling_back_on_three_runtimes() {
    let mut db = TestDb::new("rollback_storm");
    let effects = format!("{}.effects", db.schema);
    let leaf = |effects: String| {
        Saga::builder("leaf")
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .rollback(move |ctx, _: &Value, _| {
                let run = ctx.run_id().as_uuid();
                ctx.tx().execute(
                    &format!("INSERT INTO {effects} (run_id) VALUES ($1)"),
                    &[&run],
                )?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let parent = || {
        Saga::builder("parent")
            .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                for i in 0..5 {
                    ctx.emit("leaf-topic", &json!({ "i": i }))?;
                }
                Ok(())
            })
            .step(|_, _: &Value| -> StepResult {
                Err(structured_cooperation::StepError::with_kind(
                    "test::Boom",
                    "second step",
                ))
            })
            .build()
            .unwrap()
    };
    drop(db.client());
    db.exec(&format!("CREATE TABLE {effects} (run_id uuid PRIMARY KEY)"));
    let runtimes: Vec<Runtime> = (0..3)
        .map(|_| {
            db.runtime()
                .workers(3)
                .subscribe("parent-topic", parent())
                .subscribe("leaf-topic", leaf(effects.clone()))
                .start()
                .unwrap()
        })
        .collect();
    let client = db.client();
    let mut conn = client.pool().get().unwrap();
    let mut tx = conn.transaction().unwrap();
    let roots: Vec<_> = (0..200)
        .map(|_| {
            client
                .launch_in(&mut tx, "parent-topic", &json!({}))
                .unwrap()
        })
        .collect();
    tx.commit().unwrap();
    for root in &roots {
        let outcome = runtimes[0].wait_for(*root, WAIT).unwrap();
        let run = &outcome.runs()[0];
        assert_eq!(run.status, RunStatus::RolledBack, "{outcome:?}");
        assert_eq!(run.failure.as_ref().unwrap().message(), "second step");
    }
    assert_eq!(
        db.query_i64("SELECT count(*) FROM __S__.runs WHERE status <> 'rolled_back'"),
        0
    );
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {effects}")),
        200 * 5
    );
    let stats: Vec<_> = runtimes.iter().map(Runtime::stats).collect();
    let retries: u64 = stats.iter().map(|s| s.infra_errors).sum();
    println!(
        "rollback storm: {} steps on 3 runtimes, {retries} internal retries",
        stats.iter().map(|s| s.steps).sum::<u64>()
    );
}

/// A step longer than a worker's batch budget (100 ms), with a second worker probing the same
/// handler meanwhile (it finds the run locked): the next step must follow at once, not after
/// the safety-net sweep (an hour here). The sleep is the behaviour under test: a long step.
#[test]
fn a_long_step_is_followed_by_the_next_without_waiting_for_the_sweep() {
    let db = TestDb::new("long_step");
    let saga = Saga::builder("slow")
        .step(|_, _: &Value| -> StepResult {
            std::thread::sleep(Duration::from_millis(250));
            Ok(())
        })
        .step(|_, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .workers(2)
        .safety_net_interval(Duration::from_secs(3600))
        .subscribe("t", saga)
        .start()
        .unwrap();
    runtime.wait_idle(WAIT).unwrap();
    for _ in 0..3 {
        let id = runtime.launch("t", &json!({})).unwrap();
        assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    }
}

/// The lost retry (issue 10): a step's connection is killed in the step, so its worker
/// reports an infrastructure failure while the probe the cascade sent after its claim (which
/// found the run locked) may still be out and report "empty" afterwards. The run must be
/// retried after the backoff, not after the safety-net sweep (an hour here). 100 rounds,
/// each on a fresh run whose first execution kills its own connection; before the fix, a
/// round was lost within the first 40.
fn a_retry_after_a_killed_connection_is_never_lost<E: Engine>() {
    let db = TestDb::new("lost_retry");
    let killed: Arc<Mutex<HashSet<RunId>>> = Arc::default();
    let saga = {
        let killed = killed.clone();
        E::saga("victim")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let first = killed.lock().unwrap().insert(ctx.run_id());
                    if first {
                        // The server ends this backend: the step's transaction and lock go
                        // with it.
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
        .safety_net_interval(Duration::from_secs(3600))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .subscribe("t", saga)
        .start()
        .unwrap();
    runtime.wait_idle(WAIT).unwrap();
    for round in 0..100 {
        let id = runtime.launch("t", &json!({ "round": round })).unwrap();
        let outcome = runtime
            .wait_for(id, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: the retry was lost: {e}"));
        assert!(outcome.is_committed(), "round {round}: {outcome:?}");
    }
    assert_eq!(killed.lock().unwrap().len(), 100);
    // Another worker may retry a killed run before the killed step's task has counted its
    // failure (the lock went with the backend), so the count may trail the last outcome.
    eventually(
        "every killed step counted as an infrastructure error",
        || runtime.stats().infra_errors >= 100,
    );
    runtime.shutdown().unwrap();
}

both!(a_retry_after_a_killed_connection_is_never_lost);
