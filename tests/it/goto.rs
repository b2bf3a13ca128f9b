//! LP-08..15: jumps (`GoTo`, `GoToStep`), including how they roll back.

use serde_json::{Value, json};
use structured_cooperation::{Next, StepResult};

use crate::engine::{Engine, Served, both};
use crate::loops::{body, pair, recorded, run, s};
use crate::rollback::{r, simulated};
use crate::util::{ExecLog, TestDb, WAIT};

fn lp_08_goto_forward_skips_steps<E: Engine>() {
    let db = TestDb::new("lp_08");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "step-0",
                body::<E>(|l, _| {
                    l.push("step-0");
                    Ok(Next::GoTo(2))
                }),
            ),
            (
                "step-1",
                body::<E>(|l, _| {
                    l.push("step-1");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-2",
                body::<E>(|l, _| {
                    l.push("step-2");
                    Ok(Next::Continue)
                }),
            ),
        ],
    );
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(log.entries(), ["step-0", "step-2"]);
    assert_eq!(
        trace,
        [
            "EMITTED@-",
            "SEEN@root-handler",
            "SUSPENDED(step-0)@root-handler",
            "SUSPENDED(step-2)@root-handler",
            "COMMITTED(step-2)@root-handler",
        ]
    );
}

fn lp_09_goto_backward_reexecutes_and_resets_the_iteration<E: Engine>() {
    let db = TestDb::new("lp_09");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "step-A",
                body::<E>(|l, ctx| {
                    l.push(format!("A-crc-{}", ctx.iteration()));
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-B",
                body::<E>(|l, _| {
                    l.push("B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body::<E>(|l, _| {
                    l.push("C");
                    // By name this time: the same as GoTo(0).
                    Ok(if l.entries().len() < 4 {
                        Next::GoToStep("step-A")
                    } else {
                        Next::Continue
                    })
                }),
            ),
        ],
    );
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(log.entries(), ["A-crc-0", "B", "C", "A-crc-0", "B", "C"]);
    let steps: Vec<&String> = trace
        .iter()
        .filter(|e| e.starts_with("SUSPENDED"))
        .collect();
    assert_eq!(steps.len(), 6);
    assert_eq!(trace.last().unwrap(), "COMMITTED(step-C)@root-handler");
}

fn lp_10_goto_self_is_a_repeat<E: Engine>() {
    let db = TestDb::new("lp_10");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "self-goto-step",
                body::<E>(|l, ctx| {
                    l.push(format!("self-goto-iter-{}", ctx.iteration()));
                    Ok(if ctx.iteration() < 2 {
                        Next::GoTo(0)
                    } else {
                        Next::Continue
                    })
                }),
            ),
            (
                "1",
                body::<E>(|l, _| {
                    l.push("after-self-goto");
                    Ok(Next::Continue)
                }),
            ),
        ],
    );
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(
        log.entries(),
        [
            "self-goto-iter-0",
            "self-goto-iter-1",
            "self-goto-iter-2",
            "after-self-goto"
        ]
    );
    assert_eq!(
        trace[2..].to_vec(),
        [
            "SUSPENDED(self-goto-step)@root-handler",
            "SUSPENDED(self-goto-step)@root-handler",
            "SUSPENDED(self-goto-step)@root-handler",
            "SUSPENDED(1)@root-handler",
            "COMMITTED(1)@root-handler",
        ]
    );
}

