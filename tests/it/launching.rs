//! Launching many roots at once (`launch_many`, issue 13) on both runtimes, and the
//! prepared launch statement a pooled connection keeps.

use serde_json::{Value, json};
use structured_cooperation::{Client, Error, StepContext, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT};

fn counting<E: Engine>(schema: &str) -> structured_cooperation::SagaOf<E::X> {
    let insert = format!("INSERT INTO {schema}.seen (n) VALUES ($1)");
    E::saga("counted")
        .step(
            move |ctx: &mut StepContext<'_, E::X>, payload: &Value| -> StepResult {
                let n = payload["n"].as_i64().unwrap_or(-1);
                E::execute(ctx, &insert, &[&n])?;
                Ok(())
            },
        )
        .build()
        .unwrap()
}

fn many_launches_are_one_root_each_in_order<E: Engine>() {
    let mut db = TestDb::new("launch_many");
    let s = db.schema.clone();
    let runtime = E::runtime(&db)
        .subscribe("counted", counting::<E>(&s))
        .start()
        .unwrap();
    db.exec(&format!("CREATE TABLE {s}.seen (n int8 PRIMARY KEY)"));
    // More than one statement's worth (2,000), so the batch spans several.
    let payloads: Vec<Value> = (0..2_500).map(|n| json!({ "n": n })).collect();
    let roots = runtime.launch_many("counted", &payloads).unwrap();
    assert_eq!(roots.len(), payloads.len());
    let mut distinct = roots.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), roots.len(), "one root per payload");
    // The roots come back in the payloads' order.
    let client = db.client();
    for (i, root) in roots.iter().enumerate().step_by(499) {
        let message = client.message(root.message_id()).unwrap().unwrap();
        assert_eq!(message.payload, payloads[i]);
    }
    for root in roots.iter().step_by(97) {
        assert!(runtime.wait_for(*root, WAIT).unwrap().is_committed());
    }
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.seen")),
        2_500
    );
    assert_eq!(
        runtime.launch_many("counted", &[]).unwrap(),
        Vec::new(),
        "nothing to launch is not an error"
    );
    runtime.shutdown().unwrap();
}

both!(many_launches_are_one_root_each_in_order);

#[test]
fn a_strict_batch_on_a_topic_nobody_handles_writes_nothing() {
    let mut db = TestDb::new("launch_many_strict");
    let client = Client::builder(&db.url)
        .schema(&db.schema)
        .strict_topics(true)
        .connect()
        .unwrap();
    let err = client
        .launch_many("nobody", &[json!({ "n": 1 }), json!({ "n": 2 })])
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unhandled { topic } if topic == "nobody"),
        "{err}"
    );
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        0
    );
}

#[test]
fn launches_in_the_callers_transaction_commit_or_vanish_with_it() {
    let mut db = TestDb::new("launch_many_in");
    let client = db.client();
    client.register_handler("jobs", "job-handler").unwrap();
    let payloads = [json!(1), json!(2), json!(3)];
    let mut conn = client.pool().get().unwrap();
    let mut tx = conn.transaction().unwrap();
    let roots = client.launch_many_in(&mut tx, "jobs", &payloads).unwrap();
    assert_eq!(roots.len(), 3);
    tx.rollback().unwrap();
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        0
    );
    let mut tx = conn.transaction().unwrap();
    client.launch_many_in(&mut tx, "jobs", &payloads).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        3
    );
    assert_eq!(db.query_i64(&format!("SELECT count(*) FROM {s}.runs")), 3);
}

#[test]
fn the_prepared_launch_outlives_a_connection_that_lost_it() {
    let mut db = TestDb::new("launch_prepared");
    let client = db.client();
    client.register_handler("jobs", "job-handler").unwrap();
    for n in 0..5 {
        client.launch("jobs", &json!({ "n": n })).unwrap();
    }
    // Drop every prepared statement behind the pool's back: the next launch on such a
    // connection fails once, forgets the statement, and the one after prepares it again.
    let s = db.schema.clone();
    let mut conn = client.pool().get().unwrap();
    conn.batch_execute("DEALLOCATE ALL").unwrap();
    drop(conn);
    let mut failed = 0;
    for n in 5..10 {
        if client.launch("jobs", &json!({ "n": n })).is_err() {
            failed += 1;
        }
    }
    assert!(
        failed <= 2,
        "at most one failure per pooled connection, got {failed}"
    );
    assert_eq!(
        db.query_i64(&format!("SELECT count(*) FROM {s}.messages")),
        10 - failed
    );
}

