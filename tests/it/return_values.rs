//! RV-*: return values flow from children to their parent.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use structured_cooperation::{
    ChildValue, ContextKey, CooperationContext, Error, Next, ReturnName, RunStatus, SagaOf,
    StepContext, StepError, StepResult,
};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, TestDb, WAIT};

fn storing<E: Engine>(handler: &str, values: Vec<(&'static str, Value)>) -> SagaOf<E::X> {
    E::saga(handler)
        .step(
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                for (name, value) in &values {
                    E::store_value(ctx, *name, value)?;
                }
                Ok(())
            },
        )
        .build()
        .unwrap()
}

/// A root whose first step emits to `topics` and whose second step logs what it reads.
fn reading_root<E: Engine>(
    log: &ExecLog,
    topics: &'static [&'static str],
    read: fn(&mut StepContext<'_, E::X>, &ExecLog) -> StepResult,
) -> SagaOf<E::X> {
    let log = log.clone();
    E::saga("root-handler")
        .step(
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                for topic in topics {
                    ctx.emit(topic, &json!({}))?;
                }
                Ok(())
            },
        )
        .step(move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { read(ctx, &log) })
        .build()
        .unwrap()
}

/// Starts a runtime with `subscriptions`, launches on `root-topic`, and waits for the tree to
/// commit.
fn run_committed<E: Engine>(db: &TestDb, subscriptions: Vec<(&str, SagaOf<E::X>)>) {
    let mut builder = E::runtime(db);
    for (topic, saga) in subscriptions {
        builder = builder.subscribe(topic, saga);
    }
    let runtime = builder.start().unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    runtime.shutdown().unwrap();
}

fn values_of<E: Engine>(ctx: &mut StepContext<'_, E::X>, name: &str) -> Vec<(String, Value)> {
    E::child_values::<Value>(ctx, name)
        .unwrap()
        .into_iter()
        .map(|v| (v.handler, v.value))
        .collect()
}

fn rv_01_a_child_stores_a_value_its_parent_reads<E: Engine>() {
    let db = TestDb::new("rv_01");
    let log = ExecLog::default();
    let runtime = E::runtime(&db)
        .subscribe(
            "root-topic",
            reading_root::<E>(&log, &["child-topic"], |ctx, log| {
                let values = values_of::<E>(ctx, "TestResult");
                log.push(format!("{values:?}"));
                Ok(())
            }),
        )
        .subscribe(
            "child-topic",
            storing::<E>("ChildHandler", vec![("TestResult", json!({"answer": 42}))]),
        )
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(
        log.entries(),
        [r#"[("ChildHandler", Object {"answer": Number(42)})]"#]
    );
}

fn rv_02_several_child_handlers_each_return_a_value<E: Engine>() {
    let db = TestDb::new("rv_02");
    let log = ExecLog::default();
    let runtime = E::runtime(&db)
        .subscribe(
            "root-topic",
            reading_root::<E>(&log, &["child-topic", "child-topic-2"], |ctx, log| {
                let mut values = values_of::<E>(ctx, "TestResult");
                values.sort_by(|a, b| a.0.cmp(&b.0));
                for (handler, value) in values {
                    log.push(format!("{handler}={value}"));
                }
                Ok(())
            }),
        )
        .subscribe(
            "child-topic",
            storing::<E>(
                "ChildHandler1",
                vec![("TestResult", json!({"result": "from-child-1"}))],
            ),
        )
        .subscribe(
            "child-topic-2",
            storing::<E>(
                "ChildHandler2",
                vec![("TestResult", json!({"result": "from-child-2"}))],
            ),
        )
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(
        log.entries(),
        [
            r#"ChildHandler1={"result":"from-child-1"}"#,
            r#"ChildHandler2={"result":"from-child-2"}"#
        ]
    );
}

fn rv_04_different_names_are_independent<E: Engine>() {
    let db = TestDb::new("rv_04");
    let log = ExecLog::default();
    run_committed::<E>(
        &db,
        vec![
            (
                "root-topic",
                reading_root::<E>(&log, &["child-topic"], |ctx, log| {
                    for name in ["TestResult", "AnotherResult"] {
                        log.push(format!("{name}: {:?}", values_of::<E>(ctx, name)));
                    }
                    Ok(())
                }),
            ),
            (
                "child-topic",
                storing::<E>(
                    "ChildHandler",
                    vec![
                        ("TestResult", json!({"type": "test"})),
                        ("AnotherResult", json!({"type": "another"})),
                    ],
                ),
            ),
        ],
    );
    assert_eq!(
        log.entries(),
        [
            r#"TestResult: [("ChildHandler", Object {"type": String("test")})]"#,
            r#"AnotherResult: [("ChildHandler", Object {"type": String("another")})]"#,
        ]
    );
}

/// Unlike the reference (which collapses values by handler, Q8), a parent gets one value per
/// child run, even when several children share a handler.
fn every_child_run_of_one_handler_returns_its_own_value<E: Engine>() {
    let db = TestDb::new("rv_per_run");
    let log = ExecLog::default();
    let root = {
        let log = log.clone();
        E::saga("root-handler")
            .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                for n in 0..3 {
                    ctx.emit("child-topic", &json!({ "n": n }))?;
                }
                Ok(())
            })
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let mut ns: Vec<i64> = E::child_values::<i64>(ctx, "n")?
                        .into_iter()
                        .map(|v| v.value)
                        .collect();
                    ns.sort();
                    log.push(format!("{ns:?}"));
                    let err = E::child_value::<i64>(ctx, "n", "child-handler").unwrap_err();
                    assert!(matches!(err, Error::AmbiguousReturnValue { count: 3, .. }));
                    log.push(err.to_string());
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let child = E::saga("child-handler")
        .step(
            |ctx: &mut StepContext<'_, E::X>, payload: &Value| -> StepResult {
                E::store_value(ctx, "n", &payload["n"].as_i64().unwrap_or(-1))?;
                Ok(())
            },
        )
        .build()
        .unwrap();
    run_committed::<E>(&db, vec![("root-topic", root), ("child-topic", child)]);
    assert_eq!(
        log.entries(),
        [
            "[0, 1, 2]",
            "3 children of handler \"child-handler\" returned a value named \"n\"; read them all \
             with child_values"
        ]
    );
}

