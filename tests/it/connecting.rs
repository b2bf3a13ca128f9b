//! Connecting (issue 11): permanent connection failures fail at once with PostgreSQL's own
//! reason, pool errors keep it, and a runtime never asks for more connections than the
//! server (or the role) allows. TLS and wrong passwords need a server with TLS and password
//! authentication: `tests/tls.rs`, run by `scripts/test` against a private cluster.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Client, Error, Runtime, Saga, StepContext, StepResult};

use crate::util::{Gate, TestDb, WAIT, database_url, eventually};

/// `url` with its user and database replaced (a `postgres://user@host:port/db` URL).
fn with(url: &str, user: &str, database: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let host = host.split_once('/').map_or(host, |(h, _)| h);
    format!("postgres://{user}@{host}/{database}")
}

fn database() -> String {
    let url = database_url();
    url.rsplit_once('/')
        .map(|(_, db)| db.split('?').next().unwrap_or(db).to_owned())
        .unwrap_or_else(|| "postgres".to_owned())
}

/// Connecting with the blocking client, a blocking runtime and the tokio client: each must
/// fail within a couple of seconds (the connect timeout is a minute) saying `reason`.
fn fails_fast(url: &str, reason: &str) {
    let timeout = Duration::from_secs(60);
    let check = |what: &str, started: Instant, e: Error| {
        let text = e.to_string();
        assert!(matches!(e, Error::Connect(_)), "{what}: {e:?}");
        assert!(
            text.contains(reason),
            "{what}: {text:?} does not say {reason:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what} took {:?}",
            started.elapsed()
        );
    };
    let started = Instant::now();
    let e = Client::builder(url)
        .connect_timeout(timeout)
        .connect()
        .unwrap_err();
    check("client", started, e);
    let started = Instant::now();
    let e = Runtime::builder(url)
        .connect_timeout(timeout)
        .start()
        .unwrap_err();
    check("runtime", started, e);
    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let e = rt
            .block_on(
                structured_cooperation::tokio::Client::builder(url)
                    .connect_timeout(timeout)
                    .connect(),
            )
            .unwrap_err();
        check("tokio client", started, e);
    }
}

#[test]
fn an_unknown_role_database_or_port_fails_at_once_with_the_servers_reason() {
    let url = database_url();
    fails_fast(
        &with(&url, "sc_nobody_at_all", &database()),
        "role \"sc_nobody_at_all\" does not exist",
    );
    fails_fast(
        &with(&url, "postgres", "sc_no_such_database"),
        "database \"sc_no_such_database\" does not exist",
    );
    // Port 1: nothing listens there.
    fails_fast("postgres://postgres@127.0.0.1:1/postgres", "refused");
}

#[test]
fn more_workers_than_the_server_allows_is_refused_at_start() {
    let db = TestDb::new("too_many_workers");
    let started = Instant::now();
    let e = db.runtime().workers(5000).start().unwrap_err();
    let text = e.to_string();
    assert!(text.contains("keeps 5002 connections"), "{text}");
    assert!(text.contains("max_connections"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A role allowed `limit` connections, with a schema of its own; dropped at the end.
struct LimitedRole {
    db: TestDb,
    role: String,
}

impl LimitedRole {
    fn new(name: &str, limit: u32) -> LimitedRole {
        // Roles and grants are cluster-wide: concurrent changes conflict.
        static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = SETUP.lock().unwrap_or_else(|p| p.into_inner());
        let mut db = TestDb::new(name);
        // Named after the schema, which is unique per test and process.
        let role = db.schema.replacen("t_", "sc_", 1);
        let schema = db.schema.clone();
        let database = database();
        db.exec(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN CONNECTION LIMIT {limit}; \
             GRANT CREATE ON DATABASE {database} TO {role}; \
             CREATE SCHEMA {schema} AUTHORIZATION {role}"
        ));
        LimitedRole { db, role }
    }

    fn url(&self) -> String {
        with(&database_url(), &self.role, &database())
    }
}

impl Drop for LimitedRole {
    fn drop(&mut self) {
        let (role, schema) = (self.role.clone(), self.db.schema.clone());
        let database = database();
        let _ = self.db.admin().batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'; \
             DROP SCHEMA IF EXISTS {schema} CASCADE; \
             REVOKE CREATE ON DATABASE {database} FROM {role}; DROP ROLE IF EXISTS {role}"
        ));
    }
}

fn noop() -> Saga {
    Saga::builder("noop")
        .step(|_: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap()
}

#[test]
fn a_roles_connection_limit_is_checked_and_pool_errors_keep_the_reason() {
    let limited = LimitedRole::new("role_limit", 3);
    let url = limited.url();
    let schema = limited.db.schema.clone();
    let e = Runtime::builder(&url)
        .schema(&schema)
        .workers(2)
        .start()
        .unwrap_err();
    assert!(
        e.to_string().contains("the role's CONNECTION LIMIT is 3"),
        "{e}"
    );
    // One worker, the listener and one for launches fit.
    let runtime = Runtime::builder(&url)
        .schema(&schema)
        .workers(1)
        .subscribe("t", noop())
        .start()
        .unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    runtime.shutdown().unwrap();

    // A pool that cannot open a connection says why, in PostgreSQL's words.
    let client = Client::builder(&url)
        .schema(&schema)
        .pool_size(4)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .unwrap();
    // Take what the role has left (the runtime's last connections may still be closing).
    let mut held = Vec::new();
    while let Ok(conn) = client.pool().get() {
        held.push(conn);
        assert!(held.len() <= 3, "the role's limit is not enforced");
    }
    let e = client.launch("t", &json!({})).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Pool(_)), "{e:?}");
    assert!(
        text.contains("too many connections for role"),
        "the reason is lost: {text}"
    );
    drop(held);
}

