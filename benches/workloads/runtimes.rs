//! The runtime a workload runs on: the blocking one, or (with the `tokio` feature) the tokio
//! one with the same sagas written as async steps; tokio's figures, and the scaling of w1
//! with the number of workers on both, drawn as an SVG.

use super::{SCHEMA, job_saga, url, w3_sagas};
use structured_cooperation::Runtime;

/// Which runtime runs a workload.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Engine {
    Blocking {
        workers: usize,
    },
    /// The blocking runtime with `per_commit` steps per commit.
    Batched {
        workers: usize,
        per_commit: usize,
    },
    #[cfg(feature = "tokio")]
    Tokio {
        workers: usize,
        connections: usize,
    },
}

/// Stops a started runtime (and the tokio runtime under it).
pub(crate) type Stop = Box<dyn FnOnce()>;

fn blocking(
    workers: usize,
    per_commit: usize,
    subscriptions: Vec<(&str, structured_cooperation::Saga)>,
) -> Stop {
    let mut builder = Runtime::builder(url())
        .schema(SCHEMA)
        .workers(workers)
        .steps_per_commit(per_commit);
    for (topic, saga) in subscriptions {
        builder = builder.subscribe(topic, saga);
    }
    let runtime = builder.start().unwrap();
    Box::new(move || runtime.shutdown().unwrap())
}

/// The w1 handler on `engine`.
pub(crate) fn start_w1(engine: Engine) -> Stop {
    match engine {
        Engine::Blocking { workers } => blocking(workers, 1, vec![("w1", job_saga())]),
        Engine::Batched {
            workers,
            per_commit,
        } => blocking(workers, per_commit, vec![("w1", job_saga())]),
        #[cfg(feature = "tokio")]
        Engine::Tokio {
            workers,
            connections,
        } => on_tokio::start(workers, connections, vec![("w1", on_tokio::job_saga())]),
    }
}

/// The w3 handlers on `engine`.
pub(crate) fn start_w3(engine: Engine) -> Stop {
    match engine {
        Engine::Blocking { workers } => {
            let (root, child) = w3_sagas();
            blocking(workers, 1, vec![("w3", root), ("w3-child", child)])
        }
        Engine::Batched {
            workers,
            per_commit,
        } => {
            let (root, child) = w3_sagas();
            blocking(workers, per_commit, vec![("w3", root), ("w3-child", child)])
        }
        #[cfg(feature = "tokio")]
        Engine::Tokio {
            workers,
            connections,
        } => {
            let (root, child) = on_tokio::w3_sagas();
            on_tokio::start(
                workers,
                connections,
                vec![("w3", root), ("w3-child", child)],
            )
        }
    }
}

#[cfg(not(feature = "tokio"))]
pub(crate) fn tokio_figures(_admin: &mut postgres::Client) {
    eprintln!("tokio figures need the tokio feature (scripts/bench enables it)");
}

#[cfg(not(feature = "tokio"))]
pub(crate) fn scaling(_admin: &mut postgres::Client) {
    eprintln!("the scaling comparison needs the tokio feature (scripts/bench enables it)");
}

#[cfg(feature = "tokio")]
pub(crate) use on_tokio::{scaling, tokio_figures};

#[cfg(feature = "tokio")]
mod on_tokio {
    use serde_json::{Value, json};
    use structured_cooperation::StepResult;
    use structured_cooperation::tokio::{Runtime, Saga, StepContext};

    use super::super::{SCHEMA, WORKERS, fresh_schema, report, url, w1_run_on, w3_on};
    use super::{Engine, Stop};

    /// The business write of every measured step, as in the blocking workloads.
    async fn insert_result(ctx: &mut StepContext<'_>) -> StepResult {
        let run = ctx.run_id().as_uuid();
        let insert = ctx
            .prepare_cached(&format!(
                "INSERT INTO {SCHEMA}.results (run_id) VALUES ($1)"
            ))
            .await?;
        ctx.tx().await.execute(&insert, &[&run]).await?;
        Ok(())
    }

