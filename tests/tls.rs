//! TLS and password authentication (issue 11), against the private cluster `scripts/test`
//! starts (`sc_start_tls_cluster` in scripts/lib/pg.sh): TLS on with a certificate for
//! `localhost` signed by a CA made by the script, scram-sha-256 passwords.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Client, Error, Runtime, Saga, StepContext, StepResult};

const WAIT: Duration = Duration::from_secs(30);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the TLS cluster that scripts/test starts \
             (sc_start_tls_cluster in scripts/lib/pg.sh); run scripts/test"
        )
    })
}

/// A URL for the TLS cluster as `host`, with extra query parameters.
fn url(host: &str, password: &str, params: &str) -> String {
    format!(
        "postgres://{}:{password}@{host}:{}/postgres?{params}",
        env("SC_TLS_USER"),
        env("SC_TLS_PORT")
    )
}

fn good(host: &str, params: &str) -> String {
    url(host, &env("SC_TLS_PASSWORD"), params)
}

fn schema(name: &str) -> String {
    format!("tls_{name}_{}", std::process::id())
}

/// Whether every connection of the test role but `except` is encrypted (seen by a client
/// over `url`), and how many there are.
fn encrypted(client: &Client) -> (bool, i64) {
    let mut conn = client.pool().get().unwrap();
    let row = conn
        .query_one(
            "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid) WHERE a.usename = current_user",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn noop() -> Saga {
    Saga::builder("noop")
        .step(|_: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap()
}

#[test]
fn require_encrypts_every_connection_of_a_runtime() {
    let schema = schema("require");
    let runtime = Runtime::builder(good("127.0.0.1", "sslmode=require"))
        .schema(&schema)
        .workers(2)
        .subscribe("t", noop())
        .start()
        .unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    let (all, count) = encrypted(runtime.client());
    assert!(all, "a connection is not encrypted");
    assert!(count >= 3, "the listener, a worker and this one: {count}");
    runtime.shutdown().unwrap();
}

#[test]
fn verify_full_checks_the_chain_and_the_name() {
    let ca = env("SC_TLS_CA");
    let schema = schema("verify_full");
    let client = Client::builder(good(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .schema(&schema)
    .connect()
    .unwrap();
    assert!(encrypted(&client).0);
    // The certificate is for localhost, not 127.0.0.1: verify-full refuses, at once...
    let started = Instant::now();
    let e = Client::builder(good(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .schema(&schema)
    .connect()
    .unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e:?}");
    assert!(
        e.to_string().contains("certificate not valid for name"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // ...verify-ca does not look at the name...
    Client::builder(good(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .schema(&schema)
    .connect()
    .unwrap();
    // ...but a chain to another CA fails both.
    let other = env("SC_TLS_OTHER_CA");
    let e = Client::builder(good(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    ))
    .schema(&schema)
    .connect()
    .unwrap_err();
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
}

#[test]
fn a_wrong_password_fails_at_once_with_the_servers_reason() {
    let started = Instant::now();
    let e = Client::builder(url("127.0.0.1", "not-the-password", "sslmode=require"))
        .connect_timeout(Duration::from_secs(60))
        .connect()
        .unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("password authentication failed for user \"sc_tls\""),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn disable_connects_without_tls() {
    let client = Client::builder(good("127.0.0.1", "sslmode=disable"))
        .schema(schema("disable"))
        .pool_size(1)
        .connect()
        .unwrap();
    let mut conn = client.pool().get().unwrap();
    let ssl: bool = conn
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!ssl);
}

#[test]
fn the_tokio_runtime_uses_tls_too() {
    let ca = env("SC_TLS_CA");
    let schema = schema("tokio");
    let url = good(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let saga = structured_cooperation::tokio::Saga::builder("noop")
            .step(|_, _: &Value| Box::pin(async { StepResult::Ok(()) }))
            .build()
            .unwrap();
        let runtime = structured_cooperation::tokio::Runtime::builder(&url)
            .schema(&schema)
            .workers(2)
            .subscribe("t", saga)
            .start()
            .await
            .unwrap();
        let root = runtime.launch("t", &json!({})).await.unwrap();
        assert!(runtime.wait_for(root, WAIT).await.unwrap().is_committed());
        let conn = runtime.client().pool().get().await.unwrap();
        // This runtime's listener only: the other tests run theirs at the same time.
        let row = conn
            .query_one(
                "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s
                 JOIN pg_stat_activity a USING (pid) WHERE a.usename = current_user
                 AND a.application_name = 'sc-listener:' || $1",
                &[&schema],
            )
            .await
            .unwrap();
        let (all, listeners): (Option<bool>, i64) = (row.get(0), row.get(1));
        assert_eq!(listeners, 1, "the listener's connection");
        assert_eq!(all, Some(true), "the listener is not encrypted");
        runtime.shutdown().await.unwrap();
    });
}
