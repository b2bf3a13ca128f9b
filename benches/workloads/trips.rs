//! Round trips per step, counted on the wire: a runtime connects to PostgreSQL through a
//! small TCP proxy that counts, on every connection, how often the client starts sending
//! again after the server answered. That is the number of round trips whatever sent them:
//! the engine's statements, BEGIN and COMMIT, and the user's own statements.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{Runtime, Saga, StepContext, StepResult};

use super::{SCHEMA, admin, fresh_schema, insert_result, report, url, wait_drained};

/// The proxy: where it listens, and the round trips it counted on all connections.
struct Proxy {
    port: u16,
    trips: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free local port and forwards every connection to `upstream`.
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let trips = Arc::new(AtomicU64::new(0));
        let counted = trips.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // The server spoke last: the client's next bytes start a round trip.
                let server_spoke = Arc::new(AtomicBool::new(true));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (spoke, trips) = (server_spoke.clone(), counted.clone());
                std::thread::spawn(move || {
                    pump(client, server, |_| {
                        if spoke.swap(false, Ordering::SeqCst) {
                            trips.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                });
                // Marked before forwarding, so the client cannot answer before it is seen.
                std::thread::spawn(move || {
                    pump(s2, c2, |_| server_spoke.store(true, Ordering::SeqCst))
                });
            }
        });
        Proxy { port, trips }
    }

    fn trips(&self) -> u64 {
        self.trips.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to`, calling `seen` before forwarding each chunk.
fn pump(mut from: TcpStream, mut to: TcpStream, seen: impl Fn(usize)) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen(n);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// `DATABASE_URL` with its host and port replaced by the proxy's, and the upstream address.
fn through_proxy(url: &str) -> (String, impl FnOnce(u16) -> String + use<>) {
    let config: postgres::Config = url.parse().expect("DATABASE_URL parses");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => panic!("round trips are counted over TCP: DATABASE_URL must name a TCP host"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_string();
    let db = config.get_dbname().unwrap_or("postgres").to_string();
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let rewrite = move |proxy: u16| {
        format!("postgresql://{user}{password}@127.0.0.1:{proxy}/{db}?sslmode=disable")
    };
    (format!("{host}:{port}"), rewrite)
}

/// Runs `jobs` single-step runs of `saga` on one worker connected through the proxy; returns
/// round trips per step. The runtime starts idle and the jobs are launched over a direct
/// connection, so only the steps (and the one empty claim that ends the drain) are counted.
fn count(saga: Saga, jobs: usize) -> f64 {
    let mut admin = admin();
    let client = fresh_schema(&mut admin);
    let (upstream, rewrite) = through_proxy(&url());
    let proxy = Proxy::start(upstream);
    let runtime = Runtime::builder(rewrite(proxy.port))
        .schema(SCHEMA)
        .workers(1)
        .subscribe("trips", saga)
        .start()
        .unwrap();
    // Wait until the start-up traffic is over: nothing counted for a quiet moment.
    let mut last = (proxy.trips(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
        if proxy.trips() != last.0 {
            last = (proxy.trips(), Instant::now());
        }
    }
    let before = proxy.trips();
    let steps_before = runtime.stats().steps;
    let mut conn = client.pool().get().unwrap();
    let mut tx = conn.transaction().unwrap();
    for i in 0..jobs {
        client
            .launch_in(&mut tx, "trips", &json!({ "i": i }))
            .unwrap();
    }
    tx.commit().unwrap();
    wait_drained(&mut admin, "trips-job");
    // The worker's last, empty claim lands just after the runs are drained.
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.stats().steps - steps_before < jobs as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let steps = runtime.stats().steps - steps_before;
    let trips = proxy.trips() - before;
    runtime.shutdown().unwrap();
    assert_eq!(steps, jobs as u64, "every launched job ran one step");
    trips as f64 / steps as f64
}

/// `round_trips_per_step` for a step that does nothing and for one inserting one row.
pub(crate) fn round_trips() {
    let noop = Saga::builder("trips-job")
        .step(|_: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    report("round_trips_per_step_noop", count(noop, 500));
    let insert = Saga::builder("trips-job")
        .step(|ctx: &mut StepContext<'_>, _: &Value| insert_result(ctx))
        .build()
        .unwrap();
    let per_step = count(insert, 500);
    report("round_trips_per_step_insert", per_step);
    report("round_trips_per_step", per_step);
}