    pub(super) fn job_saga() -> Saga {
        Saga::builder("w1-job")
            .step(|ctx, _: &Value| Box::pin(async move { insert_result(ctx).await }))
            .build()
            .unwrap()
    }

    pub(super) fn w3_sagas() -> (Saga, Saga) {
        let root = Saga::builder("w3-root")
            .step(|ctx, _: &Value| {
                Box::pin(async move {
                    for i in 0..10 {
                        ctx.emit("w3-child", &json!({ "i": i }))?;
                    }
                    StepResult::Ok(())
                })
            })
            .step(|ctx, _: &Value| Box::pin(async move { insert_result(ctx).await }))
            .build()
            .unwrap();
        let child = Saga::builder("w3-child")
            .step(|ctx, _: &Value| Box::pin(async move { insert_result(ctx).await }))
            .build()
            .unwrap();
        (root, child)
    }

    /// Starts a tokio runtime (multi-thread, one worker thread per core) serving
    /// `subscriptions` with `workers` tasks on `connections` connections.
    pub(super) fn start(
        workers: usize,
        connections: usize,
        subscriptions: Vec<(&str, Saga)>,
    ) -> Stop {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let runtime = rt.block_on(async {
            let mut builder = Runtime::builder(url())
                .schema(SCHEMA)
                .workers(workers)
                .connections(connections);
            for (topic, saga) in subscriptions {
                builder = builder.subscribe(topic, saga);
            }
            builder.start().await.unwrap()
        });
        Box::new(move || rt.block_on(runtime.shutdown()).unwrap())
    }

    /// w1 (best of two) and w3 on the tokio runtime with the blocking figures' workers.
    pub(crate) fn tokio_figures(admin: &mut postgres::Client) {
        let engine = Engine::Tokio {
            workers: WORKERS,
            connections: WORKERS,
        };
        let mut best = 0.0f64;
        for _ in 0..2 {
            let client = fresh_schema(admin);
            best = best.max(w1_run_on(admin, &client, 10_000, engine));
        }
        report("tokio_w1_steps_per_s", best);
        report("tokio_w3_steps_per_s", w3_on(admin, engine, false));
    }

    /// w1 (5,000 jobs) on both runtimes by workers, and tokio with many more tasks than
    /// connections, in three rounds (each round runs every configuration once, in turn);
    /// reports every round and the medians, and draws the medians.
    pub(crate) fn scaling(admin: &mut postgres::Client) {
        const JOBS: usize = 5_000;
        const ROUNDS: usize = 3;
        let mut configs: Vec<(String, usize, Engine)> = Vec::new();
        for workers in super::WORKER_COUNTS {
            configs.push(("blocking".into(), workers, Engine::Blocking { workers }));
            configs.push((
                "tokio".into(),
                workers,
                Engine::Tokio {
                    workers,
                    connections: workers,
                },
            ));
        }
        configs.push((
            "tokio, 64 tasks".into(),
            16,
            Engine::Tokio {
                workers: 64,
                connections: 16,
            },
        ));
        let mut rates = vec![Vec::new(); configs.len()];
        for round in 0..ROUNDS {
            for (i, (name, workers, engine)) in configs.iter().enumerate() {
                let client = fresh_schema(admin);
                let rate = w1_run_on(admin, &client, JOBS, *engine);
                let key = format!(
                    "scale_w1_{}_{workers}",
                    name.replace(", 64 tasks", "_64_tasks")
                );
                report(&format!("{key}_r{}", round + 1), rate);
                rates[i].push(rate);
            }
        }
        let mut points: Vec<(String, usize, f64)> = Vec::new();
        for ((name, workers, _), mut r) in configs.into_iter().zip(rates) {
            r.sort_by(f64::total_cmp);
            let median = r[r.len() / 2];
            let key = format!(
                "scale_w1_{}_{workers}",
                name.replace(", 64 tasks", "_64_tasks")
            );
            report(&key, median);
            points.push((name, workers, median));
        }
        for (clients, tps) in super::ceiling_by_clients() {
            points.push(("ceiling".into(), clients, tps));
        }
        let svg = super::plot(&points);
        std::fs::create_dir_all("target/bench").unwrap();
        std::fs::write("target/bench/blocking_vs_tokio.svg", svg).unwrap();
        eprintln!("wrote target/bench/blocking_vs_tokio.svg");
    }
}

