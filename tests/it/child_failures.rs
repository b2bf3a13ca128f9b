//! CF-*: child failures reach the parent, whose handler may retry, carry on, or fail.

use serde_json::{Value, json};
use structured_cooperation::{EventKind, Next, RunStatus, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::rollback::{failing, r, rc, root_launch, simulated};
use crate::util::{ExecLog, TestDb, WAIT, history_of};

fn cf_02_the_child_failure_handler_gets_its_iteration_and_may_retry<E: Engine>() {
    let db = TestDb::new("cf_02");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        E::saga("root-handler")
            .step_named(
                "step-with-children",
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
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
        E::saga("child-handler")
            .step(move |_, _: &Value| -> StepResult {
                log.push("child-step");
                Err(simulated("child always fails"))
            })
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
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

fn cf_04_the_child_failure_handler_sees_the_goto_its_step_chose<E: Engine>() {
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
        E::saga("root-handler")
            .step_named(
                "step-0",
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult<Next> {
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
        E::saga("child-handler")
            .step(move |_, _: &Value| -> StepResult {
                log.push("child-failing");
                Err(simulated("child fails"))
            })
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
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

fn a_handled_child_failure_never_comes_back<E: Engine>() {
    // Scoop's D1: a handler that retried successfully (or swallowed the failure) was called
    // again forever with the old failures. Here the saga proceeds.
    let db = TestDb::new("d1_fixed");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        E::saga("root-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    l1.push("s1");
                    ctx.emit("child-topic", &json!({"fail": true}))?;
                    Ok(())
                },
            )
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
    let child = E::saga("child-handler")
        .step(|_, p: &Value| -> StepResult {
            if p["fail"] == true {
                Err(simulated("first attempt"))
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &root_launch()).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(log.entries(), ["s1", "hcf-0", "s2"]);
}

fn a_panicking_child_failure_handler_and_compensation_are_recorded<E: Engine>() {
    let db = TestDb::new("panics");
    let root = E::saga("root-handler")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            ctx.emit("child-topic", &json!({}))?;
            Ok(())
        })
        .rollback(|_, _: &Value, _| -> StepResult { panic!("compensation panicked") })
        .on_child_failures(|_, _: &Value, _| -> StepResult<Next> { panic!("handler panicked") })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .workers(1)
        .subscribe("root-topic", root)
        .subscribe("child-topic", failing::<E>("child-handler"))
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

/// Issue 10: a child fails ("original") and its compensation fails too ("another"). Its
/// parent's child-failure handler, the parent's failure and the grandparent's failure (two
/// levels up) all tell both.
fn a_childs_failed_rollback_does_not_hide_its_original_failure<E: Engine>() {
    let db = TestDb::new("failed_rollback_original");
    let seen = ExecLog::default();
    let grand = E::saga("grand")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            ctx.emit("parent-topic", &json!({}))?;
            Ok(())
        })
        .build()
        .unwrap();
    let parent = {
        let seen = seen.clone();
        E::saga("parent")
            .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                ctx.emit("child-topic", &json!({}))?;
                Ok(())
            })
            .on_child_failures(move |_, _: &Value, f| {
                seen.push(f.failure().to_string());
                Err(f.rethrow())
            })
            .build()
            .unwrap()
    };
    let child = E::saga("child")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .rollback(|_, _: &Value, _| Err(structured_cooperation::StepError::msg("another")))
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            Err(structured_cooperation::StepError::msg("original"))
        })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("grand-topic", grand)
        .subscribe("parent-topic", parent)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let root = runtime.launch("grand-topic", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    // A failed rollback below stops every rollback above it.
    assert_eq!(outcome.runs()[0].status, RunStatus::RollbackFailed);
    let both = |text: &str| text.contains("original") && text.contains("another");
    let handled = seen.entries();
    assert_eq!(handled.len(), 1);
    assert!(both(&handled[0]), "the handler saw: {}", handled[0]);
    let tree = runtime.tree(root).unwrap();
    let parent_run = tree.iter().find(|r| r.handler == "parent").unwrap();
    let parent_failure = parent_run.failure.as_ref().unwrap().to_string();
    assert!(both(&parent_failure), "{parent_failure}");
    let grand_failure = outcome.runs()[0].failure.as_ref().unwrap().to_string();
    assert!(both(&grand_failure), "{grand_failure}");
    runtime.shutdown().unwrap();
}

both!(
    a_childs_failed_rollback_does_not_hide_its_original_failure,
    cf_02_the_child_failure_handler_gets_its_iteration_and_may_retry,
    cf_04_the_child_failure_handler_sees_the_goto_its_step_chose,
    a_handled_child_failure_never_comes_back,
    a_panicking_child_failure_handler_and_compensation_are_recorded,
);
