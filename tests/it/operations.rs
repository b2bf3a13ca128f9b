//! Operations over many trees (issue 12): listing and paging runs, counting unfinished work,
//! and pruning finished trees without touching anything unfinished.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use structured_cooperation::{
    Error, MessageId, RootId, RunFilter, RunStatus, Runtime, Saga, StepContext, StepError,
    StepResult, render_tree,
};

use crate::util::{TestDb, WAIT};

/// Orders: the saga fails when the payload says so; `hold` emits to an external handler that
/// nobody completes (so the tree stays unfinished).
fn order_saga() -> Saga {
    Saga::builder("orders")
        .step(|ctx: &mut StepContext<'_>, p: &Value| -> StepResult {
            if p["hold"] == true {
                ctx.emit("approvals", &json!({}))?;
            }
            if p["fail"] == true {
                return Err(StepError::with_kind("shop::Declined", "declined"));
            }
            Ok(())
        })
        .build()
        .unwrap()
}

fn runtime(db: &TestDb) -> Runtime {
    let client = db.client();
    client
        .register_external_handler("approvals", "approver")
        .unwrap();
    db.runtime()
        .subscribe("orders", order_saga())
        .start()
        .unwrap()
}

fn finish(runtime: &Runtime, roots: &[RootId]) {
    for &root in roots {
        assert!(runtime.wait_for(root, WAIT).unwrap().is_finished());
    }
}

#[test]
fn roots_are_listed_newest_first_filtered_and_paged() {
    let db = TestDb::new("list_runs");
    let runtime = runtime(&db);
    let before = SystemTime::now();
    let mut roots = Vec::new();
    for i in 0..7 {
        let fail = i % 3 == 0; // 0, 3, 6
        roots.push(
            runtime
                .launch("orders", &json!({ "i": i, "fail": fail }))
                .unwrap(),
        );
    }
    finish(&runtime, &roots);
    let held = runtime.launch("orders", &json!({ "hold": true })).unwrap();
    let client = runtime.client();
    // The held root's step has emitted its approval (the child exists) before anything is read.
    crate::util::eventually("the approval to be emitted", || {
        client.tree(held).unwrap().len() == 2
    });

    // Every root, newest first, in pages of 3.
    let filter = RunFilter::roots().limit(3);
    let mut seen = Vec::new();
    let mut page = client.list_runs(&filter).unwrap();
    loop {
        assert!(page.runs.len() <= 3);
        seen.extend(page.runs.iter().map(|r| r.root_id));
        let Some(next) = page.next.clone() else { break };
        let cursor: structured_cooperation::Cursor = next.to_string().parse().unwrap();
        page = client.list_runs(&filter.clone().after(cursor)).unwrap();
    }
    let mut expected: Vec<RootId> = roots.clone();
    expected.push(held);
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each once");

    // Failed roots, with their failure type, and the run's times and ids.
    let failed = client
        .list_runs(&RunFilter::roots().status(RunStatus::RolledBack))
        .unwrap();
    let failed_roots: Vec<RootId> = failed.runs.iter().map(|r| r.root_id).collect();
    assert_eq!(failed_roots, [roots[6], roots[3], roots[0]]);
    assert!(failed.next.is_none());
    let run = &failed.runs[0];
    assert_eq!(run.handler, "orders");
    assert!(run.created_at >= before - Duration::from_secs(5));
    assert!(run.started_at.is_some() && run.finished_at.is_some());
    assert!(run.duration().is_some());
    let by_type = client
        .list_runs(&RunFilter::runs().failure_type("shop::Declined"))
        .unwrap();
    assert_eq!(by_type.runs.len(), 3);
    assert!(
        client
            .list_runs(&RunFilter::runs().failure_type("shop::Other"))
            .unwrap()
            .runs
            .is_empty()
    );
    // Unfinished, by handler; time windows.
    let active = client
        .list_runs(&RunFilter::runs().status(RunStatus::Active))
        .unwrap();
    let handlers: HashSet<&str> = active.runs.iter().map(|r| r.handler.as_str()).collect();
    assert_eq!(handlers, HashSet::from(["orders", "approver"]));
    let children = client
        .list_runs(&RunFilter::runs().handler("approver"))
        .unwrap();
    assert_eq!(children.runs.len(), 1);
    assert_eq!(children.runs[0].root_id, held);
    assert!(children.runs[0].parent_id.is_some());
    let later = client
        .list_runs(&RunFilter::roots().created_between(Some(SystemTime::now()), None))
        .unwrap();
    assert!(later.runs.is_empty());
    let finished = client
        .list_runs(&RunFilter::roots().finished_between(Some(before), None))
        .unwrap();
    assert_eq!(finished.runs.len(), 7, "the held root has not finished");

    // Unfinished counts: the held parent waits, the external child is due for nobody here.
    let counts = client.unfinished_counts().unwrap();
    let orders = counts.iter().find(|c| c.handler == "orders").unwrap();
    assert_eq!((orders.runs, orders.due), (1, 0));
    let approver = counts.iter().find(|c| c.handler == "approver").unwrap();
    assert_eq!(approver.runs, 1);
    let window = client.root_counts(before).unwrap();
    let count = |status: RunStatus| {
        window
            .iter()
            .find(|c| c.handler == "orders" && c.status == status)
            .map_or(0, |c| c.runs)
    };
    assert_eq!(
        (
            count(RunStatus::Committed),
            count(RunStatus::RolledBack),
            count(RunStatus::Active)
        ),
        (4, 3, 1)
    );
    assert!(
        client
            .root_counts(SystemTime::now() + Duration::from_secs(60))
            .unwrap()
            .is_empty()
    );

    // The rendered tree names its runs.
    let tree = client.tree(held).unwrap();
    let text = render_tree(&tree);
    for run in &tree {
        assert!(text.contains(&run.id.to_string()), "{text}");
    }
    // A limit of 0 is refused before anything is read.
    assert!(matches!(
        client.list_runs(&RunFilter::runs().limit(0)),
        Err(Error::Config(_))
    ));
    runtime.shutdown().unwrap();
}