fn lp_11_goto_and_rollback_undo_in_reverse_chronological_order<E: Engine>() {
    let db = TestDb::new("lp_11");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "step-A",
                body::<E>(|l, _| {
                    l.push("invoke-A");
                    Ok(
                        if l.entries().iter().filter(|e| *e == "invoke-A").count() == 1 {
                            Next::Continue
                        } else {
                            Next::GoTo(2)
                        },
                    )
                }),
            ),
            (
                "step-B",
                body::<E>(|l, _| {
                    l.push("invoke-B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body::<E>(|l, _| {
                    l.push("invoke-C");
                    if l.entries().iter().filter(|e| *e == "invoke-C").count() == 1 {
                        Ok(Next::GoTo(0))
                    } else {
                        Err(simulated("second C"))
                    }
                }),
            ),
        ],
    );
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(
        log.entries(),
        [
            "invoke-A",
            "invoke-B",
            "invoke-C",
            "invoke-A",
            "invoke-C",
            "rollback-step-A",
            "rollback-step-C",
            "rollback-step-B",
            "rollback-step-A",
        ]
    );
    let tail: Vec<String> = trace
        .iter()
        .skip_while(|e| !e.starts_with("ROLLING_BACK"))
        .cloned()
        .collect();
    let mut expected = vec![s("ROLLING_BACK(step-C)@root-handler")];
    for x in ["step-A[1,]", "step-C[0,]", "step-B[0,]", "step-A[0,]"] {
        expected.extend(pair(x));
    }
    expected.push(format!("ROLLED_BACK({})@root-handler", r("step-A[0,]")));
    assert_eq!(tail, expected);
}

fn lp_13_a_skipped_step_is_not_rolled_back<E: Engine>() {
    let db = TestDb::new("lp_13");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "step-A",
                body::<E>(|l, _| {
                    l.push("invoke-A");
                    Ok(Next::GoTo(2))
                }),
            ),
            (
                "step-B",
                body::<E>(|l, _| {
                    l.push("invoke-B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body::<E>(|l, _| {
                    l.push("invoke-C");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-D",
                body::<E>(|l, _| {
                    l.push("invoke-D");
                    Err(simulated("D fails"))
                }),
            ),
        ],
    );
    let (_, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(
        log.entries(),
        [
            "invoke-A",
            "invoke-C",
            "invoke-D",
            "rollback-step-C",
            "rollback-step-A"
        ]
    );
}

fn lp_15_goto_into_a_repeating_step_then_failure_rolls_back_every_instance<E: Engine>() {
    let db = TestDb::new("lp_15");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "step-A",
                body::<E>(|l, _| {
                    l.push("invoke-A");
                    Ok(Next::GoTo(2))
                }),
            ),
            (
                "step-B",
                body::<E>(|l, _| {
                    l.push("invoke-B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body::<E>(|l, ctx| {
                    l.push(format!("invoke-C-{}", ctx.iteration()));
                    if ctx.iteration() == 0 {
                        Ok(Next::Repeat)
                    } else {
                        Err(simulated("C fails"))
                    }
                }),
            ),
        ],
    );
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(
        log.entries(),
        [
            "invoke-A",
            "invoke-C-0",
            "invoke-C-1",
            "rollback-step-C",
            "rollback-step-A"
        ]
    );
    let tail: Vec<String> = trace
        .iter()
        .skip_while(|e| !e.starts_with("ROLLING_BACK"))
        .cloned()
        .collect();
    let mut expected = vec![s("ROLLING_BACK(step-C)@root-handler")];
    for x in ["step-C[0,]", "step-A[0,]"] {
        expected.extend(pair(x));
    }
    expected.push(format!("ROLLED_BACK({})@root-handler", r("step-A[0,]")));
    assert_eq!(tail, expected);
}

fn a_goto_to_an_unknown_step_fails_the_run_clearly<E: Engine>() {
    let db = TestDb::new("goto_unknown");
    let saga = E::saga("root-handler")
        .step(|_, _: &Value| -> StepResult<Next> { Ok(Next::GoToStep("nowhere")) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("root-topic", saga)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::InvalidGoTo");
    assert!(failure.message().contains("no such step"), "{failure}");
}

both!(
    lp_08_goto_forward_skips_steps,
    lp_09_goto_backward_reexecutes_and_resets_the_iteration,
    lp_10_goto_self_is_a_repeat,
    lp_11_goto_and_rollback_undo_in_reverse_chronological_order,
    lp_13_a_skipped_step_is_not_rolled_back,
    lp_15_goto_into_a_repeating_step_then_failure_rolls_back_every_instance,
    a_goto_to_an_unknown_step_fails_the_run_clearly,
);
