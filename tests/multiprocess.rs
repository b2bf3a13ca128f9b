//! Exactly-once across OS processes: 1,000 two-level trees run by 2 runtimes in each of 2
//! processes (4 workers each). Every step writes its effect into a table with a unique key in
//! its own transaction; every root must commit and every effect must exist exactly once.
//!
//! And: an OS process running compensations is killed with SIGKILL in the middle of them;
//! another process finishes the rollback, and every compensation's effect commits exactly
//! once.
//!
//! And: several OS processes launch the same idempotency keys at once; each key creates one
//! root (see `multiprocess/keyed.rs`).
//!
//! And: a rolling deploy of a new saga version, one process upgraded and one not, serving
//! the same handler; every run runs in its own version, exactly once (see
//! `multiprocess/rolling.rs`).
//!
//! And: a process is sent SIGTERM with steps in flight; they commit, it exits cleanly, and
//! another finishes the rest (see `multiprocess/graceful.rs`, `signals` feature).
//!
//! This binary is its own worker: with `SC_MP_ROLE=worker` (or `compensator`) it starts its
//! runtimes, prints `ready ...` and serves until its stdin closes; `launcher` launches keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Client, Runtime, Saga, StepContext, StepResult};

#[path = "multiprocess/batched.rs"]
mod batched;
#[cfg(all(unix, feature = "signals"))]
#[path = "multiprocess/graceful.rs"]
mod graceful;
#[path = "multiprocess/keyed.rs"]
mod keyed;
#[path = "multiprocess/rolling.rs"]
mod rolling;

