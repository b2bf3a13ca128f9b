//! RB-*, CF-*, EX-03, IR-02: the rollback path, child failures and distributed failures.

use serde_json::{Value, json};
use structured_cooperation::{
    EventKind, Next, Requested, RunStatus, Saga, Scope, StepContext, StepError, StepResult,
};

use crate::util::{ExecLog, Gate, TestDb, WAIT, history_of, wait_for_event};

fn root_launch() -> Value {
    json!({"initial": "true"})
}

/// `RC:x` and `R:x` of the catalogue.
fn rc(x: &str) -> String {
    format!("Rollback of {x} (rolling back child scopes)")
}
fn r(x: &str) -> String {
    format!("Rollback of {x}")
}

fn simulated(what: &str) -> StepError {
    StepError::with_kind("test::SimulatedFailure", what)
}

#[test]
fn rb_01_a_failure_in_the_first_step_emits_nothing_and_compensates_nothing() {
    let db = TestDb::new("rb_01");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        Saga::builder("root-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                l1.push("root:s1");
                ctx.emit("child-topic", &json!({}))?;
                Err(simulated("Simulated failure to test rollback"))
            })
            .rollback(move |_, _: &Value, _| {
                l2.push("root:rb1");
                Ok(())
            })
            .on_child_failures(move |_, _: &Value, f| {
                l3.push("root:hcf1");
                Err(f.rethrow())
            })
            .build()
            .unwrap()
    };
    let runtime = db.runtime().subscribe("root-topic", root).start().unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    assert_eq!(
        runtime.wait_for(id, WAIT).unwrap().runs()[0].status,
        RunStatus::RolledBack
    );
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-".to_owned(),
            "SEEN@root-handler".to_owned(),
            "ROLLING_BACK(0)@root-handler".to_owned(),
            format!("ROLLED_BACK({})@root-handler", r("0[0,]")),
        ]
    );
    assert_eq!(log.entries(), ["root:s1"]);
}

#[test]
fn rb_02_a_failure_in_the_second_step_rolls_back_the_first() {
    let db = TestDb::new("rb_02");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3, l4, l5) = (
            log.clone(),
            log.clone(),
            log.clone(),
            log.clone(),
            log.clone(),
        );
        Saga::builder("root-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                l1.push("root:s1");
                ctx.emit("child-topic", &json!({}))?;
                Ok(())
            })
            .rollback(move |_, _: &Value, _| {
                l2.push("root:rb1");
                Ok(())
            })
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                l3.push("root:s2");
                ctx.emit("child-topic", &json!({}))?;
                Err(simulated("second step"))
            })
            .rollback(move |_, _: &Value, _| {
                l4.push("root:rb2");
                Ok(())
            })
            .on_child_failures(move |_, _: &Value, f| {
                l5.push("root:hcf2");
                Err(f.rethrow())
            })
            .build()
            .unwrap()
    };
    let runtime = db.runtime().subscribe("root-topic", root).start().unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-".to_owned(),
            "SEEN@root-handler".to_owned(),
            "EMITTED(0)@root-handler".to_owned(),
            "SUSPENDED(0)@root-handler".to_owned(),
            "ROLLING_BACK(1)@root-handler".to_owned(),
            format!("ROLLBACK_EMITTED({})@root-handler", rc("0[0,]")),
            format!("SUSPENDED({})@root-handler", rc("0[0,]")),
            format!("SUSPENDED({})@root-handler", r("0[0,]")),
            format!("ROLLED_BACK({})@root-handler", r("0[0,]")),
        ]
    );
    assert_eq!(log.entries(), ["root:s1", "root:s2", "root:rb1"]);
}

