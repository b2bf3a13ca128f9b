//! Bad configuration gives a clear error, promptly.

use std::time::{Duration, Instant};

use serde_json::Value;
use structured_cooperation::{Client, Error, Runtime, Saga, StepResult};

use crate::util::{TestDb, WAIT, database_url};

fn saga() -> Saga {
    Saga::builder("h")
        .step(|_ctx, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap()
}

#[test]
fn an_invalid_schema_name_is_rejected_before_connecting() {
    for bad in ["Scoop", "drop table", "a;b", "1x", ""] {
        let err = Runtime::builder(database_url())
            .schema(bad)
            .subscribe("t", saga())
            .start()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { kind: "schema", .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("invalid schema name"), "{err}");
        let err = Client::builder(database_url())
            .schema(bad)
            .connect()
            .unwrap_err();
        assert!(err.to_string().starts_with("invalid schema name"), "{err}");
    }
}

#[test]
fn an_unreachable_database_fails_within_the_connect_timeout() {
    let start = Instant::now();
    let err = Runtime::builder("postgres://postgres@127.0.0.1:1/postgres")
        .connect_timeout(Duration::from_secs(1))
        .subscribe("t", saga())
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("could not connect to postgres"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn an_invalid_url_is_a_configuration_error() {
    let err = Runtime::builder("postgres://[::1")
        .subscribe("t", saga())
        .start()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid configuration: invalid database url"),
        "{err}"
    );
}

#[test]
fn nonsensical_settings_are_rejected() {
    let err = Runtime::builder(database_url())
        .workers(0)
        .start()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: workers must be >= 1"
    );
    let err = Runtime::builder(database_url())
        .subscribe("a", saga())
        .subscribe("b", saga())
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("subscribed twice"), "{err}");
    let err = Runtime::builder(database_url())
        .subscribe("", saga())
        .start()
        .unwrap_err();
    assert!(err.to_string().starts_with("invalid topic name"), "{err}");
    let err = Runtime::builder(database_url())
        .retry_backoff(Duration::from_secs(2), Duration::from_secs(1))
        .start()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: retry backoff needs 0 < base <= max"
    );
}

#[test]
fn a_schema_migrated_by_a_newer_version_is_refused() {
    let mut db = TestDb::new("too_new");
    drop(db.client());
    db.exec(&format!(
        "INSERT INTO {}.schema_migrations (version, name) VALUES (999, 'future')",
        db.schema
    ));
    let err = Client::builder(&db.url)
        .schema(&db.schema)
        .connect()
        .unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
}

#[test]
fn concurrent_first_starts_migrate_once() {
    let mut db = TestDb::new("concurrent_migrate");
    let (url, schema) = (db.url.clone(), db.schema.clone());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, schema) = (url.clone(), schema.clone());
            std::thread::spawn(move || {
                Client::builder(url)
                    .schema(schema)
                    .pool_size(1)
                    .connect()
                    .map(drop)
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    // One row per migration the library ships, each applied once.
    assert_eq!(
        db.query_i64("SELECT count(*) FROM __S__.schema_migrations"),
        db.query_i64("SELECT count(DISTINCT version) FROM __S__.schema_migrations")
    );
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
        })
        .count();
    assert_eq!(
        db.query_i64("SELECT max(version)::int8 FROM __S__.schema_migrations"),
        shipped as i64
    );
}

#[test]
fn run_ids_are_time_ordered_uuid_v7() {
    let mut db = TestDb::new("uuid_v7");
    drop(db.client());
    let sql = format!(
        "SELECT {}.uuid_v7()::text FROM generate_series(1, 50)",
        db.schema
    );
    let ids: Vec<uuid::Uuid> = db
        .admin()
        .query(sql.as_str(), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0).parse().unwrap())
        .collect();
    assert!(ids.iter().all(|id| id.get_version_num() == 7), "{ids:?}");
    assert!(
        ids.iter()
            .all(|id| id.get_variant() == uuid::Variant::RFC4122)
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (secs, nanos) = ids[0].get_timestamp().unwrap().to_unix();
    let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
    assert!(
        now_ms.abs_diff(ms) < 60_000,
        "timestamp {ms} vs now {now_ms}"
    );
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted.len(), ids.len());
}