#[test]
fn prune_deletes_only_finished_trees_and_every_row_of_them() {
    let mut db = TestDb::new("prune");
    let runtime = runtime(&db);
    let client = runtime.client().clone();
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(
            runtime
                .launch("orders", &json!({ "i": i, "fail": i == 2 }))
                .unwrap(),
        );
    }
    // A root nobody handles, and one keyed launch (its key goes with it).
    old.push(client.launch("nobody", &json!({})).unwrap());
    let keyed = structured_cooperation::EmitOptions::new().idempotency_key("order-keyed");
    old.push(
        client
            .launch_with("orders", &json!({}), keyed.clone())
            .unwrap(),
    );
    finish(&runtime, &old);
    // Unfinished: waits for an approval.
    let held = runtime.launch("orders", &json!({ "hold": true })).unwrap();
    let cutoff = SystemTime::now();
    // Finished after the cutoff: kept.
    let recent = runtime
        .launch("orders", &json!({ "recent": true }))
        .unwrap();
    finish(&runtime, &[recent]);

    let report = client.prune(cutoff).unwrap();
    assert_eq!(report.trees, old.len() as u64, "{report:?}");
    assert!(report.runs >= 6 && report.messages >= 7, "{report:?}");
    for &root in &old {
        assert!(
            matches!(client.tree(root), Err(Error::NotFound { .. })),
            "{root} is still there"
        );
    }
    let s = db.schema.clone();
    let ids: Vec<String> = old.iter().map(|r| format!("'{r}'")).collect();
    let ids = ids.join(",");
    for (table, column) in [
        ("messages", "root_id"),
        ("runs", "root_id"),
        ("history", "root_id"),
        ("cancellations", "root_id"),
    ] {
        assert_eq!(
            db.query_i64(&format!(
                "SELECT count(*) FROM {s}.{table} WHERE {column} IN ({ids})"
            )),
            0,
            "{table}"
        );
    }
    assert_eq!(
        db.query_i64(&format!(
            "SELECT count(*) FROM {s}.step_instances WHERE run_id NOT IN (SELECT id FROM {s}.runs)"
        )),
        0
    );
    // The key is free again; the others are untouched and the held tree still finishes.
    assert!(client.tree(recent).is_ok());
    let approval: MessageId = client
        .history(held)
        .unwrap()
        .iter()
        .find(|e| e.run_id.is_some() && e.kind == structured_cooperation::EventKind::Emitted)
        .unwrap()
        .message_id;
    client
        .complete_external(approval, "approver", Ok(()))
        .unwrap();
    assert!(runtime.wait_for(held, WAIT).unwrap().is_committed());
    let again = client.launch_with("orders", &json!({}), keyed).unwrap();
    assert!(!old.contains(&again), "the pruned key launched anew");
    assert_eq!(
        client.prune(cutoff).unwrap().trees,
        0,
        "nothing else is old enough"
    );
    runtime.shutdown().unwrap();
}