/// RB-03's topology: a root with one step emitting one child, whose second step fails.
fn rb_03_sagas(log: &ExecLog) -> (Saga, Saga) {
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let root = Saga::builder("root-handler")
        .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            l1.push("root:s1");
            ctx.emit("child-topic", &json!({}))?;
            Ok(())
        })
        .rollback(move |_, _: &Value, _| {
            l2.push("root:rb1");
            Ok(())
        })
        .on_child_failures(move |_, _: &Value, f| {
            l3.push("root:hcf1");
            Err(f.rethrow())
        })
        .build()
        .unwrap();
    let (c1, c2, c3) = (log.clone(), log.clone(), log.clone());
    let child = Saga::builder("child-handler")
        .step(move |_, _: &Value| -> StepResult {
            c1.push("child:s1");
            Ok(())
        })
        .rollback(move |_, _: &Value, _| {
            c2.push("child:rb1");
            Ok(())
        })
        .step(move |_, _: &Value| -> StepResult {
            c3.push("child:s2");
            Err(simulated("child's second step"))
        })
        .build()
        .unwrap();
    (root, child)
}

#[test]
fn rb_03_when_a_child_fails_rollbacks_happen_in_reverse_order() {
    let db = TestDb::new("rb_03");
    let log = ExecLog::default();
    let (root, child) = rb_03_sagas(&log);
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-".to_owned(),
            "SEEN@root-handler".to_owned(),
            "EMITTED(0)@root-handler".to_owned(),
            "SUSPENDED(0)@root-handler".to_owned(),
            "SEEN@child-handler".to_owned(),
            "SUSPENDED(0)@child-handler".to_owned(),
            "ROLLING_BACK(1)@child-handler".to_owned(),
            format!("SUSPENDED({})@child-handler", rc("0[0,]")),
            format!("SUSPENDED({})@child-handler", r("0[0,]")),
            format!("ROLLED_BACK({})@child-handler", r("0[0,]")),
            "ROLLING_BACK(0)@root-handler".to_owned(),
            format!("ROLLBACK_EMITTED({})@root-handler", rc("0[0,]")),
            format!("SUSPENDED({})@root-handler", rc("0[0,]")),
            format!("SUSPENDED({})@root-handler", r("0[0,]")),
            format!("ROLLED_BACK({})@root-handler", r("0[0,]")),
        ]
    );
    assert_eq!(
        log.entries(),
        [
            "root:s1",
            "child:s1",
            "child:s2",
            "child:rb1",
            "root:hcf1",
            "root:rb1"
        ]
    );
    // The distributed failure: the root's cause names the child's failure as its own cause.
    let history = runtime.history(id).unwrap();
    let root_cause = history
        .iter()
        .find(|e| e.to_string() == "ROLLING_BACK(0)@root-handler")
        .and_then(|e| e.failure.clone())
        .unwrap();
    assert_eq!(root_cause.kind(), "structured_cooperation::ChildRolledBack");
    assert_eq!(root_cause.causes()[0].kind(), "test::SimulatedFailure");
    assert!(
        root_cause.causes()[0]
            .source()
            .starts_with("child-handler[")
    );
    let request = history
        .iter()
        .find(|e| e.kind == EventKind::RollbackEmitted)
        .and_then(|e| e.failure.clone())
        .unwrap();
    assert_eq!(request.kind(), "structured_cooperation::ParentSaidSo");
    assert_eq!(request.causes(), [root_cause]);
}

fn failing(name: &str) -> Saga {
    Saga::builder(name)
        .step(|_, _: &Value| -> StepResult { Err(simulated("always fails")) })
        .build()
        .unwrap()
}

