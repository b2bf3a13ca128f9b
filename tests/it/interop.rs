//! The tokio runtime on its own and beside the blocking one on one schema: async steps with
//! their transaction, parents and children on different runtimes, a rollback and a
//! cancellation crossing both, exactly once under competition, dropping a runtime mid-step,
//! and the step timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::tokio as sct;
use structured_cooperation::{Failure, Next, RunStatus, Saga, StepContext, StepError, StepResult};
use tokio::sync::Notify;

use crate::util::{ExecLog, TestDb, WAIT, eventually, trace};

/// A multi-thread tokio runtime for one test (the blocking runtime must not be started on
/// its threads).
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn tokio_builder(db: &TestDb) -> sct::RuntimeBuilder {
    sct::Runtime::builder(&db.url)
        .schema(&db.schema)
        .connect_timeout(Duration::from_secs(5))
}

/// An async step that writes through the step's transaction, emits, and stores a value.
#[test]
fn async_steps_use_their_transaction_and_children_finish_first() {
    let mut db = TestDb::new("tokio_async_steps");
    let rt = tokio_runtime();
    let log = ExecLog::default();
    let table = format!("{}.effects", db.schema);
    let parent = {
        let (log, log2, table) = (log.clone(), log.clone(), table.clone());
        sct::Saga::builder("parent")
            .step(move |ctx, order: &Value| {
                let (log, table) = (log.clone(), table.clone());
                Box::pin(async move {
                    log.push("parent:0");
                    let insert = ctx
                        .prepare_cached(&format!("INSERT INTO {table} (what) VALUES ($1)"))
                        .await?;
                    ctx.tx().await.execute(&insert, &[&"parent"]).await?;
                    ctx.emit("child-topic", &json!({ "order": order["id"] }))?;
                    StepResult::Ok(())
                })
            })
            .step(move |ctx, _: &Value| {
                let log = log2.clone();
                Box::pin(async move {
                    let price: Option<i64> = ctx.child_value("price", "child").await?;
                    log.push(format!("parent:1 price={price:?}"));
                    StepResult::Ok(())
                })
            })
            .build()
            .unwrap()
    };
    let child = {
        let log = log.clone();
        sct::Saga::builder("child")
            .step(move |ctx, payload: &Value| {
                let log = log.clone();
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    log.push("child:0");
                    ctx.store_value("price", &(payload["order"].as_i64().unwrap_or(0) * 10))
                        .await?;
                    StepResult::Ok(())
                })
            })
            .build()
            .unwrap()
    };
    db.exec(&format!("CREATE SCHEMA IF NOT EXISTS {}", db.schema));
    db.exec(&format!("CREATE TABLE {table} (what text NOT NULL)"));
    let history = rt.block_on(async {
        let runtime = tokio_builder(&db)
            .subscribe("parent-topic", parent)
            .subscribe("child-topic", child)
            .start()
            .await
            .unwrap();
        let root = runtime
            .launch("parent-topic", &json!({ "id": 7 }))
            .await
            .unwrap();
        let outcome = runtime.wait_for(root, WAIT).await.unwrap();
        assert!(outcome.is_committed(), "{outcome:?}");
        let history = runtime.history(root).await.unwrap();
        runtime.shutdown().await.unwrap();
        history
    });
    assert_eq!(
        log.entries(),
        ["parent:0", "child:0", "parent:1 price=Some(70)"]
    );
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {table}")), 1);
    assert_eq!(
        trace(&history),
        [
            "EMITTED@-",
            "SEEN@parent",
            "EMITTED(0)@parent",
            "SUSPENDED(0)@parent",
            "SEEN@child",
            "SUSPENDED(0)@child",
            "COMMITTED(0)@child",
            "SUSPENDED(1)@parent",
            "COMMITTED(1)@parent",
        ]
    );
}

