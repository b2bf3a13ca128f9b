//! Idempotent launches (issue 10): one root per key, on both runtimes, inside the caller's
//! transaction, and from many threads at once (many processes: `tests/multiprocess.rs`).

use serde_json::{Value, json};
use structured_cooperation::{EmitOptions, Error, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT};

fn once(key: &str) -> EmitOptions {
    EmitOptions::new().idempotency_key(key)
}

fn a_key_launches_once_and_answers_with_the_same_root<E: Engine>() {
    let mut db = TestDb::new("keyed_launch");
    let saga = E::saga("orders")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = E::runtime(&db).subscribe("orders", saga).start().unwrap();
    let first = runtime
        .launch_with("orders", &json!({ "id": 7 }), once("order-7"))
        .unwrap();
    let again = runtime
        .launch_with(
            "orders",
            &json!({ "id": 7, "retried": true }),
            once("order-7"),
        )
        .unwrap();
    assert_eq!(first, again);
    let other = runtime
        .launch_with("orders", &json!({ "id": 8 }), once("order-8"))
        .unwrap();
    assert_ne!(first, other);
    assert!(runtime.wait_for(first, WAIT).unwrap().is_committed());
    assert!(runtime.wait_for(other, WAIT).unwrap().is_committed());
    // After it finished, the key still answers with it.
    assert_eq!(
        runtime
            .launch_with("orders", &json!({ "id": 7 }), once("order-7"))
            .unwrap(),
        first
    );
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        2
    );
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {s}.runs")), 2);
    // Launches without a key are never merged.
    let a = runtime.launch("orders", &json!({ "id": 9 })).unwrap();
    let b = runtime.launch("orders", &json!({ "id": 9 })).unwrap();
    assert_ne!(a, b);
    runtime.shutdown().unwrap();
}

fn a_key_in_a_steps_emission_is_refused<E: Engine>() {
    let db = TestDb::new("keyed_in_step");
    let saga = E::saga("parent")
        .step(|ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
            ctx.launch_with(
                "elsewhere",
                &json!({}),
                EmitOptions::new().idempotency_key("k"),
            )?;
            Ok(())
        })
        .build()
        .unwrap();
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    let failure = outcome.runs()[0].failure.clone().unwrap();
    assert!(
        failure
            .message()
            .contains("already happen exactly once with the step"),
        "{failure}"
    );
    runtime.shutdown().unwrap();
}

both!(
    a_key_launches_once_and_answers_with_the_same_root,
    a_key_in_a_steps_emission_is_refused,
);

#[test]
fn a_key_is_taken_only_when_its_launch_commits() {
    let mut db = TestDb::new("keyed_launch_in");
    let client = db.client();
    let mut conn = client.pool().get().unwrap();
    // Rolled back: the key stays free.
    let mut tx = conn.transaction().unwrap();
    let dropped = client
        .launch_in_with(&mut tx, "orders", &json!({}), once("k"))
        .unwrap();
    tx.rollback().unwrap();
    // Twice in one transaction: one root.
    let mut tx = conn.transaction().unwrap();
    let first = client
        .launch_in_with(&mut tx, "orders", &json!({}), once("k"))
        .unwrap();
    let second = client
        .launch_in_with(&mut tx, "orders", &json!({}), once("k"))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(first, second);
    assert_ne!(first, dropped);
    assert_eq!(
        client.launch_with("orders", &json!({}), once("k")).unwrap(),
        first
    );
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        1
    );
}

#[test]
fn many_threads_launching_the_same_keys_create_one_root_each() {
    let mut db = TestDb::new("keyed_threads");
    let client = structured_cooperation::Client::builder(&db.url)
        .schema(&db.schema)
        .pool_size(8)
        .connect()
        .unwrap();
    let roots: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let client = &client;
                s.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let k = (i + t * 7) % 50;
                            let root = client
                                .launch_with("jobs", &json!({ "k": k }), once(&format!("job-{k}")))
                                .unwrap();
                            format!("{k}:{root}")
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut by_key = std::collections::HashMap::new();
    for entry in roots.into_iter().flatten() {
        let (k, root) = entry.split_once(':').unwrap();
        let first = by_key
            .entry(k.to_owned())
            .or_insert_with(|| root.to_owned());
        assert_eq!(first, root, "key {k}");
    }
    assert_eq!(by_key.len(), 50);
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        50
    );
}

#[test]
fn bad_keys_are_refused_before_anything_is_written() {
    let mut db = TestDb::new("keyed_bad");
    let client = db.client();
    for (key, reason) in [
        ("", "it is empty"),
        ("a\u{0}b", "it contains the character U+0000"),
    ] {
        match client.launch_with("orders", &json!({}), once(key)) {
            Err(Error::InvalidName {
                kind, reason: r, ..
            }) => {
                assert_eq!((kind, r), ("idempotency key", reason));
            }
            other => panic!("{key:?}: {other:?}"),
        }
    }
    let long = "x".repeat(501);
    assert!(
        client
            .launch_with("orders", &json!({}), once(&long))
            .is_err()
    );
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        0
    );
}