/// A value stays readable after the child that stored it rolled back (marked by its status);
/// a child whose storing step failed stored nothing.
fn values_of_rolled_back_children_are_visible_with_their_status<E: Engine>() {
    let db = TestDb::new("rv_rolled_back");
    let log = ExecLog::default();
    let root = {
        let log = log.clone();
        E::saga("root-handler")
            .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                ctx.emit("stores-then-fails", &json!({}))?;
                ctx.emit("fails-while-storing", &json!({}))?;
                Ok(())
            })
            .on_child_failures(move |ctx, _: &Value, _failures| {
                let values: Vec<ChildValue<String>> = E::child_values(ctx, "receipt")?;
                for v in values {
                    log.push(format!("{}: {} ({:?})", v.handler, v.value, v.status));
                }
                Ok(Next::Continue)
            })
            .build()
            .unwrap()
    };
    let stores_then_fails = E::saga("stores-then-fails")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            E::store_value(ctx, "receipt", "r-1")?;
            Ok(())
        })
        .step(
            |_ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                Err(StepError::msg("second step fails"))
            },
        )
        .build()
        .unwrap();
    let fails_while_storing = E::saga("fails-while-storing")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            E::store_value(ctx, "receipt", "r-2")?;
            Err(StepError::msg("the storing step fails"))
        })
        .build()
        .unwrap();
    run_committed::<E>(
        &db,
        vec![
            ("root-topic", root),
            ("stores-then-fails", stores_then_fails),
            ("fails-while-storing", fails_while_storing),
        ],
    );
    assert_eq!(log.entries(), ["stores-then-fails: r-1 (RolledBack)"]);
}