/// Migration 11 on a schema that already holds runs and history: it puts the schema back as
/// migration 10 left it (text columns with CHECK constraints, no domains), with the engine's
/// rows in it, then migrates again. The rows stay, the engine goes on, and what the CHECK
/// constraints refused the domains refuse.
#[test]
fn checks_become_domains_on_a_populated_schema() {
    let mut db = TestDb::new("checks_to_domains");
    let s = db.schema.clone();
    let runtime = db.runtime().subscribe("t", saga()).start().unwrap();
    let done = runtime.launch("t", &serde_json::json!({})).unwrap();
    assert!(runtime.wait_for(done, WAIT).unwrap().is_committed());
    runtime.shutdown().unwrap();
    db.exec(&format!(
        "SET search_path TO {s};
         ALTER TABLE runs ALTER COLUMN status TYPE text, ALTER COLUMN pending_children TYPE integer,
             ADD CONSTRAINT runs_status_check CHECK (status IN ('active', 'rolling_back',
                 'committed', 'rolled_back', 'rollback_failed')),
             ADD CONSTRAINT runs_pending_children_check CHECK (pending_children >= 0);
         ALTER TABLE history ALTER COLUMN event TYPE text,
             ADD CONSTRAINT history_event_check CHECK (event IN ('EMITTED', 'SEEN', 'SUSPENDED',
                 'COMMITTED', 'ROLLING_BACK', 'ROLLBACK_EMITTED', 'ROLLED_BACK', 'ROLLBACK_FAILED',
                 'CANCELLATION_REQUESTED', 'RETRYING', 'UNHANDLED', 'MIGRATED'));
         ALTER TABLE step_instances ALTER COLUMN kind TYPE text,
             ADD CONSTRAINT step_instances_kind_check
                 CHECK (kind IN ('step', 'child_failures', 'compensation'));
         DROP DOMAIN run_status; DROP DOMAIN child_count; DROP DOMAIN history_event;
         DROP DOMAIN instance_kind;
         DELETE FROM schema_migrations WHERE version = 11;
         RESET search_path;"
    ));
    let client = db.client();
    assert_eq!(
        client.migrate().unwrap(),
        Vec::<i32>::new(),
        "migrated at connect"
    );
    assert_eq!(
        db.query_i64(&format!(
            "SELECT count(*) FROM {s}.schema_migrations WHERE version = 11"
        )),
        1
    );
    assert_eq!(
        db.query_i64(&format!(
            "SELECT count(*) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = '{s}' AND c.contype = 'c' \
               AND t.relname IN ('runs', 'history', 'step_instances')"
        )),
        0,
        "no CHECK constraint is left on the tables every step writes"
    );
    // The rows from before are there, and the engine goes on.
    assert!(client.wait_for(done, WAIT).unwrap().is_committed());
    let runtime = db.runtime().subscribe("t", saga()).start().unwrap();
    let after = runtime.launch("t", &serde_json::json!({})).unwrap();
    assert!(runtime.wait_for(after, WAIT).unwrap().is_committed());
    runtime.shutdown().unwrap();
    // What the CHECK constraints refused is refused still.
    let admin = db.admin();
    for bad in [
        format!("UPDATE {s}.runs SET status = 'lost'"),
        format!("UPDATE {s}.runs SET pending_children = -1"),
        format!("UPDATE {s}.history SET event = 'LOST'"),
        format!("UPDATE {s}.step_instances SET kind = 'lost'"),
    ] {
        let e = admin.batch_execute(&bad).unwrap_err();
        let reason = e.as_db_error().map(|d| d.message().to_owned());
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("violates check constraint")),
            "{bad}: {e:?}"
        );
    }
}
