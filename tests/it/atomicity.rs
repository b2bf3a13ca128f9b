//! AT-*: a step's business writes commit (or vanish) together with its bookkeeping.

use serde_json::{Value, json};
use structured_cooperation::{Saga, StepContext, StepError, StepResult};

use crate::util::{TestDb, WAIT, history_of};

fn probe_table(db: &mut TestDb) -> String {
    let table = format!("{}_probe", db.schema);
    db.exec(&format!(
        "DROP TABLE IF EXISTS public.{table}; CREATE TABLE public.{table} (id text PRIMARY KEY)"
    ));
    format!("public.{table}")
}

#[test]
fn at_02_a_business_write_commits_atomically_with_the_step() {
    let mut db = TestDb::new("at_02");
    let table = probe_table(&mut db);
    let saga = {
        let table = table.clone();
        Saga::builder("jta-commit-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.emit("child-topic", &json!({}))?;
                ctx.tx()
                    .execute(&format!("INSERT INTO {table} (id) VALUES ('probe')"), &[])?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = Saga::builder("child-handler")
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .subscribe("jta-topic", saga)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let root = runtime.launch("jta-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {table}")), 1);
    let history = history_of(&runtime, root);
    assert!(history.contains(&"SUSPENDED(0)@jta-commit-handler".to_owned()));
    assert!(history.contains(&"COMMITTED(0)@jta-commit-handler".to_owned()));
    db.exec(&format!("DROP TABLE {table}"));
}

#[test]
fn at_03_a_business_write_rolls_back_with_a_failing_step() {
    let mut db = TestDb::new("at_03");
    let table = probe_table(&mut db);
    let saga = {
        let table = table.clone();
        Saga::builder("jta-rollback-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.tx()
                    .execute(&format!("INSERT INTO {table} (id) VALUES ('probe')"), &[])?;
                ctx.emit("child-topic", &json!({}))?;
                Err(StepError::msg("simulated step failure"))
            })
            .build()
            .unwrap()
    };
    let runtime = db.runtime().subscribe("jta-topic", saga).start().unwrap();
    let root = runtime.launch("jta-topic", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert!(!outcome.is_committed());
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {table}")), 0);
    // The step's emission vanished with it.
    assert_eq!(
        db.query_i64("SELECT count(*) FROM __S__.messages WHERE topic = 'child-topic'"),
        0
    );
    db.exec(&format!("DROP TABLE {table}"));
}

#[test]
fn launch_in_commits_with_the_callers_transaction() {
    let mut db = TestDb::new("launch_in");
    let client = db.client();
    let rolled_back = {
        let mut tx = db.admin().transaction().unwrap();
        let root = client.launch_in(&mut tx, "t", &json!({})).unwrap();
        tx.rollback().unwrap();
        root
    };
    assert!(client.message(rolled_back.message_id()).unwrap().is_none());
    let committed = {
        let mut tx = db.admin().transaction().unwrap();
        let root = client.launch_in(&mut tx, "t", &json!({})).unwrap();
        tx.commit().unwrap();
        root
    };
    assert!(client.message(committed.message_id()).unwrap().is_some());
}

#[test]
fn prepared_statements_are_reused_and_a_bad_one_fails_only_its_step() {
    let mut db = TestDb::new("prepare_cached");
    let table = probe_table(&mut db);
    let saga = {
        let table = table.clone();
        Saga::builder("writer")
            .step(move |ctx: &mut StepContext<'_>, p: &Value| -> StepResult {
                let insert =
                    ctx.prepare_cached(&format!("INSERT INTO {table} (id) VALUES ($1)"))?;
                let again = ctx.prepare_cached(&format!("INSERT INTO {table} (id) VALUES ($1)"))?;
                assert_eq!(insert.columns().len(), again.columns().len());
                let id = p["id"].as_str().unwrap_or_default().to_owned();
                ctx.tx().execute(&insert, &[&id])?;
                if p["bad"].as_bool() == Some(true) {
                    ctx.prepare_cached("SELEC nonsense")?;
                }
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .workers(1)
        .subscribe("w", saga)
        .start()
        .unwrap();
    let bad = runtime
        .launch("w", &json!({"id": "b", "bad": true}))
        .unwrap();
    let good = runtime.launch("w", &json!({"id": "g"})).unwrap();
    let outcome = runtime.wait_for(bad, WAIT).unwrap();
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert!(failure.message().contains("syntax error"), "{failure}");
    assert!(runtime.wait_for(good, WAIT).unwrap().is_committed());
    // The failed step's insert vanished with it; the other committed.
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {table} WHERE id = 'b'")),
        0
    );
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {table} WHERE id = 'g'")),
        1
    );
    assert_eq!(runtime.stats().infra_errors, 0);
    db.exec(&format!("DROP TABLE {table}"));
}
