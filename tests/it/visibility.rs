//! Safe defaults (issue 11): emissions and launches on topics nobody handles are visible (or
//! refused when strict), unknown and malformed ids are errors, and migrations can be left to a
//! deploy step.

use serde_json::{Value, json};
use structured_cooperation::{
    Client, EmitOptions, Error, EventKind, RootId, RunStatus, Runtime, StepContext, StepResult,
};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT, eventually, trace};

/// A root id nobody launched.
const NOBODY: &str = "00000000-0000-7000-8000-00000000abcd";

/// A booking saga whose first step emits to `hotels` (handled) and `cards` (never deployed).
fn booking<E: Engine>(card_options: EmitOptions) -> structured_cooperation::SagaOf<E::X> {
    E::saga("booking")
        .step_named(
            "reserve",
            move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                ctx.emit("hotels", &json!({ "nights": 2 }))?;
                ctx.emit_with("cards", &json!({ "amount": 300 }), card_options.clone())?;
                Ok(())
            },
        )
        .step_named(
            "confirm",
            |_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) },
        )
        .build()
        .unwrap()
}

fn hotel<E: Engine>() -> structured_cooperation::SagaOf<E::X> {
    E::saga("hotel")
        .step(|_: &mut StepContext<'_, E::X>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap()
}

fn messages_on(db: &mut TestDb, topic: &str) -> i64 {
    let s = db.schema.clone();
    db.query_i64(&format!(
        "SELECT count(*) FROM {s}.messages WHERE topic = '{topic}'"
    ))
}

fn an_emission_nobody_handles_is_marked_logged_and_counted<E: Engine>() {
    let mut db = TestDb::new("unhandled_marked");
    let runtime = E::runtime(&db)
        .subscribe("bookings", booking::<E>(EmitOptions::new()))
        .subscribe("hotels", hotel::<E>())
        .start()
        .unwrap();
    let root = runtime.launch("bookings", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    // The rule stands: nobody listens, so nothing is waited for...
    assert!(outcome.is_committed(), "{outcome:?}");
    // ...but it shows: in the history, right after the emission, and in the counters.
    let history = runtime.history(root).unwrap();
    let at = history
        .iter()
        .position(|e| e.kind == EventKind::Unhandled)
        .unwrap_or_else(|| panic!("no UNHANDLED entry: {:?}", trace(&history)));
    let marker = &history[at];
    assert_eq!(history[at - 1].kind, EventKind::Emitted);
    assert_eq!(history[at - 1].message_id, marker.message_id);
    assert_eq!(marker.handler.as_deref(), Some("booking"));
    assert_eq!(marker.step.as_deref(), Some("reserve"));
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == EventKind::Unhandled)
            .count(),
        1,
        "{:?}",
        trace(&history)
    );
    // Counted when the attempt that did it is over, which may be just after the
    // tree is seen finished.
    eventually("the unhandled to be counted", || {
        runtime.stats().unhandled >= 1
    });
    assert_eq!(runtime.stats().unhandled, 1);
    assert_eq!(messages_on(&mut db, "cards"), 1);
    runtime.shutdown().unwrap();
}

both!(an_emission_nobody_handles_is_marked_logged_and_counted);

fn a_strict_runtime_fails_the_step_and_keeps_nothing_of_it<E: Engine>() {
    let mut db = TestDb::new("unhandled_strict");
    let runtime = E::runtime(&db)
        .strict_topics()
        .subscribe("bookings", booking::<E>(EmitOptions::new()))
        .subscribe("hotels", hotel::<E>())
        .start()
        .unwrap();
    let root = runtime.launch("bookings", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    let run = &outcome.runs()[0];
    assert_eq!(run.status, RunStatus::RolledBack, "{outcome:?}");
    let failure = run.failure.as_ref().expect("a failure");
    assert_eq!(failure.kind(), "structured_cooperation::UnhandledTopic");
    assert!(failure.message().contains("\"cards\""), "{failure:?}");
    assert_eq!(failure.step(), Some("reserve"));
    // Neither message of the failed step was written.
    assert_eq!(messages_on(&mut db, "cards"), 0);
    assert_eq!(messages_on(&mut db, "hotels"), 0);
    assert_eq!(runtime.stats().unhandled, 0);
    // A launch through the strict runtime is refused too, writing nothing.
    match runtime.launch("cards", &json!({})) {
        Err(Error::Unhandled { topic }) => assert_eq!(topic, "cards"),
        other => panic!("expected Error::Unhandled, got {other:?}"),
    }
    assert_eq!(messages_on(&mut db, "cards"), 0);
    runtime.shutdown().unwrap();
}

both!(a_strict_runtime_fails_the_step_and_keeps_nothing_of_it);

#[test]
fn one_emission_can_be_stricter_or_laxer_than_its_runtime() {
    let db = TestDb::new("unhandled_per_emission");
    let strict_one = Runtime::builder(&db.url)
        .schema(&db.schema)
        .subscribe(
            "bookings",
            booking::<crate::engine::OnBlocking>(EmitOptions::new().strict(true)),
        )
        .subscribe("hotels", hotel::<crate::engine::OnBlocking>())
        .start()
        .unwrap();
    let root = strict_one.launch("bookings", &json!({})).unwrap();
    let outcome = strict_one.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::RolledBack);
    strict_one.shutdown().unwrap();

    let db = TestDb::new("unhandled_per_emission_lax");
    let lax_one = Runtime::builder(&db.url)
        .schema(&db.schema)
        .strict_topics(true)
        .subscribe(
            "bookings",
            booking::<crate::engine::OnBlocking>(EmitOptions::new().strict(false)),
        )
        .subscribe("hotels", hotel::<crate::engine::OnBlocking>())
        .start()
        .unwrap();
    let root = lax_one.launch("bookings", &json!({})).unwrap();
    assert!(lax_one.wait_for(root, WAIT).unwrap().is_committed());
    assert_eq!(lax_one.stats().unhandled, 1);
    lax_one.shutdown().unwrap();
}

