//! LP-*: loops (`Repeat`) and jumps (`GoTo`), including how they roll back.

use serde_json::{Value, json};
use structured_cooperation::{Next, RunStatus, SagaOf, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::rollback::{r, rc, simulated};
use crate::util::{ExecLog, TestDb, WAIT, history_of};

pub(crate) fn run<E: Engine>(
    db: &TestDb,
    saga: SagaOf<E::X>,
    extra: Vec<(&str, SagaOf<E::X>)>,
) -> (Vec<String>, RunStatus) {
    let mut builder = E::runtime(db).subscribe("root-topic", saga);
    for (topic, saga) in extra {
        builder = builder.subscribe(topic, saga);
    }
    let runtime = builder.start().unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    let status = runtime.wait_for(id, WAIT).unwrap().runs()[0].status;
    (history_of(&runtime, id), status)
}

pub(crate) fn s(e: &str) -> String {
    e.to_owned()
}

/// The RC/R pair for `x`.
pub(crate) fn pair(x: &str) -> [String; 2] {
    [
        format!("SUSPENDED({})@root-handler", rc(x)),
        format!("SUSPENDED({})@root-handler", r(x)),
    ]
}

fn lp_01_repeat_reexecutes_with_an_incremented_iteration<E: Engine>() {
    let db = TestDb::new("lp_01");
    let log = ExecLog::default();
    let (l1, l2) = (log.clone(), log.clone());
    let saga = E::saga("root-handler")
        .step_named(
            "loop-step",
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult<Next> {
                l1.push(format!("loop-step-iter-{}", ctx.iteration()));
                Ok(if ctx.iteration() < 2 {
                    Next::Repeat
                } else {
                    Next::Continue
                })
            },
        )
        .step(move |_, _: &Value| -> StepResult {
            l2.push("after-loop-step");
            Ok(())
        })
        .build()
        .unwrap();
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(
        log.entries(),
        [
            "loop-step-iter-0",
            "loop-step-iter-1",
            "loop-step-iter-2",
            "after-loop-step"
        ]
    );
    assert_eq!(
        trace,
        [
            "EMITTED@-",
            "SEEN@root-handler",
            "SUSPENDED(loop-step)@root-handler",
            "SUSPENDED(loop-step)@root-handler",
            "SUSPENDED(loop-step)@root-handler",
            "SUSPENDED(1)@root-handler",
            "COMMITTED(1)@root-handler",
        ]
    );
}

fn lp_02_a_zero_iteration_loop_is_a_normal_step<E: Engine>() {
    let db = TestDb::new("lp_02");
    let log = ExecLog::default();
    let (l1, l2) = (log.clone(), log.clone());
    let saga = E::saga("root-handler")
        .step_named(
            "immediate-continue",
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                l1.push(format!("step-1-iter-{}", ctx.iteration()));
                Ok(())
            },
        )
        .step(move |_, _: &Value| -> StepResult {
            l2.push("step-2");
            Ok(())
        })
        .build()
        .unwrap();
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(log.entries(), ["step-1-iter-0", "step-2"]);
    assert_eq!(
        trace,
        [
            "EMITTED@-",
            "SEEN@root-handler",
            "SUSPENDED(immediate-continue)@root-handler",
            "SUSPENDED(1)@root-handler",
            "COMMITTED(1)@root-handler",
        ]
    );
}

fn lp_03_each_iterations_children_finish_before_the_next_iteration<E: Engine>() {
    let db = TestDb::new("lp_03");
    let log = ExecLog::default();
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let saga = E::saga("root-handler")
        .step_named(
            "loop-step",
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult<Next> {
                l1.push(format!("loop-step-iter-{}", ctx.iteration()));
                ctx.emit(
                    "child-topic",
                    &json!({"from": format!("loop-iter-{}", ctx.iteration())}),
                )?;
                Ok(if ctx.iteration() < 1 {
                    Next::Repeat
                } else {
                    Next::Continue
                })
            },
        )
        .step(move |_, _: &Value| -> StepResult {
            l3.push("after-loop-step");
            Ok(())
        })
        .build()
        .unwrap();
    let child = E::saga("child-handler")
        .step(move |_, _: &Value| -> StepResult {
            l2.push("child-handler-step");
            Ok(())
        })
        .build()
        .unwrap();
    let (trace, _) = run::<E>(&db, saga, vec![("child-topic", child)]);
    assert_eq!(
        log.entries(),
        [
            "loop-step-iter-0",
            "child-handler-step",
            "loop-step-iter-1",
            "child-handler-step",
            "after-loop-step"
        ]
    );
    let one_iteration = [
        "EMITTED(loop-step)@root-handler",
        "SUSPENDED(loop-step)@root-handler",
        "SEEN@child-handler",
        "SUSPENDED(0)@child-handler",
        "COMMITTED(0)@child-handler",
    ];
    let mut expected = vec!["EMITTED@-", "SEEN@root-handler"];
    expected.extend(one_iteration);
    expected.extend(one_iteration);
    expected.extend(["SUSPENDED(1)@root-handler", "COMMITTED(1)@root-handler"]);
    assert_eq!(trace, expected);
}