#[test]
fn rb_07_and_rb_08_a_failed_run_writes_one_rolled_back_and_the_full_sequence() {
    let mut db = TestDb::new("rb_07_08");
    let runtime = db
        .runtime()
        .subscribe("t", failing("failed-sequence-handler"))
        .start()
        .unwrap();
    let id = runtime.launch("t", &json!({})).unwrap();
    runtime.wait_for(id, WAIT).unwrap();
    let count = |db: &mut TestDb, event: &str| {
        db.query_i64(&format!(
            "SELECT count(*) FROM __S__.history WHERE event = '{event}' AND message_id = '{id}'"
        ))
    };
    assert_eq!(count(&mut db, "EMITTED"), 1);
    assert_eq!(count(&mut db, "SEEN"), 1);
    assert_eq!(count(&mut db, "COMMITTED"), 0);
    assert_eq!(count(&mut db, "ROLLING_BACK"), 1);
    assert_eq!(count(&mut db, "ROLLED_BACK"), 1);
    let kinds: Vec<String> = runtime
        .history(id)
        .unwrap()
        .iter()
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(kinds, ["EMITTED", "SEEN", "ROLLING_BACK", "ROLLED_BACK"]);
}

#[test]
fn rb_09_rolling_back_a_finished_hierarchy() {
    let db = TestDb::new("rb_09");
    let log = ExecLog::default();
    let root = {
        let log = log.clone();
        Saga::builder("root-handler")
            .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.emit("child-topic", &json!({}))?;
                Ok(())
            })
            .rollback(move |_, _: &Value, cause| {
                log.push(format!("root:rb1 because {}", cause.message()));
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = Saga::builder("child-handler")
        .step(|_, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    let requested = runtime
        .client()
        .rollback(id, "master-system", "feelz")
        .unwrap();
    assert_eq!(requested, Requested::Recorded { runs: 1 });
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert_eq!(log.entries(), ["root:rb1 because feelz"]);
    let history = runtime.history(id).unwrap();
    assert_eq!(
        crate::util::trace(&history),
        [
            "EMITTED@-".to_owned(),
            "SEEN@root-handler".to_owned(),
            "EMITTED(0)@root-handler".to_owned(),
            "SUSPENDED(0)@root-handler".to_owned(),
            "SEEN@child-handler".to_owned(),
            "SUSPENDED(0)@child-handler".to_owned(),
            "COMMITTED(0)@child-handler".to_owned(),
            "COMMITTED(0)@root-handler".to_owned(),
            "ROLLBACK_EMITTED@-".to_owned(),
            "ROLLING_BACK@root-handler".to_owned(),
            format!("ROLLBACK_EMITTED({})@root-handler", rc("0[0,]")),
            format!("SUSPENDED({})@root-handler", rc("0[0,]")),
            "ROLLING_BACK@child-handler".to_owned(),
            format!("SUSPENDED({})@child-handler", rc("0[0,]")),
            format!("SUSPENDED({})@child-handler", r("0[0,]")),
            format!("ROLLED_BACK({})@child-handler", r("0[0,]")),
            format!("SUSPENDED({})@root-handler", r("0[0,]")),
            format!("ROLLED_BACK({})@root-handler", r("0[0,]")),
        ]
    );
    let request = history[8].failure.clone().unwrap();
    assert_eq!(request.kind(), "structured_cooperation::RollbackRequested");
    assert_eq!(
        (request.source(), request.message()),
        ("master-system", "feelz")
    );
    // Nothing committed is left: a second request is refused, and says why.
    let again = runtime
        .client()
        .rollback(id, "master-system", "again")
        .unwrap();
    assert!(
        matches!(&again, Requested::Refused { reason } if reason.contains("nothing committed")),
        "{again:?}"
    );
}

#[test]
fn cf_02_the_child_failure_handler_gets_its_iteration_and_may_retry() {
    let db = TestDb::new("cf_02");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        Saga::builder("root-handler")
            .step_named(
                "step-with-children",
                move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                    l1.push(format!("invoke-iter-{}", ctx.iteration()));
                    ctx.emit("child-topic", &json!({}))?;
                    Ok(())
                },
            )
            .rollback(move |_, _: &Value, _| {
                l2.push("rollback");
                Ok(())
            })
            .on_child_failures(move |ctx, _: &Value, f| {
                l3.push(format!(
                    "handleChildFailures-childFailureHandlerIteration-{}",
                    f.iteration()
                ));
                if f.iteration() < 1 {
                    ctx.emit("child-topic", &json!({"retry": true}))?;
                    Ok(f.next())
                } else {
                    Err(f.rethrow())
                }
            })
            .build()
            .unwrap()
    };
    let child = {
        let log = log.clone();
        Saga::builder("child-handler")
            .step(move |_, _: &Value| -> StepResult {
                log.push("child-step");
                Err(simulated("child always fails"))
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(
        log.entries(),
        [
            "invoke-iter-0",
            "child-step",
            "handleChildFailures-childFailureHandlerIteration-0",
            "child-step",
            "handleChildFailures-childFailureHandlerIteration-1",
            "rollback",
        ]
    );
    let s = "step-with-children";
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-".to_owned(),
            "SEEN@root-handler".to_owned(),
            format!("EMITTED({s})@root-handler"),
            format!("SUSPENDED({s})@root-handler"),
            "SEEN@child-handler".to_owned(),
            "ROLLING_BACK(0)@child-handler".to_owned(),
            format!("ROLLED_BACK({})@child-handler", r("0[0,]")),
            format!("EMITTED({s})@root-handler"),
            format!("SUSPENDED({s})@root-handler"),
            "SEEN@child-handler".to_owned(),
            "ROLLING_BACK(0)@child-handler".to_owned(),
            format!("ROLLED_BACK({})@child-handler", r("0[0,]")),
            format!("ROLLING_BACK({s})@root-handler"),
            format!(
                "ROLLBACK_EMITTED({})@root-handler",
                rc(&format!("{s}[0,0]"))
            ),
            format!("SUSPENDED({})@root-handler", rc(&format!("{s}[0,0]"))),
            format!("ROLLBACK_EMITTED({})@root-handler", rc(&format!("{s}[0,]"))),
            format!("SUSPENDED({})@root-handler", rc(&format!("{s}[0,]"))),
            format!("SUSPENDED({})@root-handler", r(&format!("{s}[0,]"))),
            format!("ROLLED_BACK({})@root-handler", r(&format!("{s}[0,]"))),
        ]
    );
}

#[test]
fn cf_04_the_child_failure_handler_sees_the_goto_its_step_chose() {
    let db = TestDb::new("cf_04");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3, l4, l5) = (
            log.clone(),
            log.clone(),
            log.clone(),
            log.clone(),
            log.clone(),
        );
        Saga::builder("root-handler")
            .step_named(
                "step-0",
                move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult<Next> {
                    l1.push("invoke-0");
                    ctx.emit("child-topic", &json!({}))?;
                    Ok(Next::GoTo(2))
                },
            )
            .on_child_failures(move |_, _: &Value, f| {
                l2.push(format!(
                    "hcf-childFailureHandlerIteration-{}-nextStep-{:?}",
                    f.iteration(),
                    f.next()
                ));
                Err(f.rethrow())
            })
            .rollback(move |ctx, _: &Value, _| {
                l3.push(format!("rollback-{}", ctx.iteration()));
                Ok(())
            })
            .step_named("step-1", move |_, _: &Value| -> StepResult {
                l4.push("step-1");
                Ok(())
            })
            .step_named("step-2", move |_, _: &Value| -> StepResult {
                l5.push("step-2");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = {
        let log = log.clone();
        Saga::builder("child-handler")
            .step(move |_, _: &Value| -> StepResult {
                log.push("child-failing");
                Err(simulated("child fails"))
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(
        log.entries(),
        [
            "invoke-0",
            "child-failing",
            "hcf-childFailureHandlerIteration-0-nextStep-GoTo(2)",
            "rollback-0",
        ]
    );
    assert_eq!(
        history_of(&runtime, id),
        [
            "EMITTED@-".to_owned(),
            "SEEN@root-handler".to_owned(),
            "EMITTED(step-0)@root-handler".to_owned(),
            "SUSPENDED(step-0)@root-handler".to_owned(),
            "SEEN@child-handler".to_owned(),
            "ROLLING_BACK(0)@child-handler".to_owned(),
            format!("ROLLED_BACK({})@child-handler", r("0[0,]")),
            "ROLLING_BACK(step-0)@root-handler".to_owned(),
            format!("ROLLBACK_EMITTED({})@root-handler", rc("step-0[0,]")),
            format!("SUSPENDED({})@root-handler", rc("step-0[0,]")),
            format!("SUSPENDED({})@root-handler", r("step-0[0,]")),
            format!("ROLLED_BACK({})@root-handler", r("step-0[0,]")),
        ]
    );
}

#[derive(Debug)]
struct CustomTestException;

impl std::fmt::Display for CustomTestException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Custom exception for testing exception storage")
    }
}

impl std::error::Error for CustomTestException {}

#[test]
fn ex_03_the_failure_is_stored_with_its_type_and_message() {
    let mut db = TestDb::new("ex_03");
    let saga = Saga::builder("exception-test-handler")
        .step(|_, _: &Value| -> StepResult { Err(CustomTestException.into()) })
        .build()
        .unwrap();
    let runtime = db.runtime().subscribe("t", saga).start().unwrap();
    let id = runtime.launch("t", &json!({})).unwrap();
    runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM __S__.history WHERE event = 'ROLLING_BACK' \
             AND handler = 'exception-test-handler'"
        ),
        1
    );
    let failure = runtime
        .history(id)
        .unwrap()
        .into_iter()
        .find_map(|e| (e.kind == EventKind::RollingBack).then_some(e.failure))
        .flatten()
        .unwrap();
    assert_eq!(failure.kind(), "it::rollback::CustomTestException");
    assert!(
        failure
            .message()
            .ends_with("Custom exception for testing exception storage")
    );
}

#[test]
fn ir_02_a_business_failure_rolls_back_and_is_not_retried() {
    let db = TestDb::new("ir_02");
    let log = ExecLog::default();
    let saga = {
        let log = log.clone();
        Saga::builder("business")
            .step(move |_, _: &Value| -> StepResult {
                log.push("attempt");
                Err(simulated("SimulatedBusinessFailure"))
            })
            .build()
            .unwrap()
    };
    let runtime = db.runtime().subscribe("t", saga).start().unwrap();
    let id = runtime.launch("t", &json!({})).unwrap();
    runtime.wait_for(id, WAIT).unwrap();
    runtime.wait_idle(WAIT).unwrap();
    let kinds: Vec<EventKind> = runtime
        .history(id)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::RollingBack) && kinds.contains(&EventKind::RolledBack));
    assert_eq!(log.entries(), ["attempt"]);
    assert_eq!(runtime.stats().infra_errors, 0);
}

