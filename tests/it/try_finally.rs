//! TF-*: try/finally, built from steps and compensations.

use serde_json::{Value, json};
use structured_cooperation::{RunStatus, SagaOf, StepContext, StepError, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, TestDb, WAIT};

fn recorder<E: Engine>(name: &str, log: &ExecLog) -> SagaOf<E::X> {
    let (log, label) = (log.clone(), name.to_owned());
    E::saga(name)
        .step(move |_, _: &Value| -> StepResult {
            log.push(label.clone());
            Ok(())
        })
        .build()
        .unwrap()
}

fn run<E: Engine>(db: &TestDb, root: SagaOf<E::X>, log: &ExecLog) -> RunStatus {
    let runtime = E::runtime(db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", recorder::<E>("child-handler", log))
        .subscribe("finally-topic", recorder::<E>("finally-handler", log))
        .start()
        .unwrap();
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    let status = runtime.wait_for(id, WAIT).unwrap().runs()[0].status;
    runtime.wait_idle(WAIT).unwrap();
    status
}

fn finally<E: Engine>(
    log: &ExecLog,
) -> impl Fn(&mut StepContext<'_, E::X>, &Value) -> StepResult + Send + Sync + 'static {
    let log = log.clone();
    move |ctx: &mut StepContext<'_, E::X>, _: &Value| {
        log.push("root-finally");
        ctx.emit("finally-topic", &json!({}))?;
        Ok(())
    }
}

fn tf_01_finally_runs_on_success_after_the_trys_children<E: Engine>() {
    let db = TestDb::new("tf_01");
    let log = ExecLog::default();
    let root = {
        let (l1, l2) = (log.clone(), log.clone());
        E::saga("root-handler")
            .try_finally(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    l1.push("root-try");
                    ctx.emit("child-topic", &json!({}))?;
                    Ok(())
                },
                finally::<E>(&log),
            )
            .step(move |_, _: &Value| -> StepResult {
                l2.push("root-end");
                Ok(())
            })
            .build()
            .unwrap()
    };
    assert_eq!(run::<E>(&db, root, &log), RunStatus::Committed);
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

fn tf_02_finally_runs_when_the_try_fails_but_its_messages_vanish_with_the_step<E: Engine>() {
    let db = TestDb::new("tf_02");
    let log = ExecLog::default();
    let root = {
        let l1 = log.clone();
        E::saga("root-handler")
            .try_finally(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    l1.push("root-try");
                    ctx.emit("child-topic", &json!({}))?;
                    Err(StepError::msg("try failed"))
                },
                finally::<E>(&log),
            )
            .build()
            .unwrap()
    };
    assert_eq!(run::<E>(&db, root, &log), RunStatus::RolledBack);
    assert_eq!(log.entries(), ["root-try", "root-finally"]);
}

fn tf_04_finally_runs_once_when_a_later_step_fails<E: Engine>() {
    let db = TestDb::new("tf_04");
    let log = ExecLog::default();
    let root = {
        let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log.clone());
        E::saga("root-handler")
            .step(move |_, _: &Value| -> StepResult {
                l1.push("root-start");
                Ok(())
            })
            .rollback(move |_, _: &Value, _| {
                l2.push("root-rollback");
                Ok(())
            })
            .try_finally(
                move |_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    l3.push("root-try");
                    Ok(())
                },
                finally::<E>(&log),
            )
            .step(move |_, _: &Value| -> StepResult {
                l4.push("root-failure");
                Err(StepError::msg("later failure"))
            })
            .build()
            .unwrap()
    };
    assert_eq!(run::<E>(&db, root, &log), RunStatus::RolledBack);
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

fn finally_runs_during_rollback_when_the_saga_fails_before_it<E: Engine>() {
    let db = TestDb::new("tf_rollback");
    let log = ExecLog::default();
    let root = {
        let l1 = log.clone();
        E::saga("root-handler")
            .try_finally(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    l1.push("root-try");
                    ctx.emit("child-topic", &json!({"fail": true}))?;
                    Ok(())
                },
                finally::<E>(&log),
            )
            .build()
            .unwrap()
    };
    let failing_child = E::saga("child-handler")
        .step(|_, _: &Value| -> StepResult { Err(StepError::msg("child fails")) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", failing_child)
        .subscribe("finally-topic", recorder::<E>("finally-handler", &log))
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

both!(
    tf_01_finally_runs_on_success_after_the_trys_children,
    tf_02_finally_runs_when_the_try_fails_but_its_messages_vanish_with_the_step,
    tf_04_finally_runs_once_when_a_later_step_fails,
    finally_runs_during_rollback_when_the_saga_fails_before_it,
);