/// A saga whose steps record `invoke-<label>` and compensate with `rollback-<label>`.
pub(crate) fn recorded<E: Engine>(
    log: &ExecLog,
    steps: Vec<(&'static str, StepBody<E::X>)>,
) -> SagaOf<E::X> {
    let mut b = E::saga::<Value>("root-handler");
    for (name, body) in steps {
        let (l1, l2) = (log.clone(), log.clone());
        b = b
            .step_named(name, move |ctx: &mut StepContext<'_, E::X>, _: &Value| {
                body(&l1, ctx)
            })
            .rollback(move |_, _: &Value, _| {
                l2.push(format!("rollback-{name}"));
                Ok(())
            });
    }
    b.build().unwrap()
}

pub(crate) type StepBody<X> =
    Box<dyn Fn(&ExecLog, &mut StepContext<'_, X>) -> StepResult<Next> + Send + Sync>;

pub(crate) fn body<E: Engine>(
    f: impl Fn(&ExecLog, &mut StepContext<'_, E::X>) -> StepResult<Next> + Send + Sync + 'static,
) -> StepBody<E::X> {
    Box::new(f)
}

fn lp_05_a_single_iteration_loop_rolls_back_like_a_step<E: Engine>() {
    let db = TestDb::new("lp_05");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "loop-step",
                body::<E>(|l, _| {
                    l.push("invoke-loop-0");
                    Ok(Next::Continue)
                }),
            ),
            (
                "failing-step",
                body::<E>(|l, _| {
                    l.push("invoke-failing");
                    Err(simulated("fails"))
                }),
            ),
        ],
    );
    let (trace, status) = run::<E>(&db, saga, vec![]);
    assert_eq!(status, RunStatus::RolledBack);
    assert_eq!(
        log.entries(),
        ["invoke-loop-0", "invoke-failing", "rollback-loop-step"]
    );
    let mut expected = vec![
        s("EMITTED@-"),
        s("SEEN@root-handler"),
        s("SUSPENDED(loop-step)@root-handler"),
        s("ROLLING_BACK(failing-step)@root-handler"),
    ];
    expected.extend(pair("loop-step[0,]"));
    expected.push(format!("ROLLED_BACK({})@root-handler", r("loop-step[0,]")));
    assert_eq!(trace, expected);
}

fn lp_06_a_completed_loop_followed_by_a_failure_rolls_back_every_iteration<E: Engine>() {
    let db = TestDb::new("lp_06");
    let log = ExecLog::default();
    let saga = recorded::<E>(
        &log,
        vec![
            (
                "loop-step",
                body::<E>(|l, ctx| {
                    l.push(format!("invoke-loop-{}", ctx.iteration()));
                    Ok(if ctx.iteration() < 2 {
                        Next::Repeat
                    } else {
                        Next::Continue
                    })
                }),
            ),
            (
                "middle-step",
                body::<E>(|l, _| {
                    l.push("invoke-middle");
                    Ok(Next::Continue)
                }),
            ),
            (
                "failing-step",
                body::<E>(|l, _| {
                    l.push("invoke-failing");
                    Err(simulated("fails"))
                }),
            ),
        ],
    );
    let (trace, _) = run::<E>(&db, saga, vec![]);
    assert_eq!(
        log.entries(),
        [
            "invoke-loop-0",
            "invoke-loop-1",
            "invoke-loop-2",
            "invoke-middle",
            "invoke-failing",
            "rollback-middle-step",
            "rollback-loop-step",
            "rollback-loop-step",
            "rollback-loop-step",
        ]
    );
    let mut expected = vec![s("EMITTED@-"), s("SEEN@root-handler")];
    expected.extend(std::iter::repeat_n(
        s("SUSPENDED(loop-step)@root-handler"),
        3,
    ));
    expected.push(s("SUSPENDED(middle-step)@root-handler"));
    expected.push(s("ROLLING_BACK(failing-step)@root-handler"));
    for x in [
        "middle-step[0,]",
        "loop-step[2,]",
        "loop-step[1,]",
        "loop-step[0,]",
    ] {
        expected.extend(pair(x));
    }
    expected.push(format!("ROLLED_BACK({})@root-handler", r("loop-step[0,]")));
    assert_eq!(trace, expected);
}

both!(
    lp_01_repeat_reexecutes_with_an_incremented_iteration,
    lp_02_a_zero_iteration_loop_is_a_normal_step,
    lp_03_each_iterations_children_finish_before_the_next_iteration,
    lp_05_a_single_iteration_loop_rolls_back_like_a_step,
    lp_06_a_completed_loop_followed_by_a_failure_rolls_back_every_iteration,
);