/// A panic inside an async step, after it awaited its transaction, is recorded like a
/// blocking one: the step's writes are undone, the failure names the panic, and the one
/// worker task goes on to the next run.
#[test]
fn a_panic_after_an_await_is_recorded_and_the_worker_survives() {
    let mut db = TestDb::new("tokio_async_panic");
    let rt = tokio_runtime();
    let table = format!("{}.effects", db.schema);
    let saga = {
        let table = table.clone();
        sct::Saga::builder("pay")
            .step(move |ctx, payload: &Value| {
                let table = table.clone();
                Box::pin(async move {
                    let n = payload["n"].as_i64().unwrap_or(-1);
                    ctx.tx()
                        .await
                        .execute(
                            &format!("INSERT INTO {table} (what) VALUES ($1)"),
                            &[&format!("{n}")],
                        )
                        .await?;
                    tokio::task::yield_now().await;
                    if n == 1 {
                        panic!("boom after an await at {n}");
                    }
                    StepResult::Ok(())
                })
            })
            .build()
            .unwrap()
    };
    db.exec(&format!("CREATE SCHEMA IF NOT EXISTS {}", db.schema));
    db.exec(&format!("CREATE TABLE {table} (what text NOT NULL)"));
    let outcomes = rt.block_on(async {
        let runtime = tokio_builder(&db)
            .workers(1)
            .subscribe("pay", saga)
            .start()
            .await
            .unwrap();
        let mut outcomes = Vec::new();
        for n in 0..3 {
            let root = runtime.launch("pay", &json!({ "n": n })).await.unwrap();
            outcomes.push(runtime.wait_for(root, WAIT).await.unwrap());
        }
        // Counted when the attempt that did it is over, which may be just after the
        // tree is seen finished.
        eventually("the step_failures to be counted", || {
            runtime.stats().step_failures >= 1
        });
        assert_eq!(runtime.stats().step_failures, 1);
        runtime.shutdown().await.unwrap();
        outcomes
    });
    assert!(outcomes[0].is_committed() && outcomes[2].is_committed());
    let failure = outcomes[1].runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "panic");
    assert_eq!(failure.message(), "boom after an await at 1");
    assert_eq!(failure.step(), Some("0"));
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {table}")), 2);
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {table} WHERE what = '1'")),
        0,
        "the panicking step's insert is undone"
    );
}

fn blocking_parent(log: &ExecLog) -> Saga {
    let (log, log2) = (log.clone(), log.clone());
    Saga::builder("b-parent")
        .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            log.push("b-parent:0");
            ctx.emit("t-child-topic", &json!({}))?;
            ctx.emit("t-child-topic", &json!({}))?;
            Ok(())
        })
        .rollback(|_ctx, _: &Value, _cause| Ok(()))
        .step(move |_ctx, payload: &Value| -> StepResult {
            log2.push("b-parent:1");
            if payload["fail"].as_bool() == Some(true) {
                return Err(StepError::msg(
                    "the parent fails after its children committed",
                ));
            }
            Ok(())
        })
        .build()
        .unwrap()
}

fn tokio_child(log: &ExecLog, compensations: &Arc<AtomicUsize>) -> sct::Saga {
    let (log, compensations) = (log.clone(), compensations.clone());
    sct::Saga::builder("t-child")
        .step(move |_ctx, _: &Value| {
            let log = log.clone();
            Box::pin(async move {
                tokio::task::yield_now().await;
                log.push("t-child:0");
                StepResult::Ok(())
            })
        })
        .rollback(move |_ctx, _: &Value, cause: &Failure| {
            let compensations = compensations.clone();
            let kind = cause.kind().to_owned();
            Box::pin(async move {
                assert_eq!(kind, "structured_cooperation::ParentSaidSo");
                compensations.fetch_add(1, Ordering::SeqCst);
                StepResult::Ok(())
            })
        })
        .build()
        .unwrap()
}

#[test]
fn a_blocking_parent_waits_for_tokio_children_and_rolls_them_back() {
    let db = TestDb::new("interop_b_parent");
    let rt = tokio_runtime();
    let log = ExecLog::default();
    let compensations = Arc::new(AtomicUsize::new(0));
    let tokio_side = rt.block_on(async {
        tokio_builder(&db)
            .subscribe("t-child-topic", tokio_child(&log, &compensations))
            .start()
            .await
            .unwrap()
    });
    let blocking = db
        .runtime()
        .subscribe("b-parent-topic", blocking_parent(&log))
        .start()
        .unwrap();
    let ok = blocking.launch("b-parent-topic", &json!({})).unwrap();
    assert!(blocking.wait_for(ok, WAIT).unwrap().is_committed());
    let entries = log.entries();
    assert_eq!(entries.first().map(String::as_str), Some("b-parent:0"));
    assert_eq!(entries.last().map(String::as_str), Some("b-parent:1"));
    assert_eq!(entries.iter().filter(|e| *e == "t-child:0").count(), 2);

    // The parent fails after its tokio children committed: they compensate.
    let failing = blocking
        .launch("b-parent-topic", &json!({ "fail": true }))
        .unwrap();
    let outcome = blocking.wait_for(failing, WAIT).unwrap();
    assert_eq!(
        outcome.runs()[0].status,
        RunStatus::RolledBack,
        "{outcome:?}"
    );
    assert_eq!(compensations.load(Ordering::SeqCst), 2);
    let history = trace(&blocking.history(failing).unwrap());
    assert_eq!(
        history
            .iter()
            .filter(|e| e.starts_with("ROLLED_BACK") && e.ends_with("@t-child"))
            .count(),
        2,
        "{history:#?}"
    );
    blocking.shutdown().unwrap();
    rt.block_on(tokio_side.shutdown()).unwrap();
}

