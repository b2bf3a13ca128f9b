//! HP-*: the rule at work on the happy path.

use serde_json::{Value, json};
use structured_cooperation::{Saga, StepContext, StepResult};

use crate::util::{ExecLog, Gate, TestDb, WAIT, history_of, project};

fn root_launch() -> Value {
    json!({"initial": "true"})
}

#[test]
fn hp_01_parent_waits_for_child() {
    let db = TestDb::new("hp_01");
    let log = ExecLog::default();
    let gate = Gate::default();
    let root = {
        let log = log.clone();
        let log2 = log.clone();
        Saga::builder("root-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                log.push("root:s1");
                ctx.emit("child-topic", &json!({"from": "root"}))?;
                Ok(())
            })
            .step(move |_ctx, _: &Value| -> StepResult {
                log2.push("root:s2");
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = {
        let (log, log2, gate) = (log.clone(), log.clone(), gate.clone());
        Saga::builder("child-handler")
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
    let runtime = db
        .runtime()
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