#[test]
fn pruning_while_work_runs_loses_nothing() {
    let mut db = TestDb::new("prune_concurrent");
    let s = db.schema.clone();
    db.exec(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE {s}.effects (id text PRIMARY KEY)"
    ));
    let effects = format!("{s}.effects");
    let parent = {
        let effects = effects.clone();
        Saga::builder("parent")
            .step(move |ctx: &mut StepContext<'_>, p: &Value| -> StepResult {
                let id = format!("p{}", p["i"]);
                ctx.tx()
                    .execute(&format!("INSERT INTO {effects} VALUES ($1)"), &[&id])?;
                ctx.emit("child", &json!({ "i": p["i"], "c": 0 }))?;
                ctx.emit("child", &json!({ "i": p["i"], "c": 1 }))?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = {
        let effects = effects.clone();
        Saga::builder("child")
            .step(move |ctx: &mut StepContext<'_>, p: &Value| -> StepResult {
                let id = format!("c{}.{}", p["i"], p["c"]);
                ctx.tx()
                    .execute(&format!("INSERT INTO {effects} VALUES ($1)"), &[&id])?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let runtime = db
        .runtime()
        .workers(3)
        .subscribe("parents", parent)
        .subscribe("child", child)
        .start()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let pruner = {
        let client = runtime.client().clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut trees = 0;
            while !done.load(Ordering::SeqCst) {
                trees += client.prune(SystemTime::now()).unwrap().trees;
            }
            trees
        })
    };
    const ROOTS: usize = 100;
    for i in 0..ROOTS {
        runtime.launch("parents", &json!({ "i": i })).unwrap();
    }
    crate::util::eventually("every effect", || {
        db.query_i64(&format!("SELECT count(*) FROM {effects}")) == (ROOTS * 3) as i64
    });
    runtime.wait_idle(WAIT).unwrap();
    done.store(true, Ordering::SeqCst);
    let pruned_meanwhile = pruner.join().unwrap();
    let rest = runtime.client().prune(SystemTime::now()).unwrap().trees;
    assert_eq!(
        pruned_meanwhile + rest,
        ROOTS as u64,
        "every tree pruned once"
    );
    assert!(pruned_meanwhile > 0, "the pruner ran alongside the work");
    for table in ["runs", "messages", "history", "step_instances"] {
        assert_eq!(
            db.query_i64(&format!("SELECT count(*) FROM {s}.{table}")),
            0,
            "{table}"
        );
    }
    runtime.shutdown().unwrap();
}

#[test]
fn runtimes_record_themselves_and_handlers_without_one_show() {
    let mut db = TestDb::new("alive");
    let runtime = db
        .runtime()
        .safety_net_interval(Duration::from_millis(200))
        .subscribe("orders", order_saga())
        .start()
        .unwrap();
    let client = db.client();
    client.register_handler("cards", "card-service").unwrap();
    let rows = client.runtimes().unwrap();
    assert_eq!(rows.len(), 1);
    let me = &rows[0];
    assert_eq!(me.instance, runtime.instance());
    assert_eq!(me.handlers, ["orders"]);
    assert_eq!((me.edition.as_str(), me.workers), ("blocking", 4));
    assert_eq!(me.pid, std::process::id() as i32);
    assert!(me.alive);
    let first_seen = me.last_seen;
    crate::util::eventually("a heartbeat with a sweep", || {
        client.runtimes().unwrap()[0].last_seen > first_seen
    });
    // A runtime that vanished a while ago is not alive; one gone for an hour is deleted at
    // the next heartbeat.
    let s = db.schema.clone();
    db.exec(&format!(
        "INSERT INTO {s}.runtimes (instance, host, pid, edition, handlers, workers, interval_ms,
                                   last_seen)
         VALUES ('ghost', 'h', 1, 'blocking', '{{cards}}', 1, 200, now() - interval '2 seconds'),
                ('ancient', 'h', 2, 'tokio', '{{cards}}', 1, 200, now() - interval '1 hour')"
    ));
    crate::util::eventually("the ancient row to expire", || {
        client
            .runtimes()
            .unwrap()
            .iter()
            .all(|r| r.instance != "ancient")
    });
    let ghost = client
        .runtimes()
        .unwrap()
        .into_iter()
        .find(|r| r.instance == "ghost")
        .unwrap();
    assert!(!ghost.alive);
    let topology = client.topology().unwrap();
    let served = |handler: &str| {
        topology
            .iter()
            .find(|t| t.handler == handler)
            .map(|t| (t.served_by_runtimes, t.live_runtimes))
    };
    assert_eq!(served("orders"), Some((true, 1)));
    assert_eq!(served("card-service"), Some((true, 0)), "{topology:?}");
    let instance = runtime.instance().to_owned();
    runtime.shutdown().unwrap();
    assert!(
        client
            .runtimes()
            .unwrap()
            .iter()
            .all(|r| r.instance != instance),
        "a clean shutdown removes its row"
    );
}

#[test]
fn a_runtime_can_prune_finished_trees_by_itself() {
    let mut db = TestDb::new("auto_prune");
    let client = db.client();
    client
        .register_external_handler("approvals", "approver")
        .unwrap();
    let runtime = db
        .runtime()
        .safety_net_interval(Duration::from_millis(100))
        .prune_finished_after(Duration::ZERO)
        .subscribe("orders", order_saga())
        .start()
        .unwrap();
    let held = runtime.launch("orders", &json!({ "hold": true })).unwrap();
    for i in 0..20 {
        runtime.launch("orders", &json!({ "i": i })).unwrap();
    }
    let s = db.schema.clone();
    crate::util::eventually("the finished trees to be pruned", || {
        db.query_i64(&format!("SELECT count(DISTINCT root_id) FROM {s}.runs")) == 1
    });
    // The unfinished tree is untouched.
    assert_eq!(client.tree(held).unwrap().len(), 2);
    runtime.shutdown().unwrap();
}
