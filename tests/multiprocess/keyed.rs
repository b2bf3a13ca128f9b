//! Idempotent launches under competition: several OS processes launch the same keys at the
//! same moment, each from several threads; every key must create exactly one root, and every
//! launch of a key must answer with that root.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::json;
use structured_cooperation::{Client, EmitOptions};

use super::{Workers, database_url};

pub(super) const NAME: &str = "idempotent_launches_across_processes";
const KEYS: usize = 200;
const PROCESSES: usize = 3;
const THREADS: usize = 4;

/// The launcher role: waits for `go`, launches every key from each of its threads (in a
/// different order per thread), prints `key root` for each, then `done`.
pub(super) fn launcher() {
    let schema = std::env::var("SC_SCHEMA").expect("SC_SCHEMA");
    let client = Client::builder(database_url())
        .schema(&schema)
        .pool_size(THREADS as u32)
        .connect()
        .expect("launcher connects");
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let results: Vec<(usize, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let client = &client;
                s.spawn(move || {
                    (0..KEYS)
                        .map(|i| {
                            // Threads walk the keys from different starting points.
                            let k = (i + t * KEYS / THREADS) % KEYS;
                            let options = EmitOptions::new().idempotency_key(format!("key-{k}"));
                            let root = client
                                .launch_with("keyed", &json!({ "k": k }), options)
                                .expect("a keyed launch succeeds");
                            (k, root.to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut out = std::io::stdout().lock();
    for (k, root) in results {
        writeln!(out, "{k} {root}").unwrap();
    }
    writeln!(out, "done").unwrap();
}

pub(super) fn idempotent_launches_across_processes() {
    let url = database_url();
    let schema = format!("t_keyed_{}", std::process::id());
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
    client
        .register_external_handler("keyed", "keyed-handler")
        .unwrap();
    let mut workers = Workers(Vec::new());
    let mut outs = Vec::new();
    for _ in 0..PROCESSES {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("SC_MP_ROLE", "launcher")
            .env("SC_SCHEMA", &schema)
            .env("DATABASE_URL", &url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "launcher did not start");
        outs.push(out);
        workers.0.push(child);
    }
    // Everyone starts at once.
    for child in &mut workers.0 {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut roots: HashMap<usize, String> = HashMap::new();
    let mut answers = 0;
    for out in outs {
        for line in out.lines() {
            let line = line.unwrap();
            if line == "done" {
                break;
            }
            let (k, root) = line.split_once(' ').unwrap();
            let k: usize = k.parse().unwrap();
            let first = roots.entry(k).or_insert_with(|| root.to_owned());
            assert_eq!(first, root, "key-{k} answered with two different roots");
            answers += 1;
        }
    }
    for child in &mut workers.0 {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(answers, KEYS * PROCESSES * THREADS);
    assert_eq!(roots.len(), KEYS);
    let mut count = |sql: &str| -> i64 { admin.query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(
        count(&format!("SELECT count(*) FROM {schema}.messages")),
        KEYS as i64,
        "one message per key"
    );
    assert_eq!(
        count(&format!("SELECT count(*) FROM {schema}.runs")),
        KEYS as i64,
        "one run per key"
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM {schema}.history WHERE event = 'EMITTED'"
        )),
        KEYS as i64,
        "one launch in the history per key"
    );
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
