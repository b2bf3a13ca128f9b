//! Steps per commit under SIGKILL (issue 13): process A runs single-step jobs 8 to a commit
//! with one worker and hangs inside a step while earlier steps of its batch are done but
//! not committed; it is killed with SIGKILL. Process B finishes every job. Every job's effect
//! exists exactly once, and none of the killed batch's survived (they were redone by B).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

use super::{TIMEOUT, Workers, database_url};

pub(crate) const NAME: &str = "sigkill_mid_batch_loses_nothing_and_repeats_nothing";
const JOBS: usize = 400;
const PER_COMMIT: usize = 8;
/// Process A's step that hangs (0-based): after 12 steps, i.e. mid-way through a batch.
const HANG_AT: usize = 12;

fn job_saga() -> Saga {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    Saga::builder("batch-job")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            let table = std::env::var("SC_EFFECTS").expect("SC_EFFECTS");
            let run = ctx.run_id().as_uuid();
            let pid = std::process::id() as i32;
            ctx.tx().execute(
                &format!("INSERT INTO {table} (run_id, pid) VALUES ($1, $2)"),
                &[&run, &pid],
            )?;
            let started = STARTED.fetch_add(1, Ordering::SeqCst);
            if std::env::var("SC_HANG").is_ok() && started == HANG_AT {
                println!("hung after {started} steps");
                std::io::stdout().flush().unwrap();
                // Hold the batch's transaction open until the process is killed.
                std::thread::sleep(Duration::from_secs(600));
            }
            Ok(())
        })
        .build()
        .unwrap()
}

/// The `batcher` role: one runtime running `batch-job` 8 steps to a commit.
pub(crate) fn worker() {
    let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
    let workers = if std::env::var("SC_HANG").is_ok() {
        1
    } else {
        4
    };
    let runtime = Runtime::builder(database_url())
        .schema(&schema)
        .workers(workers)
        .steps_per_commit(PER_COMMIT)
        .subscribe("batch-jobs", job_saga())
        .start()
        .expect("batcher runtime starts");
    println!("ready {}", runtime.instance());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    runtime.shutdown().expect("clean shutdown");
}

fn spawn(schema: &str, effects: &str, hang: bool) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("SC_MP_ROLE", "batcher")
        .env("SC_SCHEMA", schema)
        .env("SC_EFFECTS", effects)
        .env("DATABASE_URL", database_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if hang {
        command.env("SC_HANG", "1");
    }
    let mut child = command.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("ready "),
        "batcher did not start: {line:?}"
    );
    (child, out)
}

pub(crate) fn sigkill_mid_batch() {
    let url = database_url();
    let schema = format!("t_batched_{}", std::process::id());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL at DATABASE_URL={url:?}: {e}"));
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let client = Client::builder(&url).schema(&schema).connect().unwrap();
    let effects = format!("{schema}.effects");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {effects} (run_id uuid PRIMARY KEY, pid integer NOT NULL)"
        ))
        .unwrap();

    let (mut a, mut a_out) = spawn(&schema, &effects, true);
    let payloads: Vec<Value> = (0..JOBS).map(|n| json!({ "n": n })).collect();
    client.launch_many("batch-jobs", &payloads).unwrap();
    let mut line = String::new();
    a_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("hung after "), "{line:?}");
    let a_pid = a.id() as i32;
    let count = |admin: &mut postgres::Client, sql: &str| -> i64 {
        admin.query_one(sql, &[]).unwrap().get(0)
    };
    let committed_by_a = count(
        &mut admin,
        &format!("SELECT count(*) FROM {effects} WHERE pid = {a_pid}"),
    );
    // Steps 0..HANG_AT are done; those not committed sit in the batch being killed.
    let uncommitted = HANG_AT as i64 - committed_by_a;
    assert!(
        uncommitted > 0 && uncommitted < PER_COMMIT as i64,
        "the hanging step's batch holds finished, uncommitted steps ({committed_by_a} of \
         {HANG_AT} committed)"
    );
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();

    let (b, _b_out) = spawn(&schema, &effects, false);
    let mut workers = Workers(vec![b]);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let unfinished = count(
            &mut admin,
            &format!("SELECT count(*) FROM {schema}.runs WHERE status <> 'committed'"),
        );
        if unfinished == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} jobs never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        count(&mut admin, &format!("SELECT count(*) FROM {effects}")),
        JOBS as i64,
        "every job's effect, once"
    );
    assert_eq!(
        count(
            &mut admin,
            &format!("SELECT count(*) FROM {effects} WHERE pid = {a_pid}")
        ),
        committed_by_a,
        "nothing of the killed batch was kept"
    );
    assert_eq!(
        count(
            &mut admin,
            &format!(
                "SELECT count(*) FROM {schema}.runs r JOIN {effects} e ON e.run_id = r.id \
                 WHERE r.status = 'committed'"
            )
        ),
        JOBS as i64
    );
    for child in &mut workers.0 {
        drop(child.stdin.take());
    }
    for mut child in std::mem::take(&mut workers.0) {
        assert!(child.wait().unwrap().success());
    }
    drop(client);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
