//! CX-*: the cooperation context travels down the tree and into rollbacks.

use serde_json::{Value, json};
use structured_cooperation::{
    ContextKey, CooperationContext, Error, Flavor, RunStatus, StepContext, StepError, StepResult,
};

use crate::engine::{Engine, Served, both};
use crate::util::{ExecLog, TestDb, WAIT};

struct P;
impl ContextKey for P {
    const NAME: &'static str = "P";
    type Value = i64;
}

struct C;
impl ContextKey for C {
    const NAME: &'static str = "C";
    type Value = i64;
}

fn bump<X: Flavor, K: ContextKey<Value = i64>>(
    ctx: &mut StepContext<'_, X>,
    to: i64,
) -> StepResult {
    ctx.context_mut().set::<K>(&to)?;
    Ok(())
}

/// Records `label: <context>` in the log.
fn seen<E: Engine>(log: &ExecLog, label: &str, ctx: &StepContext<'_, E::X>) {
    log.push(format!("{label}: {}", ctx.context()));
}

/// The reference's `ContextPropagationTest`: a child inherits its parent's context at emission
/// plus the emission's own entries; its changes never reach the parent; a failed step's
/// changes reach its run's rollback; a parent's rollback request carries the parent's context,
/// which wins over the child's.
fn cx_01_context_propagates_to_children_and_into_rollbacks<E: Engine>() {
    let db = TestDb::new("cx_01");
    let log = ExecLog::default();
    let root = {
        let (a, b, c) = (log.clone(), log.clone(), log.clone());
        E::saga("root-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    seen::<E>(&a, "root step 0", ctx);
                    bump::<_, P>(ctx, 1)?;
                    let extra = CooperationContext::with::<C>(&0)?;
                    ctx.emit_with("child-topic", &json!({}), extra)?;
                    Ok(())
                },
            )
            .rollback(move |ctx, _: &Value, _| {
                seen::<E>(&b, "root rollback 0", ctx);
                bump::<_, P>(ctx, 3)
            })
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    seen::<E>(&c, "root step 1", ctx);
                    bump::<_, P>(ctx, 2)?;
                    Err(StepError::msg("root step 1 fails"))
                },
            )
            .build()
            .unwrap()
    };
    let child = {
        let (a, b, c, d) = (log.clone(), log.clone(), log.clone(), log.clone());
        E::saga("child-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    seen::<E>(&a, "child step 0", ctx);
                    bump::<_, C>(ctx, 1)
                },
            )
            .rollback(move |ctx, _: &Value, _| {
                seen::<E>(&b, "child rollback 0", ctx);
                bump::<_, C>(ctx, 4)
            })
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    seen::<E>(&c, "child step 1", ctx);
                    bump::<_, C>(ctx, 2)
                },
            )
            .rollback(move |ctx, _: &Value, _| {
                seen::<E>(&d, "child rollback 1", ctx);
                bump::<_, C>(ctx, 3)
            })
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db)
        .subscribe("root-topic", root)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let id = runtime
        .launch_with(
            "root-topic",
            &json!({}),
            CooperationContext::with::<P>(&0).unwrap(),
        )
        .unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    assert_eq!(
        log.entries(),
        [
            r#"root step 0: {"P":0}"#,
            r#"child step 0: {"C":0,"P":1}"#,
            r#"child step 1: {"C":1,"P":1}"#,
            r#"root step 1: {"P":1}"#,
            r#"child rollback 1: {"C":2,"P":2}"#,
            r#"child rollback 0: {"C":3,"P":2}"#,
            r#"root rollback 0: {"P":2}"#,
        ]
    );
    // Final contexts are stored with the runs.
    let tree = runtime.tree(id).unwrap();
    let context_of = |handler: &str| {
        tree.iter()
            .find(|r| r.handler == handler)
            .map(|r| r.context.to_json())
            .unwrap()
    };
    assert_eq!(context_of("root-handler"), r#"{"P":3}"#);
    assert_eq!(context_of("child-handler"), r#"{"C":4,"P":2}"#);
}

/// A launch from a step starts a new root with only the context given to it; an emission
/// without extra entries copies the parent's context as it is at the moment of the emission.
fn launches_inherit_nothing_and_emissions_copy_the_context_at_emission_time<E: Engine>() {
    let db = TestDb::new("context_launch");
    let log = ExecLog::default();
    let root = E::saga("root-handler")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            bump::<_, P>(ctx, 1)?;
            ctx.emit("child-topic", &json!({"n": 1}))?;
            bump::<_, P>(ctx, 2)?;
            ctx.emit("child-topic", &json!({"n": 2}))?;
            ctx.launch("child-topic", &json!({"n": 3}))?;
            ctx.launch_with(
                "child-topic",
                &json!({"n": 4}),
                CooperationContext::with::<C>(&7)?,
            )?;
            Ok(())
        })
        .build()
        .unwrap();
    let child = {
        let log = log.clone();
        E::saga("child-handler")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, payload: &Value| -> StepResult {
                    log.push(format!("{}: {}", payload["n"], ctx.context()));
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
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    runtime.wait_idle(WAIT).unwrap();
    let mut entries = log.entries();
    entries.sort();
    assert_eq!(
        entries,
        [r#"1: {"P":1}"#, r#"2: {"P":2}"#, "3: {}", r#"4: {"C":7}"#]
    );
}

struct Tenant;
impl ContextKey for Tenant {
    const NAME: &'static str = "Tenant";
    type Value = String;
}

/// An entry that does not deserialize into the type asked for is an error naming the entry;
/// the context keeps it, and the run's other entries are untouched.
fn a_context_entry_of_the_wrong_type_is_a_clear_error_and_nothing_is_lost<E: Engine>() {
    let db = TestDb::new("context_bad_entry");
    let log = ExecLog::default();
    let saga = {
        let log = log.clone();
        E::saga("reader")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    match ctx.context().get::<Tenant>() {
                        Err(e @ Error::ContextEntry { .. }) => log.push(e.to_string()),
                        other => log.push(format!("unexpected: {other:?}")),
                    }
                    // Unknown and mistyped entries are written back as they came.
                    bump::<_, P>(ctx, 5)
                },
            )
            .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                ctx.context().get::<Tenant>()?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    let mut context = CooperationContext::new();
    context.set_raw("Tenant", "42").unwrap();
    context
        .set_raw("Foreign", r#"{"kept": [1, "\u00e9"]}"#)
        .unwrap();
    let id = runtime.launch_with("t", &json!({}), &context).unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    let entries = log.entries();
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].starts_with(
            "context entry \"Tenant\" does not deserialize into alloc::string::String"
        ),
        "{entries:?}"
    );
    // The second step's `?` failed the run, with the same message.
    let run = &outcome.runs()[0];
    assert_eq!(run.status, RunStatus::RolledBack);
    let failure = run.failure.as_ref().unwrap();
    assert!(
        failure.message().contains("context entry \"Tenant\""),
        "{failure}"
    );
    let tree = runtime.tree(id).unwrap();
    assert_eq!(
        tree[0].context.to_json(),
        r#"{"Foreign":{"kept": [1, "\u00e9"]},"P":5,"Tenant":42}"#
    );
}

both!(
    cx_01_context_propagates_to_children_and_into_rollbacks,
    launches_inherit_nothing_and_emissions_copy_the_context_at_emission_time,
    a_context_entry_of_the_wrong_type_is_a_clear_error_and_nothing_is_lost,
);
