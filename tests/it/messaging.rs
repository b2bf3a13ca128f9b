//! MQ-*: the queue API, the topology and several instances of one handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use structured_cooperation::{Saga, StepResult};

use crate::util::{TestDb, WAIT, trace};

fn counting_saga(name: &str, count: &Arc<AtomicUsize>) -> Saga {
    let count = count.clone();
    Saga::builder(name)
        .step(move |_ctx, _: &Value| -> StepResult {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .build()
        .unwrap()
}

#[test]
fn mq_01_publish_and_fetch_a_message() {
    let db = TestDb::new("mq_01");
    let client = db.client();
    let payload = json!({"text": "Hello, World!", "priority": "HIGH"});
    let root = client.launch("test-topic", &payload).unwrap();
    let message = client.message(root.message_id()).unwrap().unwrap();
    assert_eq!(message.id, root.message_id());
    assert_eq!(message.root_id, root);
    assert_eq!(message.topic, "test-topic");
    assert_eq!(message.payload["text"], "Hello, World!");
    assert_eq!(message.payload["priority"], "HIGH");
    assert!(message.created_at > std::time::UNIX_EPOCH);
}

#[test]
fn mq_02_subscribed_handler_gets_every_message() {
    let db = TestDb::new("mq_02");
    let count = Arc::new(AtomicUsize::new(0));
    let runtime = db
        .runtime()
        .subscribe("test-topic", counting_saga("test-handler", &count))
        .start()
        .unwrap();
    let roots: Vec<_> = (0..5)
        .map(|i| runtime.launch("test-topic", &json!({ "n": i })).unwrap())
        .collect();
    for root in roots {
        assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    }
    runtime.wait_idle(WAIT).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 5);
}

#[test]
fn mq_04_subscribe_rejects_a_concurrency_below_one() {
    let db = TestDb::new("mq_04");
    let count = Arc::new(AtomicUsize::new(0));
    let err = db
        .runtime()
        .subscribe_with("test-topic", counting_saga("test-handler", &count), 0)
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("must be >= 1"), "{err}");
}

#[test]
fn mq_05_connections_needed_follow_the_worker_count() {
    let db = TestDb::new("mq_05");
    let count = Arc::new(AtomicUsize::new(0));
    // Each worker and the listener keep a connection; the default pool adds two spares.
    let runtime = db
        .runtime()
        .workers(3)
        .subscribe("test-topic", counting_saga("test-handler", &count))
        .start()
        .unwrap();
    assert_eq!(runtime.client().pool().max_size(), 3 + 1 + 2);
    runtime.shutdown().unwrap();
    let err = db
        .runtime()
        .workers(3)
        .pool_size(3)
        .subscribe("test-topic", counting_saga("test-handler", &count))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("at least 4 are needed"), "{err}");
}

#[test]
fn mq_06_a_launch_without_handlers_writes_only_its_emission() {
    let mut db = TestDb::new("mq_06");
    let client = db.client();
    let root = client.launch("nobody-listens", &json!({})).unwrap();
    let history = client.history(root).unwrap();
    // Unlike the reference, the missing handler is marked in the history (issue 11).
    assert_eq!(trace(&history), ["EMITTED@-", "UNHANDLED@-"]);
    // Nothing to wait for: the tree is finished at once.
    let outcome = client.wait_for(root, WAIT).unwrap();
    assert!(outcome.runs().is_empty() && outcome.is_finished());
    assert_eq!(db.query_i64("SELECT count(*) FROM __S__.runs"), 0);
}

#[test]
fn mq_07_each_handler_of_a_topic_sees_the_message_once() {
    let mut db = TestDb::new("mq_07");
    let (c1, c2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let runtime = db
        .runtime()
        .subscribe("test-topic", counting_saga("handler-1", &c1))
        .subscribe("test-topic", counting_saga("handler-2", &c2))
        .start()
        .unwrap();
    let root = runtime.launch("test-topic", &json!({})).unwrap();
    assert!(runtime.wait_for(root, WAIT).unwrap().is_committed());
    for handler in ["handler-1", "handler-2"] {
        let seen = db.query_i64(&format!(
            "SELECT count(*) FROM __S__.history WHERE event = 'SEEN' AND handler = '{handler}'"
        ));
        assert_eq!(seen, 1, "{handler}");
    }
    assert_eq!(
        (c1.load(Ordering::SeqCst), c2.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[test]
fn mq_08_instances_of_one_handler_run_a_message_once() {
    let mut db = TestDb::new("mq_08");
    let count = Arc::new(AtomicUsize::new(0));
    let a = db
        .runtime()
        .subscribe("test-topic", counting_saga("sync-test-handler", &count))
        .start()
        .unwrap();
    let b = db
        .runtime()
        .subscribe("test-topic", counting_saga("sync-test-handler", &count))
        .start()
        .unwrap();
    let root = a.client().launch("test-topic", &json!({})).unwrap();
    assert!(a.wait_for(root, WAIT).unwrap().is_committed());
    a.wait_idle(WAIT).unwrap();
    b.wait_idle(WAIT).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let seen = db.query_i64(
        "SELECT count(*) FROM __S__.history WHERE event = 'SEEN' AND handler = 'sync-test-handler'",
    );
    assert_eq!(seen, 1);
}
