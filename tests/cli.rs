//! The `coop` command-line tool end to end (issue 12): the binary is run against a real
//! schema holding finished, failed and running trees.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{
    Client, EventKind, Runtime, Saga, StepContext, StepError, StepResult,
};

const WAIT: Duration = Duration::from_secs(30);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn coop(schema: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coop"))
        .env("DATABASE_URL", database_url())
        .args(["--schema", schema])
        .args(args)
        .output()
        .unwrap()
}

fn ok(schema: &str, args: &[&str]) -> String {
    let out = coop(schema, args);
    assert!(
        out.status.success(),
        "coop {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn code(schema: &str, args: &[&str]) -> i32 {
    coop(schema, args).status.code().unwrap()
}

#[test]
fn coop_lists_inspects_steers_and_prunes() {
    let schema = format!("t_cli_{}", std::process::id());
    let mut admin = postgres::Client::connect(&database_url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL (run scripts/test): {e}"));
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let client = Client::builder(database_url())
        .schema(&schema)
        .connect()
        .unwrap();
    client
        .register_external_handler("approvals", "approver")
        .unwrap();
    let orders = Saga::builder("orders")
        .step(|ctx: &mut StepContext<'_>, p: &Value| -> StepResult {
            if p["hold"] == true {
                ctx.emit("approvals", &json!({}))?;
            }
            if p["fail"] == true {
                return Err(StepError::with_kind("shop::Declined", "card declined"));
            }
            Ok(())
        })
        .rollback(|_, _: &Value, _| Ok(()))
        .build()
        .unwrap();
    let runtime = Runtime::builder(database_url())
        .schema(&schema)
        .workers(2)
        .subscribe("orders", orders)
        .start()
        .unwrap();
    let committed = runtime.launch("orders", &json!({})).unwrap();
    let failed = runtime.launch("orders", &json!({ "fail": true })).unwrap();
    for root in [committed, failed] {
        runtime.wait_for(root, WAIT).unwrap();
    }
    let held = runtime.launch("orders", &json!({ "hold": true })).unwrap();
    let s = schema.as_str();

    // list: text, JSON, filters, paging.
    let text = ok(s, &["list"]);
    for root in [committed, failed, held] {
        assert!(text.contains(&root.to_string()), "{text}");
    }
    let listed: Value =
        serde_json::from_str(&ok(s, &["--json", "list", "--status", "failed"])).unwrap();
    let runs = listed["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["root_id"], failed.to_string());
    assert_eq!(runs[0]["failure"]["type"], "shop::Declined");
    let first: Value = serde_json::from_str(&ok(s, &["list", "--limit", "1", "--json"])).unwrap();
    let cursor = first["next"].as_str().unwrap().to_owned();
    let second: Value = serde_json::from_str(&ok(
        s,
        &["list", "--limit", "1", "--after", &cursor, "--json"],
    ))
    .unwrap();
    assert_ne!(first["runs"][0]["id"], second["runs"][0]["id"]);
    assert_eq!(code(s, &["list", "--status", "sideways"]), 2);

    // tree, history, trace, timeline.
    let tree = ok(s, &["tree", &held.to_string()]);
    for run in client.tree(held).unwrap() {
        assert!(tree.contains(&run.id.to_string()), "{tree}");
    }
    assert!(ok(s, &["tree", &held.to_string(), "--format", "dot"]).starts_with("digraph"));
    assert!(ok(s, &["history", &committed.to_string()]).contains("COMMITTED"));
    let trace = ok(s, &["trace", &failed.to_string()]);
    assert!(trace.contains("shop::Declined: card declined"), "{trace}");
    let failed_run = client.tree(failed).unwrap()[0].id;
    assert!(ok(s, &["trace", &failed_run.to_string()]).contains("card declined"));
    let timeline = ok(s, &["timeline", &committed.to_string()]);
    assert!(
        timeline.contains('=') && timeline.contains("orders"),
        "{timeline}"
    );

    // stats and topology say who serves what.
    let stats = ok(s, &["stats"]);
    assert!(
        stats.contains("orders") && stats.contains(runtime.instance()),
        "{stats}"
    );
    let topology = ok(s, &["topology"]);
    assert!(
        topology.contains("approver") && topology.contains("external"),
        "{topology}"
    );

    // Steering: complete the approval, roll back the committed tree, refusals exit 4.
    let approval = client
        .history(held)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == EventKind::Emitted && e.run_id.is_some())
        .unwrap()
        .message_id;
    ok(s, &["complete", &approval.to_string(), "approver"]);
    assert!(runtime.wait_for(held, WAIT).unwrap().is_committed());
    assert_eq!(
        code(s, &["complete", &approval.to_string(), "approver"]),
        4,
        "completing twice is refused"
    );
    let rolled = ok(
        s,
        &["rollback", &committed.to_string(), "--reason", "refund"],
    );
    assert!(rolled.contains("recorded"), "{rolled}");
    let outcome = runtime.wait_for(committed, WAIT).unwrap();
    assert!(!outcome.is_committed());
    assert_eq!(
        code(s, &["cancel", &committed.to_string(), "--reason", "late"]),
        4,
        "cancelling a finished tree is refused"
    );

    // Prune everything finished, then the roots are gone (exit 3); bad ids exit 2.
    let pruned: Value =
        serde_json::from_str(&ok(s, &["--json", "prune", "--older-than", "0s"])).unwrap();
    assert_eq!(pruned["trees"], 3, "{pruned}");
    assert_eq!(code(s, &["tree", &committed.to_string()]), 3);
    assert_eq!(code(s, &["tree", "order-7"]), 2);
    runtime.shutdown().unwrap();
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
}