#[test]
fn a_launch_nobody_handles_is_never_committed_and_strict_clients_refuse_it() {
    let mut db = TestDb::new("unhandled_launch");
    let client = db.client();
    let root = client.launch("cards", &json!({ "amount": 1 })).unwrap();
    let outcome = client.wait_for(root, WAIT).unwrap();
    assert!(outcome.is_unhandled());
    assert!(outcome.is_finished());
    assert!(
        !outcome.is_committed(),
        "a tree with no runs never committed"
    );
    let history = client.history(root).unwrap();
    assert_eq!(
        history.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Emitted, EventKind::Unhandled]
    );
    assert!(client.tree(root).unwrap().is_empty());
    // Strict per launch, and strict for the whole client: refused, nothing written.
    let refused = client.launch_with("cards", &json!({}), EmitOptions::new().strict(true));
    assert!(
        matches!(refused, Err(Error::Unhandled { .. })),
        "{refused:?}"
    );
    let strict = Client::builder(&db.url)
        .schema(&db.schema)
        .strict_topics(true)
        .connect()
        .unwrap();
    let refused = strict.launch("cards", &json!({})).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("no handler is registered for topic \"cards\""),
        "{refused}"
    );
    assert_eq!(messages_on(&mut db, "cards"), 1);
    // Once a handler is declared (ahead of its deployment), strict launches go through and
    // wait for it.
    strict.register_handler("cards", "card-service").unwrap();
    let root = strict.launch("cards", &json!({})).unwrap();
    assert!(!strict.outcome(root).unwrap().is_finished());
}

#[test]
fn unknown_and_malformed_ids_are_errors() {
    let db = TestDb::new("unknown_ids");
    let client = db.client();
    let nobody: RootId = NOBODY.parse().unwrap();
    let not_found = |r: structured_cooperation::Result<()>| match r {
        Err(e @ Error::NotFound { .. }) => {
            assert_eq!(e.to_string(), format!("root {NOBODY} does not exist"));
        }
        other => panic!("expected Error::NotFound, got {other:?}"),
    };
    not_found(client.outcome(nobody).map(drop));
    not_found(client.tree(nobody).map(drop));
    not_found(client.history(nobody).map(drop));
    not_found(client.wait_for(nobody, WAIT).map(drop));
    let e = "order-7".parse::<RootId>().unwrap_err();
    assert!(matches!(e, Error::InvalidId { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("\"order-7\" is not a valid root id"),
        "{e}"
    );
    // Surrounding whitespace (a pasted id) is fine.
    assert_eq!(format!(" {NOBODY}\n").parse::<RootId>().unwrap(), nobody);

    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = structured_cooperation::tokio::Client::builder(&db.url)
                .schema(&db.schema)
                .connect()
                .await
                .unwrap();
            not_found(client.outcome(nobody).await.map(drop));
            not_found(client.tree(nobody).await.map(drop));
            not_found(client.history(nobody).await.map(drop));
            not_found(client.wait_for(nobody, WAIT).await.map(drop));
        });
    }
}

#[test]
fn migrations_can_be_left_to_a_deploy_step() {
    let mut db = TestDb::new("deploy_migrates");
    // A runtime told not to migrate refuses a schema that was never migrated.
    let refused = db.runtime().migrate(false).start().unwrap_err();
    assert!(
        matches!(refused, Error::SchemaOutdated { found: 0, .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("Client::migrate"), "{refused}");
    // A client told not to migrate touches nothing, and can say what would run.
    let client = Client::builder(&db.url)
        .schema(&db.schema)
        .migrate(false)
        .connect()
        .unwrap();
    let sql = client.pending_migrations_sql().unwrap();
    assert!(sql.starts_with("-- structured-cooperation"), "{sql}");
    assert!(sql.contains("CREATE TABLE messages"));
    assert!(sql.trim_end().ends_with("COMMIT;"));
    let s = db.schema.clone();
    assert_eq!(
        db.query_i64(&format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = '{s}'"
        )),
        0,
        "nothing was created yet"
    );
    // The team's own tool applies the script; then the runtime starts without migrating.
    db.exec(&sql);
    assert_eq!(client.pending_migrations_sql().unwrap(), "");
    assert_eq!(client.migrate().unwrap(), Vec::<i32>::new());
    let runtime = db
        .runtime()
        .migrate(false)
        .subscribe("hotels", hotel::<crate::engine::OnBlocking>())
        .start()
        .unwrap();
    let root = runtime.launch("hotels", &json!({})).unwrap();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    runtime.shutdown().unwrap();
}

#[test]
fn migrate_is_public_and_idempotent() {
    let db = TestDb::new("migrate_public");
    let client = Client::builder(&db.url)
        .schema(&db.schema)
        .migrate(false)
        .connect()
        .unwrap();
    let applied = client.migrate().unwrap();
    assert!(!applied.is_empty());
    assert_eq!(applied[0], 1);
    assert_eq!(client.migrate().unwrap(), Vec::<i32>::new());
}
