//! Logs worth reading (issue 11): what a runtime writes through `log`, captured by a logger
//! of this test binary's own: steps at debug with structured ids, failures at warn with the
//! cross-service trace, retries at warn, startup at info.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use log::kv::{Key, Value as KvValue, VisitSource};
use serde_json::{Value, json};
use structured_cooperation::{Runtime, Saga, StepContext, StepError, StepResult};

#[derive(Clone, Debug)]
struct Entry {
    level: log::Level,
    target: String,
    message: String,
    kv: BTreeMap<String, String>,
}

static ENTRIES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("structured_cooperation")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        struct Collect(BTreeMap<String, String>);
        impl<'kvs> VisitSource<'kvs> for Collect {
            fn visit_pair(
                &mut self,
                key: Key<'kvs>,
                value: KvValue<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.insert(key.to_string(), value.to_string());
                Ok(())
            }
        }
        let mut kv = Collect(BTreeMap::new());
        let _ = record.key_values().visit(&mut kv);
        ENTRIES.lock().unwrap().push(Entry {
            level: record.level(),
            target: record.target().to_owned(),
            message: record.args().to_string(),
            kv: kv.0,
        });
    }

    fn flush(&self) {}
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[test]
fn steps_failures_retries_and_startup_are_logged_with_their_ids() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let schema = format!("t_logs_{}", std::process::id());
    let mut admin = postgres::Client::connect(&database_url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("these tests need PostgreSQL (run scripts/test): {e}"));
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let flaky = std::sync::atomic::AtomicBool::new(true);
    let parent = Saga::builder("booking")
        .step_named(
            "reserve",
            |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.emit("cards", &json!({}))?;
                Ok(())
            },
        )
        .build()
        .unwrap();
    let card = Saga::builder("card")
        .step_named(
            "charge",
            move |_: &mut StepContext<'_>, _: &Value| -> StepResult {
                if flaky.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    return Err(StepError::transient(StepError::msg("gateway timeout")));
                }
                Err(StepError::msg("card declined"))
            },
        )
        .build()
        .unwrap();
    let runtime = Runtime::builder(database_url())
        .schema(&schema)
        .workers(2)
        .subscribe("bookings", parent)
        .subscribe("cards", card)
        .start()
        .unwrap();
    let root = runtime.launch("bookings", &json!({})).unwrap();
    let outcome = runtime.wait_for(root, Duration::from_secs(30)).unwrap();
    assert!(!outcome.is_committed());
    runtime.shutdown().unwrap();
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();

    let entries = ENTRIES.lock().unwrap().clone();
    let dump = || {
        entries
            .iter()
            .map(|e| format!("{} {} {} {:?}", e.level, e.target, e.message, e.kv))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let root = root.to_string();
    // Startup, at info, says schema, workers and handlers.
    assert!(
        entries.iter().any(|e| e.level == log::Level::Info
            && e.message.contains("started")
            && e.message.contains(&schema)
            && e.message.contains("2 workers")
            && e.message.contains("booking")),
        "{}",
        dump()
    );
    // Every step's start and end at debug, with structured ids.
    let steps: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.target == "structured_cooperation::step")
        .collect();
    assert!(steps.iter().all(|e| e.level == log::Level::Debug));
    let charge_ends = steps
        .iter()
        .filter(|e| e.kv.get("step").map(String::as_str) == Some("charge"))
        .filter(|e| e.kv.contains_key("elapsed_ms"))
        .count();
    assert_eq!(charge_ends, 2, "the charge ran twice: {}", dump());
    for e in &steps {
        for key in ["handler", "step", "run", "root", "attempt"] {
            assert!(e.kv.contains_key(key), "{key} missing: {e:?}");
        }
        assert_eq!(e.kv["root"], root, "{e:?}");
    }
    // The transient failure at warn, saying it runs again.
    assert!(
        entries.iter().any(|e| e.level == log::Level::Warn
            && e.target == "structured_cooperation::run"
            && e.message.contains("gateway timeout")
            && e.kv.contains_key("retry_in_ms")),
        "{}",
        dump()
    );
    // The failures at warn, the parent's with the trace reaching into the card service.
    let booking_failed = entries
        .iter()
        .find(|e| {
            e.level == log::Level::Warn
                && e.target == "structured_cooperation::run"
                && e.kv.get("handler").map(String::as_str) == Some("booking")
        })
        .unwrap_or_else(|| panic!("no failure of the booking run: {}", dump()));
    assert!(
        booking_failed.message.contains("caused by")
            && booking_failed.message.contains("card declined"),
        "{booking_failed:?}"
    );
    assert_eq!(booking_failed.kv["root"], root);
}
