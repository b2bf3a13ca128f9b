//! Exactly-once across OS processes: 1,000 two-level trees run by 2 runtimes in each of 2
//! processes (4 workers each). Every step writes its effect into a table with a unique key in
//! its own transaction; every root must commit and every effect must exist exactly once.
//!
//! This binary is its own worker: with `SC_MP_ROLE=worker` it starts two runtimes, prints
//! `ready <instance> <instance>` and serves until its stdin closes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

const ROOTS: usize = 1000;
const CHILDREN: usize = 2;
const PROCESSES: usize = 2;
const RUNTIMES_PER_PROCESS: usize = 2;
const WORKERS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(180);
const NAME: &str = "exactly_once_across_processes";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn main() {
    let _ = env_logger::builder().is_test(true).try_init();
    if std::env::var("SC_MP_ROLE").as_deref() == Ok("worker") {
        worker();
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("running 0 tests (filtered out: {NAME})");
        return;
    }
    println!("running 1 test");
    let start = Instant::now();
    orchestrate();
    println!("test {NAME} ... ok ({:.1}s)", start.elapsed().as_secs_f64());
}

fn effect(ctx: &mut StepContext<'_>, what: &str) -> StepResult {
    let table = std::env::var("SC_EFFECTS").expect("SC_EFFECTS");
    let run = ctx.run_id().as_uuid();
    ctx.tx().execute(
        &format!("INSERT INTO {table} (run_id, step) VALUES ($1, $2)"),
        &[&run, &what],
    )?;
    Ok(())
}

fn sagas() -> (Saga, Saga) {
    let root = Saga::builder("mp-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            effect(ctx, "root:0")?;
            for i in 0..CHILDREN {
                ctx.emit("mp-child", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult { effect(ctx, "root:1") })
        .build()
        .unwrap();
    let child = Saga::builder("mp-child")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult { effect(ctx, "child:0") })
        .build()
        .unwrap();
    (root, child)
}

fn worker() {
    let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
    let runtimes: Vec<Runtime> = (0..RUNTIMES_PER_PROCESS)
        .map(|_| {
            let (root, child) = sagas();
            Runtime::builder(database_url())
                .schema(&schema)
                .workers(WORKERS)
                .subscribe("mp-root", root)
                .subscribe("mp-child", child)
                .start()
                .expect("worker runtime starts")
        })
        .collect();
    let ids: Vec<&str> = runtimes.iter().map(Runtime::instance).collect();
    println!("ready {}", ids.join(" "));
    std::io::stdout().flush().unwrap();
    // Serve until the orchestrator closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    for runtime in runtimes {
        runtime.shutdown().expect("clean shutdown");
    }
}

/// Kills the worker processes if the orchestrator panics.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn orchestrate() {
    let url = database_url();
    let schema = format!("t_multiprocess_{}", std::process::id());
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
    let effects = format!("{schema}.effects");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {effects} (run_id uuid NOT NULL, step text NOT NULL, \
             PRIMARY KEY (run_id, step))"
        ))
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut workers = Workers(Vec::new());
    let mut instances = Vec::new();
    for _ in 0..PROCESSES {
        let mut child = Command::new(&exe)
            .env("SC_MP_ROLE", "worker")
            .env("SC_SCHEMA", &schema)
            .env("SC_EFFECTS", &effects)
            .env("DATABASE_URL", &url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ids: Vec<String> = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("worker did not start: {line:?}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(ids.len(), RUNTIMES_PER_PROCESS);
        instances.push(ids);
        workers.0.push(child);
    }

    let mut conn = client.pool().get().unwrap();
    let mut tx = conn.transaction().unwrap();
    for i in 0..ROOTS {
        client
            .launch_in(&mut tx, "mp-root", &json!({ "n": i }))
            .unwrap();
    }
    tx.commit().unwrap();

    let deadline = Instant::now() + TIMEOUT;
    loop {
        let row = admin
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE status = 'committed'), \
                            count(*) FILTER (WHERE status IN ('rolled_back', 'rollback_failed')) \
                     FROM {schema}.runs WHERE parent_id IS NULL"
                ),
                &[],
            )
            .unwrap();
        let (committed, failed): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(failed, 0, "some roots failed");
        if committed == ROOTS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {committed} of {ROOTS} roots committed within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut count = |sql: &str| -> i64 {
        admin
            .query_one(sql.replace("__S__", &schema).as_str(), &[])
            .unwrap()
            .get(0)
    };
    let expected_effects = ROOTS * (2 + CHILDREN);
    assert_eq!(
        count("SELECT count(*) FROM __S__.effects"),
        expected_effects as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM __S__.runs WHERE status = 'committed'"),
        (ROOTS * (1 + CHILDREN)) as i64
    );
    // Every committed step instance left exactly one effect: one per run and step.
    assert_eq!(
        count(
            "SELECT count(*) FROM __S__.runs r JOIN __S__.effects e ON e.run_id = r.id \
             WHERE r.status = 'committed'"
        ),
        expected_effects as i64
    );
    for (p, ids) in instances.iter().enumerate() {
        let steps = count(&format!(
            "SELECT count(*) FROM __S__.history WHERE event = 'SUSPENDED' AND worker IN ('{}')",
            ids.join("', '")
        ));
        assert!(steps > 0, "process {p} ran no steps");
        println!("process {p} ran {steps} steps");
    }

    for child in &mut workers.0 {
        drop(child.stdin.take());
    }
    for mut child in std::mem::take(&mut workers.0) {
        let status = child.wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
    }
    drop(client);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
