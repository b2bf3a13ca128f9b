//! Compensations across a tree: order, emissions, failed rollbacks (Q16), operator requests,
//! and loops.

use serde_json::{Value, json};
use structured_cooperation::{
    Next, Requested, RunStatus, Saga, Scope, StepContext, StepError, StepResult,
};

use crate::rollback::{r, rc, root_launch, simulated};
use crate::util::{ExecLog, Gate, TestDb, WAIT, history_of, wait_for_event};

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
