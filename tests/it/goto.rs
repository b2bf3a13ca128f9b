//! LP-08..15: jumps (`GoTo`, `GoToStep`), including how they roll back.

use serde_json::{Value, json};
use structured_cooperation::{Next, Saga, StepResult};

use crate::loops::{body, pair, recorded, run, s};
use crate::rollback::{r, simulated};
use crate::util::{ExecLog, TestDb, WAIT};

#[test]
fn lp_08_goto_forward_skips_steps() {
    let db = TestDb::new("lp_08");
    let log = ExecLog::default();
    let saga = recorded(
        &log,
        vec![
            (
                "step-0",
                body(|l, _| {
                    l.push("step-0");
                    Ok(Next::GoTo(2))
                }),
            ),
            (
                "step-1",
                body(|l, _| {
                    l.push("step-1");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-2",
                body(|l, _| {
                    l.push("step-2");
                    Ok(Next::Continue)
                }),
            ),
        ],
    );
    let (trace, _) = run(&db, saga, vec![]);
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

#[test]
fn lp_09_goto_backward_reexecutes_and_resets_the_iteration() {
    let db = TestDb::new("lp_09");
    let log = ExecLog::default();
    let saga = recorded(
        &log,
        vec![
            (
                "step-A",
                body(|l, ctx| {
                    l.push(format!("A-crc-{}", ctx.iteration()));
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-B",
                body(|l, _| {
                    l.push("B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body(|l, _| {
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
    let (trace, _) = run(&db, saga, vec![]);
    assert_eq!(log.entries(), ["A-crc-0", "B", "C", "A-crc-0", "B", "C"]);
    let steps: Vec<&String> = trace
        .iter()
        .filter(|e| e.starts_with("SUSPENDED"))
        .collect();
    assert_eq!(steps.len(), 6);
    assert_eq!(trace.last().unwrap(), "COMMITTED(step-C)@root-handler");
}

#[test]
fn lp_10_goto_self_is_a_repeat() {
    let db = TestDb::new("lp_10");
    let log = ExecLog::default();
    let saga = recorded(
        &log,
        vec![
            (
                "self-goto-step",
                body(|l, ctx| {
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
                body(|l, _| {
                    l.push("after-self-goto");
                    Ok(Next::Continue)
                }),
            ),
        ],
    );
    let (trace, _) = run(&db, saga, vec![]);
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

#[test]
fn lp_11_goto_and_rollback_undo_in_reverse_chronological_order() {
    let db = TestDb::new("lp_11");
    let log = ExecLog::default();
    let saga = recorded(
        &log,
        vec![
            (
                "step-A",
                body(|l, _| {
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
                body(|l, _| {
                    l.push("invoke-B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body(|l, _| {
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
    let (trace, _) = run(&db, saga, vec![]);
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

#[test]
fn lp_13_a_skipped_step_is_not_rolled_back() {
    let db = TestDb::new("lp_13");
    let log = ExecLog::default();
    let saga = recorded(
        &log,
        vec![
            (
                "step-A",
                body(|l, _| {
                    l.push("invoke-A");
                    Ok(Next::GoTo(2))
                }),
            ),
            (
                "step-B",
                body(|l, _| {
                    l.push("invoke-B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body(|l, _| {
                    l.push("invoke-C");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-D",
                body(|l, _| {
                    l.push("invoke-D");
                    Err(simulated("D fails"))
                }),
            ),
        ],
    );
    let (_, _) = run(&db, saga, vec![]);
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

#[test]
fn lp_15_goto_into_a_repeating_step_then_failure_rolls_back_every_instance() {
    let db = TestDb::new("lp_15");
    let log = ExecLog::default();
    let saga = recorded(
        &log,
        vec![
            (
                "step-A",
                body(|l, _| {
                    l.push("invoke-A");
                    Ok(Next::GoTo(2))
                }),
            ),
            (
                "step-B",
                body(|l, _| {
                    l.push("invoke-B");
                    Ok(Next::Continue)
                }),
            ),
            (
                "step-C",
                body(|l, ctx| {
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
    let (trace, _) = run(&db, saga, vec![]);
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

#[test]
fn a_goto_to_an_unknown_step_fails_the_run_clearly() {
    let db = TestDb::new("goto_unknown");
    let saga = Saga::builder("root-handler")
        .step(|_, _: &Value| -> StepResult<Next> { Ok(Next::GoToStep("nowhere")) })
        .build()
        .unwrap();
    let runtime = db.runtime().subscribe("root-topic", saga).start().unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::InvalidGoTo");
    assert!(failure.message().contains("no such step"), "{failure}");
}
