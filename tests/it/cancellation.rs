//! CN-*: cancellation reaches a whole subtree, at step boundaries and after a running step.

use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{Requested, RunStatus, Scope, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, Gate, TestDb, WAIT, eventually, history_of};

fn cn_02_cancelling_a_finished_tree_does_nothing_and_says_so<E: Engine>() {
    let db = TestDb::new("cn_02");
    let log = ExecLog::default();
    let root = {
        let log = log.clone();
        E::saga("root-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    log.push("root:s1");
                    ctx.emit("child-topic", &json!({}))?;
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let child = {
        let log = log.clone();
        E::saga("child-handler")
            .step(move |_, _: &Value| -> StepResult {
                log.push("child:s1");
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
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    let before = history_of(&runtime, id);
    let answer = runtime.cancel(id, "master-system", "feelz").unwrap();
    assert!(
        matches!(&answer, Requested::Refused { reason } if reason.contains("nothing to cancel")),
        "{answer:?}"
    );
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(log.entries(), ["root:s1", "child:s1"]);
    // Deliberately unlike Scoop, which appends CANCELLATION_REQUESTED anyway: nothing changed.
    assert_eq!(history_of(&runtime, id), before);
    assert!(runtime.outcome(id).unwrap().is_committed());
}

/// A step that is running when the cancellation is recorded finishes, but its work is
/// discarded, not committed; the run then gives up and rolls back (Scoop's trace 9).
fn a_step_finishing_after_a_cancellation_is_discarded<E: Engine>() {
    let mut db = TestDb::new("cancel_running_step");
    let gate = Gate::default();
    let table = format!("{}_probe", db.schema);
    db.exec(&format!(
        "CREATE TABLE public.{table} (id text PRIMARY KEY)"
    ));
    let root = E::saga("root-handler")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            ctx.emit("child-topic", &json!({}))?;
            Ok(())
        })
        .build()
        .unwrap();
    let child = {
        let (gate, table) = (gate.clone(), table.clone());
        E::saga("child-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    E::execute(
                        ctx,
                        &format!("INSERT INTO public.{table} VALUES ('child')"),
                        &[],
                    )?;
                    gate.pass();
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    gate.wait_for_waiting(1);
    assert_eq!(
        runtime.cancel(id, "master-system", "feelz").unwrap(),
        Requested::Recorded { runs: 2 }
    );
    gate.open();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM public.{table}")),
        0
    );
    // Counted when the attempt that did it is over, which may be just after the
    // tree is seen finished.
    eventually("the gave_up_after_step to be counted", || {
        runtime.stats().gave_up_after_step >= 1
    });
    assert_eq!(runtime.stats().gave_up_after_step, 1);
    let trace = history_of(&runtime, id);
    let cancelled = trace
        .iter()
        .position(|e| e == "CANCELLATION_REQUESTED@-")
        .unwrap();
    assert!(
        !trace[cancelled..]
            .iter()
            .any(|e| e.starts_with("SUSPENDED(0)@child")),
        "the child's step never committed: {trace:?}"
    );
    assert!(
        trace[cancelled..].contains(&"ROLLING_BACK(0)@child-handler".to_owned()),
        "{trace:?}"
    );
    // The root was cancelled too; giving up wins over handling its child's failure.
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(failure.kind(), "structured_cooperation::Cancelled");
    assert_eq!(
        (failure.source(), failure.message()),
        ("master-system", "feelz")
    );
    db.exec(&format!("DROP TABLE public.{table}"));
}

/// A depth-3 tree with fan-out 5 (31 runs), cancelled while grandchildren run: no happy-path
/// step commits after the cancellation was recorded, and everything ends rolled back.
fn cancelling_a_depth_3_fan_out_5_tree_while_it_runs<E: Engine>() {
    let mut db = TestDb::new("cancel_tree");
    let gate = Gate::default();
    let fan_out = |name: &str, topic: &'static str| {
        E::saga(name)
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    for i in 0..5 {
                        ctx.emit(topic, &json!({ "i": i }))?;
                    }
                    Ok(())
                },
            )
            .step(|_, _: &Value| -> StepResult { Ok(()) })
            .rollback(|_, _: &Value, _| Ok(()))
            .build()
            .unwrap()
    };
    let leaf = {
        let gate = gate.clone();
        E::saga("leaf")
            .step(move |_, _: &Value| -> StepResult {
                gate.pass();
                Ok(())
            })
            .rollback(|_, _: &Value, _| Ok(()))
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .workers(4)
        .subscribe("root-topic", fan_out("root", "child-topic"))
        .subscribe("child-topic", fan_out("child", "leaf-topic"))
        .subscribe("leaf-topic", leaf)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    gate.wait_for_waiting(4);
    let answer = runtime.cancel(id, "ops", "stop everything").unwrap();
    assert!(answer.is_recorded(), "{answer:?}");
    gate.open();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(db.query_i64("SELECT count(*) FROM __S__.runs"), 31);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM __S__.runs WHERE status <> 'rolled_back'"),
        0
    );
    let late = db.query_i64(
        "SELECT count(*) FROM __S__.history h, \
         (SELECT seq FROM __S__.history WHERE event = 'CANCELLATION_REQUESTED') c \
         WHERE h.seq > c.seq AND h.event IN ('SUSPENDED', 'COMMITTED') \
         AND h.step NOT LIKE 'Rollback of %'",
    );
    assert_eq!(
        late, 0,
        "a happy-path step committed after the cancellation was recorded"
    );
}