#[test]
fn a_tokio_parent_waits_for_blocking_children() {
    let db = TestDb::new("interop_t_parent");
    let rt = tokio_runtime();
    let log = ExecLog::default();
    let parent = {
        let (log, log2) = (log.clone(), log.clone());
        sct::Saga::builder("t-parent")
            .step(move |ctx, _: &Value| {
                let log = log.clone();
                Box::pin(async move {
                    log.push("t-parent:0");
                    ctx.emit("b-child-topic", &json!({}))?;
                    StepResult::Ok(())
                })
            })
            .step(move |_ctx, _: &Value| {
                let log = log2.clone();
                Box::pin(async move {
                    log.push("t-parent:1");
                    StepResult::Ok(())
                })
            })
            .build()
            .unwrap()
    };
    let child = {
        let (log, log2) = (log.clone(), log.clone());
        Saga::builder("b-child")
            .step(move |_ctx, _: &Value| -> StepResult {
                log.push("b-child:0");
                Ok(())
            })
            .step(move |_ctx, _: &Value| -> StepResult {
                log2.push("b-child:1");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let blocking = db
        .runtime()
        .subscribe("b-child-topic", child)
        .start()
        .unwrap();
    rt.block_on(async {
        let runtime = tokio_builder(&db)
            .subscribe("t-parent-topic", parent)
            .start()
            .await
            .unwrap();
        let root = runtime.launch("t-parent-topic", &json!({})).await.unwrap();
        assert!(runtime.wait_for(root, WAIT).await.unwrap().is_committed());
        runtime.shutdown().await.unwrap();
    });
    blocking.shutdown().unwrap();
    assert_eq!(
        log.entries(),
        ["t-parent:0", "b-child:0", "b-child:1", "t-parent:1"]
    );
}

#[test]
fn a_cancellation_crosses_both_runtimes() {
    let db = TestDb::new("interop_cancel");
    let rt = tokio_runtime();
    // A blocking root emits to a tokio child, which sleeps for an hour.
    let root = Saga::builder("b-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("t-sleeper-topic", &json!({}))?;
            Ok(())
        })
        .build()
        .unwrap();
    let sleeper = sct::Saga::builder::<Value>("t-sleeper")
        .sleep(Duration::from_secs(3600))
        .step(|_ctx, _: &Value| Box::pin(async move { StepResult::Ok(()) }))
        .build()
        .unwrap();
    let tokio_side = rt.block_on(async {
        tokio_builder(&db)
            .subscribe("t-sleeper-topic", sleeper)
            .start()
            .await
            .unwrap()
    });
    let blocking = db
        .runtime()
        .subscribe("b-root-topic", root)
        .start()
        .unwrap();
    let root_id = blocking.launch("b-root-topic", &json!({})).unwrap();
    eventually("the tokio child to sleep", || {
        trace(&blocking.history(root_id).unwrap()).contains(&"SUSPENDED(0)@t-sleeper".to_owned())
    });
    let requested = rt
        .block_on(tokio_side.cancel(root_id, "test", "no longer needed"))
        .unwrap();
    assert!(requested.is_recorded(), "{requested:?}");
    let outcome = blocking.wait_for(root_id, WAIT).unwrap();
    assert_eq!(
        outcome.runs()[0].status,
        RunStatus::RolledBack,
        "{outcome:?}"
    );
    let tree = blocking.client().tree(root_id).unwrap();
    assert!(
        tree.iter().all(|r| r.status == RunStatus::RolledBack),
        "{tree:?}"
    );
    blocking.shutdown().unwrap();
    rt.block_on(tokio_side.shutdown()).unwrap();
}

#[test]
fn a_blocking_and_a_tokio_runtime_serving_one_handler_run_each_step_once() {
    let mut db = TestDb::new("interop_compete");
    let rt = tokio_runtime();
    db.exec(&format!("CREATE SCHEMA IF NOT EXISTS {}", db.schema));
    let table = format!("{}.done", db.schema);
    db.exec(&format!("CREATE TABLE {table} (run_id uuid PRIMARY KEY)"));
    let blocking_saga = {
        let table = table.clone();
        Saga::builder("job")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                let run = ctx.run_id().as_uuid();
                ctx.tx().execute(
                    &format!("INSERT INTO {table} (run_id) VALUES ($1)"),
                    &[&run],
                )?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let tokio_saga = {
        let table = table.clone();
        sct::Saga::builder("job")
            .step(move |ctx, _: &Value| {
                let table = table.clone();
                Box::pin(async move {
                    let run = ctx.run_id().as_uuid();
                    let sql = format!("INSERT INTO {table} (run_id) VALUES ($1)");
                    ctx.tx().await.execute(&sql, &[&run]).await?;
                    StepResult::Ok(())
                })
            })
            .build()
            .unwrap()
    };
    let client = db.client();
    client.register_handler("jobs", "job").unwrap();
    let roots: Vec<_> = (0..300)
        .map(|i| client.launch("jobs", &json!({ "i": i })).unwrap())
        .collect();
    let tokio_side = rt.block_on(async {
        tokio_builder(&db)
            .workers(4)
            .subscribe("jobs", tokio_saga)
            .start()
            .await
            .unwrap()
    });
    let blocking = db
        .runtime()
        .workers(4)
        .subscribe("jobs", blocking_saga)
        .start()
        .unwrap();
    for root in &roots {
        assert!(blocking.wait_for(*root, WAIT).unwrap().is_committed());
    }
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {table}")), 300);
    let (b, t) = (blocking.stats().steps, tokio_side.stats().steps);
    assert_eq!(b + t, 300, "blocking {b}, tokio {t}");
    assert!(
        b > 0 && t > 0,
        "both runtimes ran steps: blocking {b}, tokio {t}"
    );
    blocking.shutdown().unwrap();
    rt.block_on(tokio_side.shutdown()).unwrap();
}

#[test]
fn dropping_a_tokio_runtime_mid_step_leaves_the_run_to_another() {
    let mut db = TestDb::new("interop_drop");
    let rt = tokio_runtime();
    db.exec(&format!("CREATE SCHEMA IF NOT EXISTS {}", db.schema));
    let table = format!("{}.done", db.schema);
    db.exec(&format!("CREATE TABLE {table} (run_id uuid PRIMARY KEY)"));
    let entered = Arc::new(Notify::new());
    let never = Arc::new(Notify::new());
    let stuck = {
        let (table, entered, never) = (table.clone(), entered.clone(), never.clone());
        sct::Saga::builder("job")
            .step(move |ctx, _: &Value| {
                let (table, entered, never) = (table.clone(), entered.clone(), never.clone());
                Box::pin(async move {
                    let run = ctx.run_id().as_uuid();
                    let sql = format!("INSERT INTO {table} (run_id) VALUES ($1)");
                    ctx.tx().await.execute(&sql, &[&run]).await?;
                    entered.notify_one();
                    // Never finishes: the runtime is stopped with this step in flight.
                    never.notified().await;
                    StepResult::Ok(())
                })
            })
            .build()
            .unwrap()
    };
    let root = rt.block_on(async {
        let runtime = tokio_builder(&db)
            .subscribe("jobs", stuck)
            .start()
            .await
            .unwrap();
        let root = runtime.launch("jobs", &json!({})).await.unwrap();
        entered.notified().await;
        let stopped = runtime.shutdown_timeout(Duration::from_millis(100)).await;
        assert!(stopped.is_err(), "the step was abandoned: {stopped:?}");
        root
    });
    // The abandoned step's transaction rolled back: its insert is gone and the run is free.
    let done = {
        let table = table.clone();
        Saga::builder("job")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                let run = ctx.run_id().as_uuid();
                ctx.tx().execute(
                    &format!("INSERT INTO {table} (run_id) VALUES ($1)"),
                    &[&run],
                )?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let blocking = db.runtime().subscribe("jobs", done).start().unwrap();
    assert!(blocking.wait_for(root, WAIT).unwrap().is_committed());
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {table}")), 1);
    blocking.shutdown().unwrap();
}

#[test]
fn a_step_timeout_cancels_the_query_and_the_run_is_retried() {
    let mut db = TestDb::new("tokio_step_timeout");
    let rt = tokio_runtime();
    let attempts = Arc::new(AtomicUsize::new(0));
    let saga = {
        let attempts = attempts.clone();
        sct::Saga::builder("slow")
            .step(move |ctx, _: &Value| {
                let attempts = attempts.clone();
                Box::pin(async move {
                    if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                        // Far longer than the timeout: the server must cancel it.
                        ctx.tx().await.execute("SELECT pg_sleep(60)", &[]).await?;
                    }
                    StepResult::Ok(Next::Continue)
                })
            })
            .build()
            .unwrap()
    };
    let stats = rt.block_on(async {
        let runtime = tokio_builder(&db)
            .step_timeout(Duration::from_millis(300))
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .subscribe("slow-topic", saga)
            .start()
            .await
            .unwrap();
        let root = runtime.launch("slow-topic", &json!({})).await.unwrap();
        assert!(runtime.wait_for(root, WAIT).await.unwrap().is_committed());
        let stats = runtime.stats();
        runtime.shutdown().await.unwrap();
        stats
    });
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert!(stats.infra_errors >= 1, "{stats:?}");
    // Cancelled on the server, not left sleeping for a minute (the cancel and the
    // connection's close are asynchronous, hence the wait).
    eventually("the timed-out query to stop", || {
        db.query_i64(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(60)%'",
        ) == 0
    });
}
