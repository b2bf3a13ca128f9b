//! Graceful shutdown on a real SIGTERM (issue 11): a process serving with
//! `Runtime::run_until_signal` is sent SIGTERM while steps are in flight; it lets them commit
//! and exits cleanly, leaving nothing claimed; a second process finishes the rest. Every
//! step's effect commits exactly once, and no step runs twice (each step that started before
//! the signal committed within the grace period).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

use super::{Workers, database_url};

pub(super) const NAME: &str = "sigterm_lets_running_steps_commit_and_loses_nothing";
const ROOTS: usize = 40;
const STEPS: usize = 3;
const WORKERS: usize = 4;

/// How many step executions this process started.
static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

fn saga() -> Saga {
    let mut builder = Saga::builder("graceful");
    for step in 0..STEPS {
        builder = builder.step_named(
            format!("s{step}"),
            move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ATTEMPTS.fetch_add(1, Ordering::SeqCst);
                // Long enough for a signal to land while steps run.
                std::thread::sleep(Duration::from_millis(40));
                let table = std::env::var("SC_EFFECTS").expect("SC_EFFECTS");
                let run = ctx.run_id().as_uuid();
                ctx.tx().execute(
                    &format!("INSERT INTO {table} (run_id, step) VALUES ($1, $2)"),
                    &[&run, &(step as i32)],
                )?;
                Ok(())
            },
        );
    }
    builder.build().unwrap()
}

/// The `graceful` role: serves until SIGTERM, then prints how many steps it started.
pub(super) fn worker() {
    let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
    let runtime = Runtime::builder(database_url())
        .schema(&schema)
        .workers(WORKERS)
        .subscribe("graceful", saga())
        .start()
        .expect("runtime starts");
    println!("ready");
    std::io::stdout().flush().unwrap();
    runtime
        .run_until_signal(Duration::from_secs(20))
        .expect("a clean shutdown");
    println!("stopped {}", ATTEMPTS.load(Ordering::SeqCst));
    std::io::stdout().flush().unwrap();
}

fn spawn(schema: &str, effects: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("SC_MP_ROLE", "graceful")
        .env("SC_SCHEMA", schema)
        .env("SC_EFFECTS", effects)
        .env("DATABASE_URL", database_url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the worker did not start");
    (child, out)
}

/// Sends SIGTERM, waits for a clean exit, and returns how many steps the process started.
fn terminate(mut child: Child, mut out: BufReader<ChildStdout>) -> usize {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill failed");
    let started = Instant::now();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "the worker did not exit cleanly: {exit}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
    line.trim()
        .strip_prefix("stopped ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"))
        .parse()
        .unwrap()
}

pub(super) fn sigterm_with_steps_in_flight() {
    let url = database_url();
    let schema = format!("t_sigterm_{}", std::process::id());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let client = Client::builder(&url).schema(&schema).connect().unwrap();
    let effects = format!("{schema}.effects");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {effects} (run_id uuid, step integer, PRIMARY KEY (run_id, step))"
        ))
        .unwrap();
    client.register_handler("graceful", "graceful").unwrap();
    let mut count = |sql: &str| -> i64 {
        admin
            .query_one(sql.replace("__S__", &schema).as_str(), &[])
            .unwrap()
            .get(0)
    };
    let workers = Workers(Vec::new());
    let (a, a_out) = spawn(&schema, &effects);
    let roots: Vec<_> = (0..ROOTS)
        .map(|i| client.launch("graceful", &json!({ "i": i })).unwrap())
        .collect();
    // Signal once some steps committed and many are to come (so some are in flight).
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("SELECT count(*) FROM __S__.effects") < 12 {
        assert!(Instant::now() < deadline, "no progress before the signal");
        std::thread::sleep(Duration::from_millis(5));
    }
    let by_a = terminate(a, a_out);
    let done_by_a = count("SELECT count(*) FROM __S__.effects");
    assert!(
        (done_by_a as usize) < ROOTS * STEPS,
        "everything finished before the signal; the test proves nothing"
    );
    // Nothing stays claimed: every unfinished run can be locked at once.
    let open = count("SELECT count(*) FROM __S__.runs WHERE status = 'active'");
    let lockable = count(
        "SELECT count(*) FROM (SELECT 1 FROM __S__.runs WHERE status = 'active' \
         FOR UPDATE SKIP LOCKED) l",
    );
    assert_eq!(open, lockable, "runs left claimed after the shutdown");

    let (b, b_out) = spawn(&schema, &effects);
    for root in roots {
        let outcome = client.wait_for(root, Duration::from_secs(120)).unwrap();
        assert!(outcome.is_committed(), "{outcome:?}");
    }
    let by_b = terminate(b, b_out);
    drop(workers);
    assert_eq!(
        count("SELECT count(*) FROM __S__.effects") as usize,
        ROOTS * STEPS
    );
    // Every step that started before the signal committed within the grace period: none ran
    // twice.
    assert_eq!(by_a + by_b, ROOTS * STEPS, "a: {by_a}, b: {by_b}");
    assert_eq!(by_a, done_by_a as usize, "a's started steps all committed");
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
}