/// Terminates every connection of `role` and waits until their backends have exited (so
/// the server has closed their sockets).
fn kill_connections(db: &mut TestDb, role: &str) {
    let killed = db.query_i64(&format!(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE usename = '{role}'"
    ));
    assert!(killed > 0, "the client had no connection to kill");
    eventually("the killed backends to exit", || {
        db.query_i64(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"
        )) == 0
    });
}

#[test]
fn a_pooled_connection_the_server_closed_is_replaced_before_use() {
    // The library tests a pooled connection only when it has not taken it in the last 5 ms;
    // the application's own checkouts are always tested. Either way a connection the server
    // closed while it sat in the pool (a restart, a terminated backend) is replaced, not used.
    let mut limited = LimitedRole::new("closed_in_pool", 10);
    let (url, role) = (limited.url(), limited.role.clone());
    let client = Client::builder(&url)
        .schema(&limited.db.schema)
        .pool_size(2)
        .connect()
        .unwrap();
    client.register_handler("t", "h").unwrap();
    client.launch("t", &json!({})).unwrap();
    let used = Instant::now();
    kill_connections(&mut limited.db, &role);
    // A connection unused for longer than the trusted window is tested before the launch
    // gets it.
    eventually(
        "the connection to sit unused past the trusted window",
        || used.elapsed() > Duration::from_millis(50),
    );
    client.launch("t", &json!({})).unwrap();

    // The application's checkout right after the kill: tested however recently it was used.
    kill_connections(&mut limited.db, &role);
    let mut conn = client.pool().get().unwrap();
    let one: i32 = conn.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    drop(conn);
    client.launch("t", &json!({})).unwrap();
}

#[test]
fn a_worker_without_a_connection_does_not_hold_its_handler_up() {
    // Four connections for the role, as many as the runtime keeps (two workers, the
    // listener, one for launches); others hold two of them, so once the listener and the
    // pool's first connection are up, one worker can never connect. Launches come from
    // another role's client.
    let limited = LimitedRole::new("worker_without_conn", 4);
    let url = limited.url();
    let schema = limited.db.schema.clone();
    let squatters: Vec<_> = (0..2)
        .map(|_| postgres::Client::connect(&url, postgres::NoTls).unwrap())
        .collect();
    // The first run is held at a gate, so its worker (the one with a connection) stays busy
    // and the handler's next claim must go to the worker that cannot connect; without it,
    // the connected worker could drain every run before the other is ever asked.
    let gate = Gate::default();
    let held = gate.clone();
    let saga = Saga::builder("held-first")
        .step(
            move |_: &mut StepContext<'_>, payload: &Value| -> StepResult {
                if payload["i"] == 0 {
                    held.pass();
                }
                Ok(())
            },
        )
        .build()
        .unwrap();
    let runtime = Runtime::builder(&url)
        .schema(&schema)
        .workers(2)
        .connect_timeout(Duration::from_secs(60))
        .subscribe("t", saga)
        .start()
        .unwrap();
    let launcher = limited.db.client();
    let started = Instant::now();
    let first = launcher.launch("t", &json!({ "i": 0 })).unwrap();
    gate.wait_for_waiting(1);
    let mut roots: Vec<_> = (1..20)
        .map(|i| launcher.launch("t", &json!({ "i": i })).unwrap())
        .collect();
    eventually("a worker to fail to connect", || {
        runtime.stats().infra_errors > 0
    });
    gate.open();
    roots.push(first);
    for root in roots {
        assert!(launcher.wait_for(root, WAIT).unwrap().is_committed());
    }
    // Were the handler held for the connect timeout by the worker that cannot connect, this
    // would take a minute per attempt.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    drop(squatters);
    runtime.shutdown().unwrap();
}

#[test]
fn too_many_clients_is_waited_out_until_the_connect_timeout() {
    // The role may hold two connections; both are taken. "Too many connections" is
    // transient: connecting waits for one to free up (here after 300 ms), and fails with the
    // server's reason only when the connect timeout passes.
    let limited = LimitedRole::new("transient_connect", 2);
    let url = limited.url();
    let schema = limited.db.schema.clone();
    let squatters: Vec<_> = (0..2)
        .map(|_| postgres::Client::connect(&url, postgres::NoTls).unwrap())
        .collect();
    let started = Instant::now();
    let e = Client::builder(&url)
        .schema(&schema)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        e.to_string().contains("too many connections for role"),
        "{e}"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "gave up after {waited:?}"
    );
    let freed = std::thread::spawn(move || {
        // The scenario: a connection frees up while the client is retrying.
        std::thread::sleep(Duration::from_millis(300));
        drop(squatters);
    });
    Client::builder(&url)
        .schema(&schema)
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .unwrap();
    freed.join().unwrap();
}