/// The worker counts of the scaling figures.
const WORKER_COUNTS: [usize; 5] = [1, 2, 4, 8, 16];

/// The pgbench ceiling at each client count, as `scripts/bench` measured it in the same run
/// (`SC_CEILING_BY_CLIENTS=1:1234.5,2:...`); empty when not given.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
fn ceiling_by_clients() -> Vec<(usize, f64)> {
    std::env::var("SC_CEILING_BY_CLIENTS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| {
            let (c, tps) = pair.split_once(':')?;
            Some((c.trim().parse().ok()?, tps.trim().parse().ok()?))
        })
        .collect()
}

/// An SVG line chart of w1 throughput against workers (1 to 16 on a log scale), one line per
/// runtime and one for the pgbench ceiling at the same client counts, plus tokio's
/// many-tasks point at its connection count.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
fn plot(points: &[(String, usize, f64)]) -> String {
    let (w, h, left, bottom, top, right) = (780.0, 400.0, 70.0, 50.0, 40.0, 250.0);
    let max = points.iter().map(|p| p.2).fold(1.0f64, f64::max) * 1.1;
    let x = |workers: usize| left + (workers as f64).log(16.0) * (w - left - right);
    let y = |rate: f64| h - bottom - rate / max * (h - bottom - top);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">w1 steps/s by workers (one job = one \
         step transaction; median of 3 rounds) beside the pgbench ceiling</text>\n"
    );
    // Axes, ticks, grid.
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for workers in WORKER_COUNTS {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{workers}</text>\n",
            x(workers),
            h - bottom + 18.0
        );
    }
    svg += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">workers (log scale)</text>\n",
        left + (w - left - right) / 2.0,
        h - 10.0
    );
    let step = (max / 5.0 / 500.0).ceil() * 500.0;
    let mut tick = 0.0;
    while tick <= max {
        svg += &format!(
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#ddd\"/>\n\
             <text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{tick:.0}</text>\n",
            y(tick),
            w - right,
            left - 6.0,
            y(tick) + 4.0
        );
        tick += step;
    }
    let series = [
        ("blocking", "#1f77b4"),
        ("tokio", "#d62728"),
        ("ceiling", "#7f7f7f"),
    ];
    for (i, (name, color)) in series.iter().enumerate() {
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.0 == *name)
            .map(|p| (x(p.1), y(p.2)))
            .collect();
        let path: Vec<String> = line.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for (a, b) in &line {
            svg += &format!("<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"4\" fill=\"{color}\"/>\n");
        }
        let ly = top + 20.0 * i as f64;
        svg += &format!(
            "<rect x=\"{0}\" y=\"{1}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\n\
             <text x=\"{2}\" y=\"{3}\">{4}</text>\n",
            w - right + 10.0,
            ly,
            w - right + 28.0,
            ly + 11.0,
            if *name == "ceiling" {
                "pgbench ceiling: clients".to_owned()
            } else {
                format!("{name}: workers = connections")
            }
        );
    }
    for p in points
        .iter()
        .filter(|p| p.0 != "blocking" && p.0 != "tokio" && p.0 != "ceiling")
    {
        svg += &format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"#2ca02c\"/>\n",
            x(p.1) - 4.0,
            y(p.2) - 4.0
        );
        let ly = top + 60.0;
        svg += &format!(
            "<rect x=\"{0}\" y=\"{1}\" width=\"12\" height=\"12\" fill=\"#2ca02c\"/>\n\
             <text x=\"{2}\" y=\"{3}\">{4}, 16 connections</text>\n",
            w - right + 10.0,
            ly,
            w - right + 28.0,
            ly + 11.0,
            p.0
        );
    }
    svg + "</svg>\n"
}