const ROOTS: usize = 1000;
const CHILDREN: usize = 2;
const PROCESSES: usize = 2;
const RUNTIMES_PER_PROCESS: usize = 2;
const WORKERS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(180);
const NAME: &str = "exactly_once_across_processes";
const KILL_NAME: &str = "sigkill_mid_compensation_is_finished_elsewhere";
const NAME_BATCHED: &str = "exactly_once_across_processes_8_steps_per_commit";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn main() {
    let _ = env_logger::builder().is_test(true).try_init();
    match std::env::var("SC_MP_ROLE").as_deref() {
        Ok("worker") => return worker(),
        #[cfg(feature = "tokio")]
        Ok("tokio-worker") => return on_tokio::worker(),
        Ok("compensator") => return compensator(),
        Ok("launcher") => return keyed::launcher(),
        Ok("batcher") => return batched::worker(),
        Ok("rolling") => return rolling::worker(),
        #[cfg(all(unix, feature = "signals"))]
        Ok("graceful") => return graceful::worker(),
        _ => {}
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    #[allow(unused_mut)]
    let mut tests: Vec<(&str, fn())> = vec![
        (NAME, || orchestrate(&[BOTH, BOTH], ROOTS)),
        (KILL_NAME, sigkill_mid_compensation),
        (keyed::NAME, keyed::idempotent_launches_across_processes),
        (NAME_BATCHED, || orchestrate_with(&[BOTH, BOTH], ROOTS, 8)),
        (batched::NAME, batched::sigkill_mid_batch),
        (rolling::NAME, rolling::rolling_deploy),
    ];
    #[cfg(feature = "tokio")]
    tests.extend(on_tokio::tests());
    #[cfg(all(unix, feature = "signals"))]
    tests.push((graceful::NAME, graceful::sigterm_with_steps_in_flight));
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<_> = tests
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("running {} tests", chosen.len());
    for (name, test) in chosen {
        let start = Instant::now();
        test();
        println!("test {name} ... ok ({:.1}s)", start.elapsed().as_secs_f64());
    }
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

/// Which of the two handlers a worker process serves (`SC_HANDLERS`, default both).
fn serves(handler: &str) -> bool {
    std::env::var("SC_HANDLERS").map_or(true, |h| h.split(',').any(|x| x == handler))
}

fn worker() {
    let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
    let runtimes: Vec<Runtime> = (0..RUNTIMES_PER_PROCESS)
        .map(|_| {
            let (root, child) = sagas();
            let per_commit = std::env::var("SC_STEPS_PER_COMMIT")
                .ok()
                .and_then(|k| k.parse().ok())
                .unwrap_or(1);
            let mut builder = Runtime::builder(database_url())
                .schema(&schema)
                .workers(WORKERS)
                .steps_per_commit(per_commit);
            if serves("root") {
                builder = builder.subscribe("mp-root", root);
            }
            if serves("child") {
                builder = builder.subscribe("mp-child", child);
            }
            builder.start().expect("worker runtime starts")
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

/// Polls `count_sql` until it counts nothing, failing after `TIMEOUT` with how many are left
/// and `what`.
fn wait_for_none(admin: &mut postgres::Client, count_sql: &str, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left: i64 = admin.query_one(count_sql, &[]).unwrap().get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} {what}");
        std::thread::sleep(Duration::from_millis(50));
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

/// A worker process: its role (`worker` or `tokio-worker`) and the handlers it serves.
#[derive(Clone, Copy)]
struct Role {
    kind: &'static str,
    handlers: &'static str,
}

const BOTH: Role = Role {
    kind: "worker",
    handlers: "root,child",
};

/// Runs `roots` two-level trees on one worker process per role, and checks that every root
/// committed, every effect exists exactly once, and every process ran steps.
fn orchestrate(roles: &[Role], roots: usize) {
    orchestrate_with(roles, roots, 1);
}

/// [`orchestrate`] with the blocking workers running `steps_per_commit` steps per commit.
fn orchestrate_with(roles: &[Role], roots: usize, steps_per_commit: usize) {
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
    assert_eq!(roles.len(), PROCESSES);
    for role in roles {
        let mut child = Command::new(&exe)
            .env("SC_MP_ROLE", role.kind)
            .env("SC_HANDLERS", role.handlers)
            .env("SC_SCHEMA", &schema)
            .env("SC_EFFECTS", &effects)
            .env("SC_STEPS_PER_COMMIT", steps_per_commit.to_string())
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
    for i in 0..roots {
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
        if committed == roots as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {committed} of {roots} roots committed within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut count = |sql: &str| -> i64 {
        admin
            .query_one(sql.replace("__S__", &schema).as_str(), &[])
            .unwrap()
            .get(0)
    };
    let expected_effects = roots * (2 + CHILDREN);
    assert_eq!(
        count("SELECT count(*) FROM __S__.effects"),
        expected_effects as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM __S__.runs WHERE status = 'committed'"),
        (roots * (1 + CHILDREN)) as i64
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
        println!(
            "process {p} ({}, {}) ran {steps} steps",
            roles[p].kind, roles[p].handlers
        );
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

const KILL_ROOTS: usize = 40;
const KILL_LEAVES: usize = 3;

/// Sagas of the SIGKILL test: a root whose second step fails after its leaves committed, and
/// leaves whose compensation records its effect. In a process started with `SC_HANG_AFTER=n`,
/// every compensation after the first n hangs (after writing its effect, before committing),
/// printing `compensating` first.
fn kill_sagas() -> (Saga, Saga) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let root = Saga::builder("kill-root")
        .step(|ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            for i in 0..KILL_LEAVES {
                ctx.emit("kill-leaf", &json!({ "i": i }))?;
            }
            Ok(())
        })
        .step(|_, _: &Value| -> StepResult {
            Err(structured_cooperation::StepError::msg(
                "the order cannot be fulfilled",
            ))
        })
        .build()
        .unwrap();
    let leaf = Saga::builder("kill-leaf")
        .step(|_, _: &Value| -> StepResult { Ok(()) })
        .rollback(|ctx, _: &Value, _| {
            let table = std::env::var("SC_EFFECTS").expect("SC_EFFECTS");
            let run = ctx.run_id().as_uuid();
            let pid = std::process::id() as i32;
            ctx.tx().execute(
                &format!("INSERT INTO {table} (run_id, pid) VALUES ($1, $2)"),
                &[&run, &pid],
            )?;
            let hang_after: Option<usize> = std::env::var("SC_HANG_AFTER")
                .ok()
                .and_then(|v| v.parse().ok());
            if let Some(n) = hang_after {
                if STARTED.fetch_add(1, Ordering::SeqCst) >= n {
                    // Hang only once this process's first n compensations have committed, so
                    // the kill finds exactly those done (this row of ours is visible too).
                    let deadline = Instant::now() + TIMEOUT;
                    loop {
                        let done: i64 = ctx
                            .tx()
                            .query_one(
                                &format!("SELECT count(*) FROM {table} WHERE pid = $1"),
                                &[&pid],
                            )?
                            .get(0);
                        if done > n as i64 {
                            break;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "earlier compensations never committed"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    println!("compensating {run}");
                    std::io::stdout().flush().unwrap();
                    // Hold the transaction open until the process is killed.
                    std::thread::sleep(Duration::from_secs(600));
                }
            }
            Ok(())
        })
        .build()
        .unwrap();
    (root, leaf)
}

fn compensator() {
    let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
    let (root, leaf) = kill_sagas();
    let runtime = Runtime::builder(database_url())
        .schema(&schema)
        .workers(WORKERS)
        .subscribe("kill-root", root)
        .subscribe("kill-leaf", leaf)
        .start()
        .expect("compensator runtime starts");
    println!("ready {}", runtime.instance());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    runtime.shutdown().expect("clean shutdown");
}

fn spawn_compensator(
    schema: &str,
    effects: &str,
    hang_after: Option<usize>,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("SC_MP_ROLE", "compensator")
        .env("SC_SCHEMA", schema)
        .env("SC_EFFECTS", effects)
        .env("DATABASE_URL", database_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(n) = hang_after {
        command.env("SC_HANG_AFTER", n.to_string());
    }
    let mut child = command.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("ready "),
        "compensator did not start: {line:?}"
    );
    (child, out)
}

fn sigkill_mid_compensation() {
    let url = database_url();
    let schema = format!("t_sigkill_{}", std::process::id());
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
            "CREATE TABLE {effects} (run_id uuid PRIMARY KEY, pid integer NOT NULL)"
        ))
        .unwrap();
    client.register_handler("kill-root", "kill-root").unwrap();
    client.register_handler("kill-leaf", "kill-leaf").unwrap();

    // Process A commits two compensations, then hangs inside every later one.
    let (mut a, mut a_out) = spawn_compensator(&schema, &effects, Some(2));
    let mut workers = Workers(Vec::new());
    let mut conn = client.pool().get().unwrap();
    let mut tx = conn.transaction().unwrap();
    for i in 0..KILL_ROOTS {
        client
            .launch_in(&mut tx, "kill-root", &json!({ "n": i }))
            .unwrap();
    }
    tx.commit().unwrap();
    let mut line = String::new();
    a_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("compensating "), "{line:?}");
    let a_pid = a.id() as i32;
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();

    // Process B finishes the rollback.
    let (b, _b_out) = spawn_compensator(&schema, &effects, None);
    workers.0.push(b);
    wait_for_none(
        &mut admin,
        &format!("SELECT count(*) FROM {schema}.runs WHERE status <> 'rolled_back'"),
        "runs did not roll back in time",
    );
    let mut count = |sql: &str| -> i64 {
        admin
            .query_one(sql.replace("__S__", &schema).as_str(), &[])
            .unwrap()
            .get(0)
    };
    let leaves = (KILL_ROOTS * KILL_LEAVES) as i64;
    // Exactly once: one effect per leaf (the primary key forbids a second), no more, no less.
    assert_eq!(count("SELECT count(*) FROM __S__.effects"), leaves);
    assert_eq!(
        count(
            "SELECT count(*) FROM __S__.runs WHERE handler = 'kill-leaf' AND status = 'rolled_back'"
        ),
        leaves
    );
    let by_a = count(&format!(
        "SELECT count(*) FROM __S__.effects WHERE pid = {a_pid}"
    ));
    assert_eq!(
        by_a, 2,
        "A committed exactly the compensations it finished before hanging"
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

/// The same trees with a tokio runtime in one of the processes: competing for the same
/// handlers, and as the parents' or the children's side.
#[cfg(feature = "tokio")]
mod on_tokio {
    use std::io::{Read, Write};

    use serde_json::{Value, json};
    use structured_cooperation::StepResult;
    use structured_cooperation::tokio::{Runtime, Saga, StepContext};

    use super::{BOTH, CHILDREN, ROOTS, RUNTIMES_PER_PROCESS, Role, WORKERS, orchestrate, serves};

    const TOKIO_BOTH: Role = Role {
        kind: "tokio-worker",
        handlers: "root,child",
    };

    pub(super) fn tests() -> Vec<(&'static str, fn())> {
        vec![
            ("exactly_once_across_a_blocking_and_a_tokio_process", || {
                orchestrate(&[BOTH, TOKIO_BOTH], ROOTS)
            }),
            (
                "blocking_parents_with_tokio_children_in_another_process",
                || {
                    let parents = Role {
                        kind: "worker",
                        handlers: "root",
                    };
                    let children = Role {
                        kind: "tokio-worker",
                        handlers: "child",
                    };
                    orchestrate(&[parents, children], 200)
                },
            ),
            (
                "tokio_parents_with_blocking_children_in_another_process",
                || {
                    let parents = Role {
                        kind: "tokio-worker",
                        handlers: "root",
                    };
                    let children = Role {
                        kind: "worker",
                        handlers: "child",
                    };
                    orchestrate(&[parents, children], 200)
                },
            ),
        ]
    }

    async fn effect(ctx: &mut StepContext<'_>, what: &str) -> StepResult {
        let table = std::env::var("SC_EFFECTS").expect("SC_EFFECTS");
        let run = ctx.run_id().as_uuid();
        let sql = format!("INSERT INTO {table} (run_id, step) VALUES ($1, $2)");
        ctx.tx().await.execute(&sql, &[&run, &what]).await?;
        Ok(())
    }

    fn sagas() -> (Saga, Saga) {
        let root = Saga::builder("mp-root")
            .step(|ctx, _: &Value| {
                Box::pin(async move {
                    effect(ctx, "root:0").await?;
                    for i in 0..CHILDREN {
                        ctx.emit("mp-child", &json!({ "i": i }))?;
                    }
                    StepResult::Ok(())
                })
            })
            .step(|ctx, _: &Value| Box::pin(async move { effect(ctx, "root:1").await }))
            .build()
            .unwrap();
        let child = Saga::builder("mp-child")
            .step(|ctx, _: &Value| Box::pin(async move { effect(ctx, "child:0").await }))
            .build()
            .unwrap();
        (root, child)
    }

    pub(super) fn worker() {
        let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let runtimes: Vec<Runtime> = rt.block_on(async {
            let mut runtimes = Vec::new();
            for _ in 0..RUNTIMES_PER_PROCESS {
                let (root, child) = sagas();
                let mut builder = Runtime::builder(super::database_url())
                    .schema(&schema)
                    .workers(WORKERS);
                if serves("root") {
                    builder = builder.subscribe("mp-root", root);
                }
                if serves("child") {
                    builder = builder.subscribe("mp-child", child);
                }
                runtimes.push(builder.start().await.expect("tokio runtime starts"));
            }
            runtimes
        });
        let ids: Vec<&str> = runtimes.iter().map(Runtime::instance).collect();
        println!("ready {}", ids.join(" "));
        std::io::stdout().flush().unwrap();
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        rt.block_on(async {
            for runtime in runtimes {
                runtime.shutdown().await.expect("clean shutdown");
            }
        });
    }
}
