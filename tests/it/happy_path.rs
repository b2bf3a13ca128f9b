//! HP-*: the rule at work on the happy path.

use serde_json::{Value, json};
use structured_cooperation::{Next, SagaOf, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, Gate, TestDb, WAIT, history_of, project, wait_for_event};

fn root_launch() -> Value {
    json!({"initial": "true"})
}

fn hp_01_parent_waits_for_child<E: Engine>() {
    let db = TestDb::new("hp_01");
    let log = ExecLog::default();
    let gate = Gate::default();
    let root = {
        let log = log.clone();
        let log2 = log.clone();
        E::saga("root-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    log.push("root:s1");
                    ctx.emit("child-topic", &json!({"from": "root"}))?;
                    Ok(())
                },
            )
            .step(move |_ctx, _: &Value| -> StepResult {
                log2.push("root:s2");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = {
        let (log, log2, gate) = (log.clone(), log.clone(), gate.clone());
        E::saga("child-handler")
            .step(move |_ctx, _: &Value| -> StepResult {
                log.push("child:s1");
                gate.pass();
                Ok(())
            })
            .step(move |_ctx, _: &Value| -> StepResult {
                log2.push("child:s2");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let root_id = runtime.launch("root-topic", &root_launch()).unwrap();
    gate.wait_for_waiting(1);
    // While the child is held, the parent has not moved on.
    assert!(!history_of(&runtime, root_id).contains(&"SUSPENDED(1)@root-handler".to_owned()));
    assert_eq!(log.entries(), ["root:s1", "child:s1"]);
    gate.open();
    let outcome = runtime.wait_for(root_id, WAIT).unwrap();
    assert!(outcome.is_committed(), "{outcome:?}");
    assert_eq!(
        log.entries(),
        ["root:s1", "child:s1", "child:s2", "root:s2"]
    );
    assert_eq!(
        history_of(&runtime, root_id),
        [
            "EMITTED@-",
            "SEEN@root-handler",
            "EMITTED(0)@root-handler",
            "SUSPENDED(0)@root-handler",
            "SEEN@child-handler",
            "SUSPENDED(0)@child-handler",
            "SUSPENDED(1)@child-handler",
            "COMMITTED(1)@child-handler",
            "SUSPENDED(1)@root-handler",
            "COMMITTED(1)@root-handler",
        ]
    );
    let _ = project;
    runtime.shutdown().unwrap();
}

/// A two-step child that logs `<label>:s1`/`<label>:s2` and waits at `gate` in step `gated`.
fn gated_child<E: Engine>(
    name: &str,
    label: &str,
    log: &ExecLog,
    gate: &Gate,
    gated: usize,
) -> SagaOf<E::X> {
    let mut builder = E::saga::<Value>(name);
    for i in 0..2 {
        let (log, gate, entry) = (log.clone(), gate.clone(), format!("{label}:s{}", i + 1));
        builder = builder.step(move |_ctx, _: &Value| -> StepResult {
            log.push(entry.clone());
            if i == gated {
                gate.pass();
            }
            Ok(())
        });
    }
    builder.build().unwrap()
}

/// A two-step root whose first step emits one message to each of `topics`.
fn emitting_root<E: Engine>(log: &ExecLog, topics: &'static [&'static str]) -> SagaOf<E::X> {
    let (log1, log2) = (log.clone(), log.clone());
    E::saga("root-handler")
        .step(
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                log1.push("root:s1");
                for topic in topics {
                    ctx.emit(topic, &json!({}))?;
                }
                Ok(())
            },
        )
        .step(move |_ctx, _: &Value| -> StepResult {
            log2.push("root:s2");
            Ok(())
        })
        .build()
        .unwrap()
}

fn expected_projection(child: &str, emissions: usize) -> Vec<String> {
    let mut v = vec!["EMITTED@-".to_owned(), "SEEN@root-handler".to_owned()];
    v.extend(std::iter::repeat_n(
        "EMITTED(0)@root-handler".to_owned(),
        emissions,
    ));
    v.extend([
        "SUSPENDED(0)@root-handler".to_owned(),
        format!("SEEN@{child}"),
        format!("SUSPENDED(0)@{child}"),
        format!("SUSPENDED(1)@{child}"),
        format!("COMMITTED(1)@{child}"),
        "SUSPENDED(1)@root-handler".to_owned(),
        "COMMITTED(1)@root-handler".to_owned(),
    ]);
    v
}

/// Two two-step children of one root: `c1` on `topics.0` held in step `gated.0`, `c2` on
/// `topics.1` held in step `gated.1`. The first child to be released finishes while the parent
/// still waits for the other; the parent's second step comes only after both.
fn two_children<E: Engine>(
    name: &str,
    topics: (&'static str, &'static str),
    gated: (usize, usize),
) {
    let db = TestDb::new(name);
    let log = ExecLog::default();
    let (gate1, gate2) = (Gate::default(), Gate::default());
    let root_topics: &'static [&'static str] = if topics.0 == topics.1 {
        &["child-topic"]
    } else {
        &["child-topic", "child-topic-2"]
    };
    let runtime = E::runtime(&db)
        .subscribe("root-topic", emitting_root::<E>(&log, root_topics))
        .subscribe(
            topics.0,
            gated_child::<E>("child-handler-1", "c1", &log, &gate1, gated.0),
        )
        .subscribe(
            topics.1,
            gated_child::<E>("child-handler-2", "c2", &log, &gate2, gated.1),
        )
        .start()
        .unwrap();
    let root = runtime.launch("root-topic", &root_launch()).unwrap();
    gate1.wait_for_waiting(1);
    gate2.wait_for_waiting(1);
    // Release the second child first; the parent must go on waiting for the first.
    gate2.open();
    wait_for_event(&runtime, root, "COMMITTED(1)@child-handler-2");
    assert!(!log.entries().contains(&"root:s2".to_owned()));
    gate1.open();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    assert_eq!(log.entries().len(), 6);
    assert_eq!(
        log.only(&["root", "c1"]),
        ["root:s1", "c1:s1", "c1:s2", "root:s2"]
    );
    assert_eq!(
        log.only(&["root", "c2"]),
        ["root:s1", "c2:s1", "c2:s2", "root:s2"]
    );
    let history = runtime.history(root).unwrap();
    for child in ["child-handler-1", "child-handler-2"] {
        assert_eq!(
            project(&history, &["root-handler", child]),
            expected_projection(child, root_topics.len())
        );
    }
}

fn hp_03_all_handlers_at_the_same_level_finish_before_the_parent<E: Engine>() {
    two_children::<E>("hp_03", ("child-topic", "child-topic-2"), (0, 1));
}

fn hp_04_parent_waits_for_every_handler_of_one_topic<E: Engine>() {
    // One message, two runs: a single EMITTED and one SEEN per handler.
    two_children::<E>("hp_04", ("child-topic", "child-topic"), (0, 0));
}

fn noop_saga<E: Engine>(name: &str) -> SagaOf<E::X> {
    E::saga(name)
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap()
}

fn hp_05_a_successful_run_writes_one_committed_event<E: Engine>() {
    let mut db = TestDb::new("hp_05");
    let runtime = E::runtime(&db)
        .subscribe("test-events-topic", noop_saga::<E>("commit-test-handler"))
        .start()
        .unwrap();
    let root = runtime.launch("test-events-topic", &json!({})).unwrap();
    runtime.wait_for(root, WAIT).unwrap();
    runtime.wait_idle(WAIT).unwrap();
    let committed = db.query_i64(&format!(
        "SELECT count(*) FROM __S__.history WHERE event = 'COMMITTED' \
         AND handler = 'commit-test-handler' AND message_id = '{root}'"
    ));
    assert_eq!(committed, 1);
}

fn hp_06_complete_event_sequence_of_a_successful_run<E: Engine>() {
    let mut db = TestDb::new("hp_06");
    let runtime = E::runtime(&db)
        .subscribe("test-events-topic", noop_saga::<E>("sequence-test-handler"))
        .start()
        .unwrap();
    let root = runtime.launch("test-events-topic", &json!({})).unwrap();
    runtime.wait_for(root, WAIT).unwrap();
    runtime.wait_idle(WAIT).unwrap();
    let count = |db: &mut TestDb, event: &str| {
        db.query_i64(&format!(
            "SELECT count(*) FROM __S__.history WHERE event = '{event}' AND message_id = '{root}'"
        ))
    };
    assert_eq!(count(&mut db, "EMITTED"), 1);
    assert_eq!(count(&mut db, "SEEN"), 1);
    assert_eq!(count(&mut db, "COMMITTED"), 1);
    assert_eq!(count(&mut db, "ROLLED_BACK"), 0);
    let kinds: Vec<String> = runtime
        .history(root)
        .unwrap()
        .iter()
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(kinds, ["EMITTED", "SEEN", "SUSPENDED", "COMMITTED"]);
}

fn hp_07_a_registered_handler_that_never_starts_blocks_its_parent<E: Engine>() {
    let mut db = TestDb::new("hp_07");
    let log = ExecLog::default();
    let root = {
        let log = log.clone();
        E::saga("root-handler")
            .step_named(
                "loop-step",
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult<Next> {
                    log.push(format!("loop-iter-{}", ctx.iteration()));
                    if ctx.iteration() == 0 {
                        ctx.emit("child-topic", &json!({}))?;
                        ctx.emit("stub-topic", &json!({}))?;
                    }
                    Ok(Next::Repeat)
                },
            )
            .build()
            .unwrap()
    };
    let child = {
        let log = log.clone();
        E::saga("child-handler")
            .step(move |_ctx, _: &Value| -> StepResult {
                log.push("child-handler-done");
                Ok(())
            })
            .build()
            .unwrap()
    };
    // The stub is part of the durable topology but no runtime serves it.
    db.client()
        .register_external_handler("stub-topic", "stub-handler")
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let root_id = runtime.launch("root-topic", &root_launch()).unwrap();
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(log.entries(), ["loop-iter-0", "child-handler-done"]);
    let waiting = db.query_i64(&format!(
        "SELECT pending_children::int8 FROM __S__.runs WHERE message_id = '{root_id}'"
    ));
    assert_eq!(waiting, 1, "the root still waits for the stub handler");
    let err = runtime
        .wait_for(root_id, std::time::Duration::ZERO)
        .unwrap_err();
    assert!(err.to_string().contains("root-handler is active"), "{err}");
    runtime.shutdown().unwrap();
}

fn an_external_handler_completed_through_the_api_releases_its_parent<E: Engine>() {
    let db = TestDb::new("external_completion");
    let log = ExecLog::default();
    let approval_id = std::sync::Arc::new(std::sync::Mutex::new(None));
    let root = {
        let (log, log2, approval_id) = (log.clone(), log.clone(), approval_id.clone());
        E::saga("order")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    log.push("ask");
                    *approval_id.lock().unwrap() =
                        Some(ctx.emit("approvals", &json!({"amount": 10}))?);
                    Ok(())
                },
            )
            .step(move |_ctx, _: &Value| -> StepResult {
                log2.push("approved");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let client = db.client();
    client
        .register_external_handler("approvals", "manager")
        .unwrap();
    let runtime = E::runtime(&db).subscribe("orders", root).start().unwrap();
    let root_id = runtime.launch("orders", &json!({})).unwrap();
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(log.entries(), ["ask"]);
    let message = approval_id.lock().unwrap().unwrap();
    let err = client
        .complete_external(message, "nobody", Ok(()))
        .unwrap_err();
    assert!(err.to_string().contains("there is no such run"), "{err}");
    client
        .complete_external(message, "manager", Ok(()))
        .unwrap();
    assert!(runtime.wait_for(root_id, WAIT).unwrap().is_committed());
    assert_eq!(log.entries(), ["ask", "approved"]);
    let err = client
        .complete_external(message, "manager", Ok(()))
        .unwrap_err();
    assert!(err.to_string().contains("already finished"), "{err}");
    let history = runtime.history(root_id).unwrap();
    assert_eq!(
        project(&history, &["manager"]),
        ["EMITTED@-", "SEEN@manager", "COMMITTED(external)@manager"]
    );
}

both!(
    hp_01_parent_waits_for_child,
    hp_03_all_handlers_at_the_same_level_finish_before_the_parent,
    hp_04_parent_waits_for_every_handler_of_one_topic,
    hp_05_a_successful_run_writes_one_committed_event,
    hp_06_complete_event_sequence_of_a_successful_run,
    hp_07_a_registered_handler_that_never_starts_blocks_its_parent,
    an_external_handler_completed_through_the_api_releases_its_parent,
);
