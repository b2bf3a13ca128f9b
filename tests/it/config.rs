//! Bad configuration gives a clear error, promptly.

use std::time::{Duration, Instant};

use serde_json::Value;
use structured_cooperation::{Client, Error, Runtime, Saga, StepResult};

use crate::util::{TestDb, database_url};

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