/// Storing a name twice is a clear error that leaves the step able to go on.
fn storing_a_name_twice_is_a_clear_error<E: Engine>() {
    let db = TestDb::new("rv_twice");
    let log = ExecLog::default();
    let root = reading_root::<E>(&log, &["child-topic"], |ctx, log| {
        let value = E::child_value::<String>(ctx, "answer", "child-handler")?;
        log.push(format!("{value:?}"));
        Ok(())
    });
    let child = {
        let log = log.clone();
        E::saga("child-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    E::store_value(ctx, "answer", "first")?;
                    let err = E::store_value(ctx, "answer", "second").unwrap_err();
                    assert!(matches!(err, Error::ReturnValueExists { .. }));
                    log.push(err.to_string().replace(&ctx.run_id().to_string(), "<run>"));
                    // The transaction is still usable.
                    E::execute(ctx, "SELECT 1", &[])?;
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    run_committed::<E>(&db, vec![("root-topic", root), ("child-topic", child)]);
    assert_eq!(
        log.entries(),
        [
            "run <run> of handler \"child-handler\" already returned a value named \"answer\"",
            "Some(\"first\")"
        ]
    );
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Price {
    cents: u64,
}

const PRICE: ReturnName<Price> = ReturnName::new("price");

/// A value of the wrong type is an error naming the value, the handler and the run; the
/// parent can still read it as JSON.
fn a_value_of_the_wrong_type_is_a_clear_error<E: Engine>() {
    let db = TestDb::new("rv_wrong_type");
    let log = ExecLog::default();
    let root = reading_root::<E>(&log, &["child-topic"], |ctx, log| {
        let err = E::child_values(ctx, PRICE).unwrap_err();
        assert!(matches!(err, Error::ReturnValue { .. }));
        let message = err.to_string();
        log.push(message[..message.find("(run").unwrap_or(0)].to_owned());
        let raw = E::child_value::<Value>(ctx, "price", "child-handler")?;
        log.push(format!("{raw:?}"));
        Ok(())
    });
    run_committed::<E>(
        &db,
        vec![
            ("root-topic", root),
            (
                "child-topic",
                storing::<E>("child-handler", vec![("price", json!("twelve"))]),
            ),
        ],
    );
    assert_eq!(
        log.entries(),
        [
            "the value \"price\" returned by handler \"child-handler\" ",
            "Some(String(\"twelve\"))"
        ]
    );
}

struct Tenant;
impl ContextKey for Tenant {
    const NAME: &'static str = "Tenant";
    type Value = String;
}

/// Three levels: context set by the root reaches the grandchild, and the grandchild's return
/// value reaches its parent (which passes its own up to the root).
fn context_flows_down_three_levels_and_values_flow_up<E: Engine>() {
    let db = TestDb::new("rv_three_levels");
    let log = ExecLog::default();
    let root = {
        let log = log.clone();
        E::saga("root-handler")
            .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                ctx.context_mut().set::<Tenant>(&"acme".to_owned())?;
                ctx.emit("child-topic", &json!({}))?;
                Ok(())
            })
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let total = E::child_value(ctx, PRICE, "child-handler")?;
                    log.push(format!("root got {total:?}"));
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let child = {
        let log = log.clone();
        E::saga("child-handler")
            .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                ctx.emit("grandchild-topic", &json!({}))?;
                Ok(())
            })
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let price = E::child_value(ctx, PRICE, "grandchild-handler")?;
                    log.push(format!("child got {price:?}"));
                    let cents = price.map_or(0, |p| p.cents) + 100;
                    E::store_value(ctx, PRICE, &Price { cents })?;
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let grandchild = {
        let log = log.clone();
        E::saga("grandchild-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    let tenant = ctx.context().get::<Tenant>()?;
                    log.push(format!("grandchild sees tenant {tenant:?}"));
                    E::store_value(ctx, PRICE, &Price { cents: 1200 })?;
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .subscribe("grandchild-topic", grandchild)
        .start()
        .unwrap();
    let id = runtime
        .launch_with("root-topic", &json!({}), CooperationContext::new())
        .unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(
        log.entries(),
        [
            "grandchild sees tenant Some(\"acme\")",
            "child got Some(Price { cents: 1200 })",
            "root got Some(Price { cents: 1300 })",
        ]
    );
    assert_eq!(
        runtime.outcome(id).unwrap().runs()[0].status,
        RunStatus::Committed
    );
}

both!(
    rv_01_a_child_stores_a_value_its_parent_reads,
    rv_02_several_child_handlers_each_return_a_value,
    rv_04_different_names_are_independent,
    every_child_run_of_one_handler_returns_its_own_value,
    values_of_rolled_back_children_are_visible_with_their_status,
    storing_a_name_twice_is_a_clear_error,
    a_value_of_the_wrong_type_is_a_clear_error,
    context_flows_down_three_levels_and_values_flow_up,
);
