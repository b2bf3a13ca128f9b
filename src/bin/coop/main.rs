//! `coop`: find, inspect, steer and prune the runs of a structured-cooperation schema.
//!
//! Exit codes: 0 done; 1 an error (the database, a connection); 2 a usage error; 3 the root
//! or run does not exist; 4 a request (cancel, rollback, complete) was refused.

mod render;

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};
use structured_cooperation::{
    Client, Error, Failure, MessageId, Requested, RootId, RunFilter, RunId, RunMigration,
    RunStatus, Scope,
};

/// Find, inspect, steer and prune the runs of a structured-cooperation schema.
#[derive(Debug, Parser)]
#[command(name = "coop", version)]
struct Cli {
    /// The database (a postgres:// URL or key=value string).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    url: String,
    /// The engine's schema.
    #[arg(long, default_value = structured_cooperation::DEFAULT_SCHEMA)]
    schema: String,
    /// Print JSON instead of text (one document per command).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List runs, newest first (top-level runs only unless --all-runs).
    List {
        /// Only this handler's runs.
        #[arg(long)]
        handler: Option<String>,
        /// Only runs of messages on this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only runs in this status (repeatable): active, rolling_back, committed,
        /// rolled_back, rollback_failed; or "failed" for the last two.
        #[arg(long)]
        status: Vec<String>,
        /// List every run, not only top-level ones.
        #[arg(long)]
        all_runs: bool,
        /// Only runs created within this long (e.g. 30m, 12h, 7d).
        #[arg(long, value_parser = parse_age)]
        since: Option<Duration>,
        /// Only runs created more than this long ago.
        #[arg(long, value_parser = parse_age)]
        before: Option<Duration>,
        /// Only runs whose failure has this type.
        #[arg(long)]
        failure: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after this cursor (printed after a full page).
        #[arg(long)]
        after: Option<String>,
    },
    /// A root's tree: runs, statuses, durations, failures.
    Tree {
        /// The root id.
        root: String,
        /// text, or dot (Graphviz) for a picture.
        #[arg(long, value_enum, default_value_t = TreeFormat::Text)]
        format: TreeFormat,
    },
    /// A root's history, in order.
    History {
        /// The root id.
        root: String,
    },
    /// The cross-service failure trace of a root's runs, or of one run.
    Trace {
        /// A root id or a run id.
        id: String,
    },
    /// A root's runs as bars on a time axis ('=' running or waiting, '|' a step ended).
    Timeline {
        /// The root id.
        root: String,
        /// Width of the time axis in characters.
        #[arg(long, default_value_t = 60)]
        width: usize,
    },
    /// Cancel a root's tree, or one run and its subtree.
    Cancel {
        /// A root id or a run id.
        id: String,
        /// Why (recorded in the failure).
        #[arg(long)]
        reason: String,
        /// Who asks.
        #[arg(long, default_value = "coop")]
        source: String,
    },
    /// Roll back a finished root's tree, or one finished run and its subtree.
    Rollback {
        /// A root id or a run id.
        id: String,
        /// Why (recorded in the failure).
        #[arg(long)]
        reason: String,
        /// Who asks.
        #[arg(long, default_value = "coop")]
        source: String,
    },
    /// Complete an external handler's run of a message.
    Complete {
        /// The message id.
        message: String,
        /// The external handler.
        handler: String,
        /// Fail it with this message instead of committing it.
        #[arg(long)]
        fail: Option<String>,
    },
    /// Delete finished trees whose runs all finished more than this long ago.
    Prune {
        /// e.g. 30d, 12h.
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
    },
    /// Move the unfinished runs of one saga version to another, mapping steps by name.
    MigrateRuns {
        /// The handler whose runs move.
        handler: String,
        /// The version they were written by.
        #[arg(long)]
        from: String,
        /// The version to move them to.
        #[arg(long)]
        to: String,
        /// Map an old step to a new one: OLD=NEW (repeatable); other steps map by name.
        #[arg(long = "map", value_name = "OLD=NEW")]
        maps: Vec<String>,
        /// Who moves them (recorded in each run's history).
        #[arg(long)]
        by: String,
        /// Why (recorded in each run's history).
        #[arg(long)]
        reason: String,
    },
    /// Unfinished runs per handler and status, the oldest due run's age, live runtimes.
    Stats,
    /// Topics, handlers, and the live runtimes serving them.
    Topology,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TreeFormat {
    Text,
    Dot,
}

/// `30s`, `15m`, `12h`, `7d` (or plain seconds).
fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 12h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

/// Why a command did not succeed, and its exit code.
enum Failed {
    Error(Error),
    Usage(String),
    Refused(String),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        Failed::Error(e)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed::Error(e @ Error::NotFound { .. })) => {
            eprintln!("coop: {e}");
            ExitCode::from(3)
        }
        Err(Failed::Error(e @ Error::InvalidId { .. })) => {
            eprintln!("coop: {e}");
            ExitCode::from(2)
        }
        Err(Failed::Error(e)) => {
            eprintln!("coop: {e}");
            ExitCode::from(1)
        }
        Err(Failed::Usage(message)) => {
            eprintln!("coop: {message}");
            ExitCode::from(2)
        }
        Err(Failed::Refused(reason)) => {
            eprintln!("coop: refused: {reason}");
            ExitCode::from(4)
        }
    }
}

