//! Test fixtures: a schema per test on a real PostgreSQL, and helpers over the history.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use std::time::Duration;

use structured_cooperation::{Client, HistoryEvent, RootId, Runtime, RuntimeBuilder};

use crate::engine::Served;

/// Generous bound for conditions that normally hold within milliseconds.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A schema of its own on the test database, dropped when the test passes.
pub struct TestDb {
    pub url: String,
    pub schema: String,
    admin: postgres::Client,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    pub fn new(name: &str) -> TestDb {
        init_logging();
        let url = database_url();
        let admin = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at DATABASE_URL={url:?} and could not connect: {e}\n\
                 run scripts/test, which finds or starts one, or set DATABASE_URL"
            )
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("_{}_{n}", std::process::id());
        let mut stem: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        stem.truncate(48 - 2 - suffix.len());
        let schema = format!("t_{stem}{suffix}");
        let mut db = TestDb { url, schema, admin };
        db.exec(&format!("DROP SCHEMA IF EXISTS {} CASCADE", db.schema));
        db
    }

    /// A runtime builder on this schema.
    pub fn runtime(&self) -> RuntimeBuilder {
        Runtime::builder(&self.url)
            .schema(&self.schema)
            .connect_timeout(Duration::from_secs(5))
    }

    /// A bare client on this schema.
    pub fn client(&self) -> Client {
        Client::builder(&self.url)
            .schema(&self.schema)
            .pool_size(2)
            .connect()
            .unwrap()
    }

    pub fn exec(&mut self, sql: &str) {
        self.admin
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub fn query_i64(&mut self, sql: &str) -> i64 {
        let sql = sql.replace("__S__", &self.schema);
        self.admin
            .query_one(sql.as_str(), &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub fn admin(&mut self) -> &mut postgres::Client {
        &mut self.admin
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping schema {} for inspection", self.schema);
        } else {
            let _ = self
                .admin
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// The history of a root as `KIND(step)@handler` strings.
pub fn trace(history: &[HistoryEvent]) -> Vec<String> {
    history.iter().map(ToString::to_string).collect()
}

/// Keeps events written by the given handlers or by nobody (launches), like the reference's
/// `keepOnlyHandlers`.
pub fn project(history: &[HistoryEvent], handlers: &[&str]) -> Vec<String> {
    history
        .iter()
        .filter(|e| e.handler.as_deref().is_none_or(|h| handlers.contains(&h)))
        .map(ToString::to_string)
        .collect()
}

pub fn history_of(runtime: &impl Served, root: RootId) -> Vec<String> {
    trace(&runtime.history(root).unwrap())
}

/// A shared, ordered log of step executions.
#[derive(Clone, Default)]
pub struct ExecLog(Arc<Mutex<Vec<String>>>);

impl ExecLog {
    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    /// Keeps entries starting with any of the prefixes.
    pub fn only(&self, prefixes: &[&str]) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter(|e| prefixes.iter().any(|p| e.starts_with(p)))
            .collect()
    }
}

/// A gate that steps can block on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    open: bool,
    waiting: usize,
}

impl Gate {
    /// Blocks until the gate is opened (or `WAIT` passes, which fails the test).
    pub fn pass(&self) {
        let (lock, cond) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.waiting += 1;
        cond.notify_all();
        let (state, timeout) = cond.wait_timeout_while(state, WAIT, |s| !s.open).unwrap();
        assert!(!timeout.timed_out(), "gate was never opened");
        drop(state);
    }

    /// Waits until `n` callers are blocked at the gate.
    pub fn wait_for_waiting(&self, n: usize) {
        let (lock, cond) = &*self.0;
        let state = lock.lock().unwrap();
        let (_state, timeout) = cond
            .wait_timeout_while(state, WAIT, |s| s.waiting < n)
            .unwrap();
        assert!(!timeout.timed_out(), "nobody reached the gate");
    }

    pub fn open(&self) {
        let (lock, cond) = &*self.0;
        lock.lock().unwrap().open = true;
        cond.notify_all();
    }
}

/// Polls `condition` until it holds, failing the test after `WAIT`.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the root's history contains `event` (as `KIND(step)@handler`).
pub fn wait_for_event(runtime: &impl Served, root: RootId, event: &str) {
    eventually(event, || {
        history_of(runtime, root).iter().any(|e| e == event)
    });
}