fn a_long_step_can_ask_whether_to_give_up<E: Engine>() {
    let db = TestDb::new("should_give_up");
    let gate = Gate::default();
    let answers = ExecLog::default();
    let saga = {
        let (gate, answers) = (gate.clone(), answers.clone());
        E::saga("worker")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    answers.push(format!("{}", E::should_give_up(ctx)?));
                    gate.pass();
                    answers.push(format!("{}", E::should_give_up(ctx)?));
                    E::give_up_if_necessary(ctx)?;
                    answers.push("never");
                    Ok(())
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    let id = runtime.launch("t", &json!({})).unwrap();
    gate.wait_for_waiting(1);
    assert!(runtime.cancel(id, "ops", "enough").unwrap().is_recorded());
    gate.open();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(answers.entries(), ["false", "true"]);
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert_eq!(
        (failure.kind(), failure.message()),
        ("structured_cooperation::Cancelled", "enough")
    );
    assert_eq!(
        runtime.stats().gave_up_after_step,
        0,
        "the step gave up by itself"
    );
}

fn a_sleeping_run_wakes_to_give_up_and_only_its_subtree_is_cancelled<E: Engine>() {
    let db = TestDb::new("cancel_sleeper");
    let root = E::saga("root-handler")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            ctx.emit("sleepy", &json!({}))?;
            ctx.emit("busy", &json!({}))?;
            Ok(())
        })
        .on_child_failures(|_, _: &Value, f| Ok(f.next()))
        .build()
        .unwrap();
    let sleepy = E::saga("sleepy")
        .sleep(Duration::from_secs(3600))
        .step(|_, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let busy = E::saga("busy")
        .step(|_, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("sleepy", sleepy)
        .subscribe("busy", busy)
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    let client = &runtime;
    eventually("the sleeper to sleep", || {
        history_of(&runtime, id).contains(&"SUSPENDED(0)@sleepy".to_owned())
    });
    let sleeper = client
        .tree(id)
        .unwrap()
        .into_iter()
        .find(|r| r.handler == "sleepy")
        .unwrap();
    assert_eq!(
        client
            .cancel(Scope::Run(sleeper.id), "ops", "wake up")
            .unwrap(),
        Requested::Recorded { runs: 1 }
    );
    // The root handles the child's failure and commits: only the subtree was cancelled.
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    let tree = client.tree(id).unwrap();
    let status = |h: &str| tree.iter().find(|r| r.handler == h).unwrap().status;
    assert_eq!(status("sleepy"), RunStatus::RolledBack);
    assert_eq!(status("busy"), RunStatus::Committed);
}

both!(
    cn_02_cancelling_a_finished_tree_does_nothing_and_says_so,
    a_step_finishing_after_a_cancellation_is_discarded,
    cancelling_a_depth_3_fan_out_5_tree_while_it_runs,
    a_long_step_can_ask_whether_to_give_up,
    a_sleeping_run_wakes_to_give_up_and_only_its_subtree_is_cancelled,
);