fn run(cli: &Cli) -> std::result::Result<(), Failed> {
    // Inspecting never changes the schema: a missing migration is an error, not applied.
    let client = Client::builder(&cli.url)
        .schema(&cli.schema)
        .pool_size(2)
        .migrate(false)
        .connect()?;
    let out = render::Out { json: cli.json };
    match &cli.command {
        Command::List {
            handler,
            topic,
            status,
            all_runs,
            since,
            before,
            failure,
            limit,
            after,
        } => {
            let mut filter = if *all_runs {
                RunFilter::runs()
            } else {
                RunFilter::roots()
            };
            if let Some(h) = handler {
                filter = filter.handler(h);
            }
            if let Some(t) = topic {
                filter = filter.topic(t);
            }
            for s in status {
                for status in parse_status(s)? {
                    filter = filter.status(status);
                }
            }
            let now = SystemTime::now();
            filter = filter.created_between(
                since.and_then(|d| now.checked_sub(d)),
                before.and_then(|d| now.checked_sub(d)),
            );
            if let Some(f) = failure {
                filter = filter.failure_type(f);
            }
            filter = filter.limit(*limit);
            if let Some(cursor) = after {
                filter = filter.after(cursor.parse()?);
            }
            out.list(&client.list_runs(&filter)?);
        }
        Command::Tree { root, format } => {
            let runs = client.tree(root.parse()?)?;
            match format {
                TreeFormat::Text => out.tree(&runs),
                TreeFormat::Dot => print!("{}", render::dot(&runs)),
            }
        }
        Command::History { root } => out.history(&client.history(root.parse()?)?),
        Command::Trace { id } => {
            let runs = match find(&client, id)? {
                Scope::Root(root) => client.tree(root)?,
                Scope::Run(run) => vec![client.run_info(run)?],
            };
            out.trace(&runs);
        }
        Command::Timeline { root, width } => {
            let root: RootId = root.parse()?;
            let runs = client.tree(root)?;
            let history = client.history(root)?;
            print!(
                "{}",
                render::timeline(&runs, &history, (*width).clamp(10, 400))
            );
        }
        Command::Cancel { id, reason, source } => {
            let requested = client.cancel(find(&client, id)?, source, reason)?;
            out.requested("cancel", &requested)?;
        }
        Command::Rollback { id, reason, source } => {
            let requested = client.rollback(find(&client, id)?, source, reason)?;
            out.requested("rollback", &requested)?;
        }
        Command::Complete {
            message,
            handler,
            fail,
        } => {
            let message: MessageId = message.parse()?;
            let result = match fail {
                None => Ok(()),
                Some(m) => Err(Failure::new("coop::Failed", m.clone(), "coop")),
            };
            match client.complete_external(message, handler, result) {
                Ok(()) => out.done("completed"),
                Err(Error::NotCompletable { reason, .. }) => {
                    return Err(Failed::Refused(reason.to_owned()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Prune { older_than } => {
            let cutoff = SystemTime::now()
                .checked_sub(*older_than)
                .ok_or_else(|| Failed::Usage("--older-than is too large".to_owned()))?;
            out.pruned(&client.prune(cutoff)?);
        }
        Command::MigrateRuns {
            handler,
            from,
            to,
            maps,
            by,
            reason,
        } => {
            let mut migration = RunMigration::new(handler, from, to, by, reason);
            for map in maps {
                let (old, new) = map
                    .split_once('=')
                    .ok_or_else(|| Failed::Usage(format!("--map {map:?}: expected OLD=NEW")))?;
                migration = migration.step(old, new);
            }
            match client.migrate_runs(&migration) {
                Ok(migrated) => out.migrated(&migrated),
                Err(Error::InvalidMigration { reason, .. }) => return Err(Failed::Refused(reason)),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Stats => out.stats(&client.unfinished_counts()?, &client.runtimes()?),
        Command::Topology => out.topology(&client.topology()?),
    }
    Ok(())
}

/// Whether `id` names a root or a run (a root id is its root message's id).
fn find(client: &Client, id: &str) -> std::result::Result<Scope, Failed> {
    let root: RootId = id.parse()?;
    match client.outcome(root) {
        Ok(_) => Ok(Scope::Root(root)),
        Err(Error::NotFound { .. }) => {
            let run: RunId = id.parse()?;
            client.run_info(run)?;
            Ok(Scope::Run(run))
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_status(s: &str) -> std::result::Result<Vec<RunStatus>, Failed> {
    if s == "failed" {
        return Ok(vec![RunStatus::RolledBack, RunStatus::RollbackFailed]);
    }
    RunStatus::parse(s).map(|s| vec![s]).ok_or_else(|| {
        Failed::Usage(format!(
            "unknown status {s:?} (active, rolling_back, committed, rolled_back, \
             rollback_failed, failed)"
        ))
    })
}

impl render::Out {
    fn requested(&self, what: &str, requested: &Requested) -> std::result::Result<(), Failed> {
        match requested {
            Requested::Recorded { runs } => {
                self.done(&format!("{what} recorded: {runs} runs"));
                Ok(())
            }
            Requested::Refused { reason } => Err(Failed::Refused(reason.clone())),
        }
    }
}