#[test]
fn a_handled_child_failure_never_comes_back() {
    // Scoop's D1: a handler that retried successfully (or swallowed the failure) was called
    // again forever with the old failures. Here the saga proceeds.
    let db = TestDb::new("d1_fixed");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        Saga::builder("root-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                l1.push("s1");
                ctx.emit("child-topic", &json!({"fail": true}))?;
                Ok(())
            })
            .on_child_failures(move |ctx, _: &Value, f| {
                l2.push(format!("hcf-{}", f.iteration()));
                ctx.emit("child-topic", &json!({"fail": false}))?;
                Ok(f.next())
            })
            .step(move |_, _: &Value| -> StepResult {
                l3.push("s2");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = Saga::builder("child-handler")
        .step(|_, p: &Value| -> StepResult {
            if p["fail"] == true {
                Err(simulated("first attempt"))
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(log.entries(), ["s1", "hcf-0", "s2"]);
}

#[test]
fn a_panicking_child_failure_handler_and_compensation_are_recorded() {
    let db = TestDb::new("panics");
    let root = Saga::builder("root-handler")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            ctx.emit("child-topic", &json!({}))?;
            Ok(())
        })
        .rollback(|_, _: &Value, _| -> StepResult { panic!("compensation panicked") })
        .on_child_failures(|_, _: &Value, _| -> StepResult<Next> { panic!("handler panicked") })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .workers(1)
        .subscribe("root-topic", root)
        .subscribe("child-topic", failing("child-handler"))
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RollbackFailed);
    let history = runtime.history(id).unwrap();
    let rolling_back = history
        .iter()
        .find(|e| e.to_string() == "ROLLING_BACK(0)@root-handler")
        .and_then(|e| e.failure.clone())
        .unwrap();
    assert_eq!(
        (rolling_back.kind(), rolling_back.message()),
        ("panic", "handler panicked")
    );
    let failed = history
        .iter()
        .find(|e| e.kind == EventKind::RollbackFailed)
        .unwrap();
    assert_eq!(failed.step.as_deref(), Some(r("0[0,]").as_str()));
    assert_eq!(
        failed.failure.as_ref().unwrap().message(),
        "compensation panicked"
    );
    // The single worker survived both panics.
    assert!(
        runtime
            .wait_for(runtime.launch("child-topic", &json!({})).unwrap(), WAIT)
            .is_ok()
    );
}

/// Q16: a child's failed compensation stops its parent's rollback there: the parent ends
/// ROLLBACK_FAILED and its remaining (older) compensations do not run.
#[test]
fn a_childs_failed_rollback_stops_the_parents_rollback() {
    let db = TestDb::new("q16");
    let log = ExecLog::default();
    let root = {
        let (l1, l2) = (log.clone(), log.clone());
        Saga::builder("root-handler")
            .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.emit("child-topic", &json!({}))?;
                Ok(())
            })
            .rollback(move |_, _: &Value, _| {
                l1.push("root:rb0");
                Ok(())
            })
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .rollback(move |_, _: &Value, _| {
                l2.push("root:rb1");
                Ok(())
            })
            .step(|_, _: &Value| -> StepResult { Err(simulated("third step")) })
            .build()
            .unwrap()
    };
    let child = {
        let log = log.clone();
        Saga::builder("child-handler")
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .rollback(move |_, _: &Value, _| {
                log.push("child:rb0");
                Err(StepError::with_kind(
                    "billing::RefundFailed",
                    "refund failed",
                ))
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RollbackFailed);
    assert_eq!(
        log.entries(),
        ["root:rb1", "child:rb0"],
        "root:rb0 never runs"
    );
    let failure = outcome.runs()[0].rollback_failure.clone().unwrap();
    assert_eq!(
        failure.kind(),
        "structured_cooperation::ChildRollbackFailed"
    );
    assert_eq!(failure.step(), Some(rc("0[0,]").as_str()));
    assert_eq!(failure.causes()[0].kind(), "billing::RefundFailed");
    assert_eq!(
        failure.causes()[1].message(),
        "third step",
        "the root's own cause comes last"
    );
    let trace = history_of(&runtime, id);
    assert_eq!(
        trace.last().unwrap(),
        &format!("ROLLBACK_FAILED({})@root-handler", rc("0[0,]"))
    );
}

/// Three levels; a grandchild fails. Every step that committed is compensated exactly once,
/// children before their parents, newest first.
#[test]
fn a_grandchilds_failure_compensates_all_three_levels_once_in_order() {
    let db = TestDb::new("three_levels_rb");
    let log = ExecLog::default();
    let compensating = |name: &str, steps: &[(&'static str, Option<&'static str>, bool)]| {
        let mut b = Saga::builder::<Value>(name);
        for &(step, emits, fails) in steps {
            let label = format!("{name}:{step}");
            b = b
                .step_named(
                    step,
                    move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                        if let Some(topic) = emits {
                            ctx.emit(topic, &json!({}))?;
                        }
                        if fails {
                            return Err(simulated("grandchild fails"));
                        }
                        Ok(())
                    },
                )
                .rollback({
                    let (log, label) = (log.clone(), label.clone());
                    move |_, _: &Value, _| {
                        log.push(label.clone());
                        Ok(())
                    }
                });
        }
        b.build().unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("root", compensating("root", &[("r0", Some("fan"), false)]))
        // Both children listen on "fan": one's subtree succeeds, the other's fails.
        .subscribe(
            "fan",
            compensating(
                "ok-child",
                &[("c0", Some("ok-grand"), false), ("c1", None, false)],
            ),
        )
        .subscribe(
            "fan",
            compensating("bad-child", &[("b0", Some("bad-grand"), false)]),
        )
        .subscribe(
            "ok-grand",
            compensating("ok-grandchild", &[("g0", None, false), ("g1", None, false)]),
        )
        .subscribe(
            "bad-grand",
            compensating("bad-grandchild", &[("x0", None, false), ("x1", None, true)]),
        )
        .start()
        .unwrap();
    let id = runtime.launch("root", &json!({})).unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let order = log.entries();
    let mut sorted = order.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        order.len(),
        "each compensation ran once: {order:?}"
    );
    assert_eq!(order.len(), 7, "{order:?}");
    let at = |label: &str| {
        order
            .iter()
            .position(|l| l == label)
            .unwrap_or_else(|| panic!("{label} missing: {order:?}"))
    };
    for pair in [
        ("bad-grandchild:x0", "bad-child:b0"),
        ("bad-child:b0", "ok-child:c1"),
        ("ok-child:c1", "ok-grandchild:g1"),
        ("ok-grandchild:g1", "ok-grandchild:g0"),
        ("ok-grandchild:g0", "ok-child:c0"),
        ("ok-child:c0", "root:r0"),
    ] {
        assert!(
            at(pair.0) < at(pair.1),
            "{} before {}: {order:?}",
            pair.0,
            pair.1
        );
    }
    assert!(
        runtime
            .client()
            .tree(id)
            .unwrap()
            .iter()
            .all(|r| r.status == RunStatus::RolledBack)
    );
}

