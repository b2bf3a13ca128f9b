//! TF-*: try/finally, built from steps and compensations.

use serde_json::{Value, json};
use structured_cooperation::{RunStatus, Saga, StepContext, StepError, StepResult};

use crate::util::{ExecLog, TestDb, WAIT};

fn recorder(name: &str, log: &ExecLog) -> Saga {
    let (log, label) = (log.clone(), name.to_owned());
    Saga::builder(name)
        .step(move |_, _: &Value| -> StepResult {
            log.push(label.clone());
            Ok(())
        })
        .build()
        .unwrap()
}

fn run(db: &TestDb, root: Saga, log: &ExecLog) -> RunStatus {
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", recorder("child-handler", log))
        .subscribe("finally-topic", recorder("finally-handler", log))
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    let status = runtime.wait_for(id, WAIT).unwrap().runs()[0].status;
    runtime.wait_idle(WAIT).unwrap();
    status
}

fn finally(
    log: &ExecLog,
) -> impl Fn(&mut StepContext<'_>, &Value) -> StepResult + Send + Sync + 'static {
    let log = log.clone();
    move |ctx: &mut StepContext<'_>, _: &Value| {
        log.push("root-finally");
        ctx.emit("finally-topic", &json!({}))?;
        Ok(())
    }
}

#[test]
fn tf_01_finally_runs_on_success_after_the_trys_children() {
    let db = TestDb::new("tf_01");
    let log = ExecLog::default();
    let root = {
        let (l1, l2) = (log.clone(), log.clone());
        Saga::builder("root-handler")
            .try_finally(
                move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                    l1.push("root-try");
                    ctx.emit("child-topic", &json!({}))?;
                    Ok(())
                },
                finally(&log),
            )
            .step(move |_, _: &Value| -> StepResult {
                l2.push("root-end");
                Ok(())
            })
            .build()
            .unwrap()
    };
    assert_eq!(run(&db, root, &log), RunStatus::Committed);
    assert_eq!(
        log.entries(),
        [
            "root-try",
            "child-handler",
            "root-finally",
            "finally-handler",
            "root-end"
        ]
    );
}

#[test]
fn tf_02_finally_runs_when_the_try_fails_but_its_messages_vanish_with_the_step() {
    let db = TestDb::new("tf_02");
    let log = ExecLog::default();
    let root = {
        let l1 = log.clone();
        Saga::builder("root-handler")
            .try_finally(
                move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                    l1.push("root-try");
                    ctx.emit("child-topic", &json!({}))?;
                    Err(StepError::msg("try failed"))
                },
                finally(&log),
            )
            .build()
            .unwrap()
    };
    assert_eq!(run(&db, root, &log), RunStatus::RolledBack);
    assert_eq!(log.entries(), ["root-try", "root-finally"]);
}

#[test]
fn tf_04_finally_runs_once_when_a_later_step_fails() {
    let db = TestDb::new("tf_04");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log.clone());
        Saga::builder("root-handler")
            .step(move |_, _: &Value| -> StepResult {
                l1.push("root-start");
                Ok(())
            })
            .rollback(move |_, _: &Value, _| {
                l2.push("root-rollback");
                Ok(())
            })
            .try_finally(
                move |_: &mut StepContext<'_>, _: &Value| -> StepResult {
                    l3.push("root-try");
                    Ok(())
                },
                finally(&log),
            )
            .step(move |_, _: &Value| -> StepResult {
                l4.push("root-failure");
                Err(StepError::msg("later failure"))
            })
            .build()
            .unwrap()
    };
    assert_eq!(run(&db, root, &log), RunStatus::RolledBack);
    assert_eq!(
        log.entries(),
        [
            "root-start",
            "root-try",
            "root-finally",
            "finally-handler",
            "root-failure",
            "root-rollback"
        ]
    );
}

#[test]
fn finally_runs_during_rollback_when_the_saga_fails_before_it() {
    let db = TestDb::new("tf_rollback");
    let log = ExecLog::default();
    let root = {
        let l1 = log.clone();
        Saga::builder("root-handler")
            .try_finally(
                move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                    l1.push("root-try");
                    ctx.emit("child-topic", &json!({"fail": true}))?;
                    Ok(())
                },
                finally(&log),
            )
            .build()
            .unwrap()
    };
    let failing_child = Saga::builder("child-handler")
        .step(|_, _: &Value| -> StepResult { Err(StepError::msg("child fails")) })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .subscribe("root-topic", root)
        .subscribe("child-topic", failing_child)
        .subscribe("finally-topic", recorder("finally-handler", &log))
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    assert_eq!(
        runtime.wait_for(id, WAIT).unwrap().runs()[0].status,
        RunStatus::RolledBack
    );
    runtime.wait_idle(WAIT).unwrap();
    // The try's child failed, so the finally step never ran; the finally ran as the try's
    // compensation instead (and the rollback waited for what it emitted).
    assert_eq!(
        log.entries(),
        ["root-try", "root-finally", "finally-handler"]
    );
}
