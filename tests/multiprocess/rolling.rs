//! A rolling deploy of a changed saga (issue 14): process A serves version 1 only; while its
//! runs are in flight, process B starts serving version 2 beside version 1. Runs launched
//! before B registered are version 1's, those launched after are version 2's. Both
//! processes serve the handler at once; every run must commit, run every step of its own
//! version exactly once, and be driven only by code of its own version (A never runs a
//! version 2 run: it has no code for it).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

use super::{Workers, database_url, wait_for_none};

pub(crate) const NAME: &str = "rolling_deploy_of_a_new_saga_version_runs_each_run_in_its_own";
const BATCH: usize = 150;

/// A step recording (run, step, version, process) once: the unique key makes a second
/// execution of a step fail loudly (and the run roll back, which the orchestrator catches).
fn effect(ctx: &mut StepContext<'_>, step: &str, version: &str) -> StepResult {
    let table = std::env::var("SC_EFFECTS").expect("SC_EFFECTS");
    let run = ctx.run_id().as_uuid();
    let pid = std::process::id() as i32;
    ctx.tx().execute(
        &format!("INSERT INTO {table} (run_id, step, version, pid) VALUES ($1, $2, $3, $4)"),
        &[&run, &step, &version, &pid],
    )?;
    Ok(())
}

fn v1() -> Saga {
    Saga::builder("rolling")
        .version("1")
        .step_named("reserve", |ctx, _: &Value| effect(ctx, "reserve", "1"))
        .sleep(Duration::from_millis(300))
        .step_named("ship", |ctx, _: &Value| effect(ctx, "ship", "1"))
        .build()
        .unwrap()
}

fn v2() -> Saga {
    Saga::builder("rolling")
        .version("2")
        .step_named("reserve", |ctx, _: &Value| effect(ctx, "reserve", "2"))
        .step_named("audit", |ctx, _: &Value| effect(ctx, "audit", "2"))
        .sleep(Duration::from_millis(300))
        .step_named("ship", |ctx, _: &Value| effect(ctx, "ship", "2"))
        .build()
        .unwrap()
}

/// The `rolling` role: serves version 1 (`SC_UPGRADED` unset) or version 2 beside 1.
pub(crate) fn worker() {
    let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
    let mut builder = Runtime::builder(database_url()).schema(&schema).workers(4);
    builder = if std::env::var("SC_UPGRADED").is_ok() {
        builder
            .subscribe("rolling", v2())
            .also_serve("rolling", v1())
    } else {
        builder.subscribe("rolling", v1())
    };
    let runtime = builder.start().expect("rolling runtime starts");
    println!("ready {}", std::process::id());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    runtime.shutdown().expect("clean shutdown");
}

fn spawn(workers: &mut Workers, schema: &str, effects: &str, upgraded: bool) -> i32 {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("SC_MP_ROLE", "rolling")
        .env("SC_SCHEMA", schema)
        .env("SC_EFFECTS", effects)
        .env("DATABASE_URL", database_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if upgraded {
        command.env("SC_UPGRADED", "1");
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("rolling worker did not start: {line:?}"));
    workers.0.push(child);
    pid
}

pub(crate) fn rolling_deploy() {
    let url = database_url();
    let schema = format!("t_rolling_{}", std::process::id());
    let effects = format!("{schema}.effects");
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "this test needs PostgreSQL at DATABASE_URL={url:?} and could not connect: {e}\n\
             run scripts/test, which finds or starts one, or set DATABASE_URL"
        )
    });
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let client = Client::builder(&url).schema(&schema).connect().unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TABLE {effects} (run_id uuid NOT NULL, step text NOT NULL, \
             version text NOT NULL, pid int4 NOT NULL, UNIQUE (run_id, step))"
        ))
        .unwrap();
    let mut workers = Workers(Vec::new());
    let old_pid = spawn(&mut workers, &schema, &effects, false);
    let payloads: Vec<Value> = (0..BATCH).map(|n| json!({ "n": n })).collect();
    let before = client.launch_many("rolling", &payloads).unwrap();
    // Deploy the new version while the old runs are in flight (most of them sleep).
    let new_pid = spawn(&mut workers, &schema, &effects, true);
    let after = client.launch_many("rolling", &payloads).unwrap();
    wait_for_none(
        &mut admin,
        &format!("SELECT count(*) FROM {schema}.runs WHERE finished_at IS NULL"),
        "runs still open",
    );
    for child in &mut workers.0 {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
    // Every run committed, in the version it was written by.
    let version_of = |roots: &[structured_cooperation::RootId], admin: &mut postgres::Client| {
        let ids: Vec<uuid::Uuid> = roots.iter().map(|r| r.as_uuid()).collect();
        admin
            .query(
                &format!(
                    "SELECT version, status, count(*) FROM {schema}.runs \
                     WHERE root_id = ANY($1) GROUP BY 1, 2"
                ),
                &[&ids],
            )
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        version_of(&before, &mut admin),
        [("1".to_owned(), "committed".to_owned(), BATCH as i64)]
    );
    assert_eq!(
        version_of(&after, &mut admin),
        [("2".to_owned(), "committed".to_owned(), BATCH as i64)]
    );
    // Each step of each run's own version exactly once (the unique key forbids twice), and
    // only its own version's code ran it.
    let wrong: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {effects} e JOIN {schema}.runs r ON r.id = e.run_id \
                 WHERE e.version <> r.version"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "a run was driven by another version's code");
    let count = |sql: String, admin: &mut postgres::Client| -> i64 {
        admin.query_one(sql.as_str(), &[]).unwrap().get(0)
    };
    assert_eq!(
        count(
            format!("SELECT count(*) FROM {effects} WHERE version = '1'"),
            &mut admin
        ),
        2 * BATCH as i64
    );
    assert_eq!(
        count(
            format!("SELECT count(*) FROM {effects} WHERE version = '2'"),
            &mut admin
        ),
        3 * BATCH as i64
    );
    assert_eq!(
        count(
            format!("SELECT count(*) FROM {effects} WHERE version = '2' AND pid = {old_pid}"),
            &mut admin
        ),
        0,
        "the old process ran version 2"
    );
    // Both processes served the handler during the deploy.
    for pid in [old_pid, new_pid] {
        let sql = format!("SELECT count(*) FROM {effects} WHERE pid = {pid}");
        assert!(count(sql, &mut admin) > 0, "process {pid} ran nothing");
    }
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