#[test]
fn a_compensation_that_emits_waits_for_its_messages() {
    let db = TestDb::new("compensation_emits");
    let gate = Gate::default();
    let root = Saga::builder("order")
        .step(|_, _: &Value| -> StepResult { Ok(()) })
        .rollback(|ctx, _: &Value, _| {
            ctx.emit("refunds", &json!({"amount": 10}))?;
            Ok(())
        })
        .step(|_, _: &Value| -> StepResult { Err(simulated("out of stock")) })
        .build()
        .unwrap();
    let refund = {
        let gate = gate.clone();
        Saga::builder("refund")
            .step(move |_, _: &Value| -> StepResult {
                gate.pass();
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("orders", root)
        .subscribe("refunds", refund)
        .start()
        .unwrap();
    let id = runtime.launch("orders", &json!({})).unwrap();
    gate.wait_for_waiting(1);
    wait_for_event(&runtime, id, &format!("SUSPENDED({})@order", r("0[0,]")));
    assert!(
        !runtime.client().outcome(id).unwrap().is_finished(),
        "the rollback waits for the refund"
    );
    gate.open();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    let trace = history_of(&runtime, id);
    let refunded = trace
        .iter()
        .position(|e| e == "COMMITTED(0)@refund")
        .unwrap();
    let done = trace
        .iter()
        .position(|e| e.starts_with("ROLLED_BACK") && e.ends_with("@order"))
        .unwrap();
    assert!(refunded < done, "{trace:?}");
    assert!(
        trace.contains(&format!("EMITTED({})@order", r("0[0,]"))),
        "{trace:?}"
    );
}

#[test]
fn operator_rollback_is_refused_while_the_tree_runs_and_can_target_a_subtree() {
    let db = TestDb::new("operator_rollback");
    let gate = Gate::default();
    let log = ExecLog::default();
    let root = {
        let log = log.clone();
        Saga::builder("root-handler")
            .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.emit("child-topic", &json!({}))?;
                Ok(())
            })
            .rollback(move |_, _: &Value, _| {
                log.push("root compensated");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = {
        let (gate, log) = (gate.clone(), log.clone());
        Saga::builder("child-handler")
            .step(move |_, _: &Value| -> StepResult {
                gate.pass();
                Ok(())
            })
            .rollback(move |_, _: &Value, _| {
                log.push("child compensated");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let client = runtime.client();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    gate.wait_for_waiting(1);
    let refused = client.rollback(id, "ops", "too early").unwrap();
    assert!(
        matches!(&refused, Requested::Refused { reason } if reason.contains("still in progress")),
        "{refused:?}"
    );
    gate.open();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    let unknown = client
        .rollback(
            structured_cooperation::RootId::from_uuid(uuid::Uuid::now_v7()),
            "ops",
            "?",
        )
        .unwrap();
    assert!(!unknown.is_recorded(), "{unknown:?}");
    // Roll back only the child's subtree: the root stays committed and is not compensated.
    let child_run = client
        .tree(id)
        .unwrap()
        .into_iter()
        .find(|r| r.handler == "child-handler")
        .unwrap();
    let requested = client
        .rollback(Scope::Run(child_run.id), "ops", "just the child")
        .unwrap();
    assert_eq!(requested, Requested::Recorded { runs: 1 });
    crate::util::eventually("the child to roll back", || {
        client
            .tree(id)
            .unwrap()
            .iter()
            .any(|r| r.status == RunStatus::RolledBack)
    });
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(log.entries(), ["child compensated"]);
    let tree = client.tree(id).unwrap();
    assert_eq!(tree[0].status, RunStatus::Committed, "{tree:?}");
    assert_eq!(tree[0].pending_children, 0);
}

/// Scoop's Q1 fixed: every execution of a looped step is compensated, newest first, and each
/// compensation gets its own execution's iteration (the reference always passed 0).
#[test]
fn each_iteration_of_a_loop_is_compensated_with_its_own_iteration() {
    let db = TestDb::new("loop_compensation");
    let log = ExecLog::default();
    let saga = {
        let log = log.clone();
        Saga::builder("looper")
            .step_named(
                "loop-step",
                |ctx: &mut StepContext<'_>, _: &Value| -> StepResult<Next> {
                    Ok(if ctx.iteration() < 2 {
                        Next::Repeat
                    } else {
                        Next::Continue
                    })
                },
            )
            .rollback(move |ctx, _: &Value, _| {
                log.push(format!("rollback-iter-{}", ctx.iteration()));
                Ok(())
            })
            .step(|_, _: &Value| -> StepResult { Err(simulated("after the loop")) })
            .build()
            .unwrap()
    };
    let runtime = db.runtime().subscribe("t", saga).start().unwrap();
    let id = runtime.launch("t", &json!({})).unwrap();
    assert_eq!(
        runtime.wait_for(id, WAIT).unwrap().runs()[0].status,
        RunStatus::RolledBack
    );
    assert_eq!(
        log.entries(),
        ["rollback-iter-2", "rollback-iter-1", "rollback-iter-0"]
    );
    let trace = history_of(&runtime, id);
    let compensations: Vec<&String> = trace
        .iter()
        .filter(|e| {
            e.starts_with("SUSPENDED(Rollback of loop-step[") && !e.contains("child scopes")
        })
        .collect();
    assert_eq!(
        compensations,
        [
            "SUSPENDED(Rollback of loop-step[2,])@looper",
            "SUSPENDED(Rollback of loop-step[1,])@looper",
            "SUSPENDED(Rollback of loop-step[0,])@looper",
        ]
    );
}