/// The tokio client's single launch travels as one simple query, preparing its statement the
/// first time a connection lacks it: on one connection, the first launch prepares and the
/// next ones only execute; each is one root with its run.
#[cfg(feature = "tokio")]
#[test]
fn tokio_launches_prepare_once_per_connection() {
    let mut db = TestDb::new("tokio_launch_once");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let roots = rt.block_on(async {
        let client = structured_cooperation::tokio::Client::builder(&db.url)
            .schema(&db.schema)
            .pool_size(1)
            .connect()
            .await
            .unwrap();
        client.register_handler("once", "once-job").await.unwrap();
        let mut roots = Vec::new();
        for n in 0..3 {
            roots.push(client.launch("once", &json!({ "n": n })).await.unwrap());
        }
        roots
    });
    assert_eq!(roots.len(), 3);
    assert_eq!(
        db.query_i64("SELECT count(DISTINCT root_id) FROM __S__.runs WHERE handler = 'once-job'"),
        3
    );
}

/// A root launched on its own (the lean statement) is written exactly as the general
/// emission statement writes it (a launch inside the caller's transaction): the same message,
/// runs and history, with the context and key, on a handled topic and on one nobody handles.
#[test]
fn a_lone_launch_writes_what_the_general_statement_writes() {
    use structured_cooperation::{CooperationContext, EmitOptions};

    let mut db = TestDb::new("lean_launch");
    let client = db.client();
    client.register_handler("paid", "billing").unwrap();
    client.register_handler("paid", "shipping").unwrap();
    let s = db.schema.clone();
    let mut describe = |root: structured_cooperation::RootId| -> String {
        let sql = format!(
            "SELECT concat_ws(' | ',
                (SELECT string_agg(concat_ws(',', m.root_id = m.id, m.topic, m.payload::text,
                                             m.parent_run_id, m.parent_instance, m.run_count,
                                             m.idempotency_key IS NOT NULL, m.context, m.chain,
                                             m.schedule, m.scheduled_for, m.unhandled), ';')
                 FROM {s}.messages m WHERE m.id = '{root}'),
                (SELECT string_agg(concat_ws(',', r.root_id = r.message_id, r.parent_id,
                                             r.parent_instance, r.handler, r.topic, r.status,
                                             r.step_index, r.instances, r.pending_children,
                                             r.wake_at IS NOT NULL, r.context, r.version,
                                             r.happy_deadline, r.absolute_deadline,
                                             r.deadline_trace), ';' ORDER BY r.handler)
                 FROM {s}.runs r WHERE r.root_id = '{root}'),
                (SELECT string_agg(concat_ws(',', h.message_id = h.root_id, h.run_id, h.event,
                                             h.handler, h.step, h.next_step, h.worker IS NOT NULL),
                                   ';' ORDER BY h.seq)
                 FROM {s}.history h WHERE h.root_id = '{root}'))"
        );
        db.admin().query_one(sql.as_str(), &[]).unwrap().get(0)
    };
    let mut context = CooperationContext::new();
    context.set_raw("tenant", r#""acme""#).unwrap();
    for (topic, n) in [("paid", 1), ("nobody-handles-this", 2)] {
        let options = |k: &str| {
            EmitOptions::new()
                .context(context.clone())
                .idempotency_key(format!("{k}-{n}"))
        };
        let lean = client
            .launch_with(topic, &json!({ "n": n }), options("lean"))
            .unwrap();
        let mut conn = client.pool().get().unwrap();
        let mut tx = conn.transaction().unwrap();
        let general = client
            .launch_in_with(&mut tx, topic, &json!({ "n": n }), options("general"))
            .unwrap();
        tx.commit().unwrap();
        drop(conn);
        let (lean, general) = (describe(lean), describe(general));
        assert_eq!(lean, general);
        assert!(lean.contains("acme"), "{lean}");
    }
    // The same key again is the same root, by either statement.
    let again = client
        .launch_with(
            "paid",
            &json!({ "n": 1 }),
            EmitOptions::new().idempotency_key("lean-1"),
        )
        .unwrap();
    assert_eq!(describe(again).matches("EMITTED").count(), 1);
}
