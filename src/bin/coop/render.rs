//! What `coop` prints: text for people, JSON (`--json`) for scripts.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use structured_cooperation::{
    EventKind, Failure, HistoryEvent, Migrated, PruneReport, RunCount, RunInfo, RunPage, RunStatus,
    RuntimeInfo, TopologyEntry, render_tree,
};

/// Where and how to print.
pub(crate) struct Out {
    pub(crate) json: bool,
}

/// RFC 3339 in UTC, to the millisecond.
fn time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 as (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn ms(run: &RunInfo) -> Option<u128> {
    run.duration().map(|d| d.as_millis())
}

fn failure_json(f: &Option<Failure>) -> Value {
    f.as_ref()
        .and_then(|f| serde_json::to_value(f).ok())
        .unwrap_or(Value::Null)
}

fn run_json(run: &RunInfo) -> Value {
    json!({
        "id": run.id.to_string(),
        "root_id": run.root_id.to_string(),
        "parent_id": run.parent_id.map(|p| p.to_string()),
        "handler": run.handler,
        "topic": run.topic,
        "status": run.status.as_str(),
        "step_index": run.step_index,
        "version": run.version,
        "pending_children": run.pending_children,
        "depth": run.depth,
        "created_at": time(run.created_at),
        "started_at": run.started_at.map(time),
        "finished_at": run.finished_at.map(time),
        "duration_ms": ms(run),
        "retries": run.retries,
        "failure": failure_json(&run.failure),
        "rollback_failure": failure_json(&run.rollback_failure),
    })
}

impl Out {
    fn print_json(&self, value: Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    }

    pub(crate) fn done(&self, what: &str) {
        if self.json {
            self.print_json(json!({ "ok": true, "message": what }));
        } else {
            println!("{what}");
        }
    }

    pub(crate) fn list(&self, page: &RunPage) {
        let next = page.next.as_ref().map(ToString::to_string);
        if self.json {
            let runs: Vec<Value> = page.runs.iter().map(run_json).collect();
            return self.print_json(json!({ "runs": runs, "next": next }));
        }
        if page.runs.is_empty() {
            println!("no runs");
        }
        for run in &page.runs {
            let took = ms(run).map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"));
            let why = run.failure.as_ref().map_or(String::new(), |f| {
                format!("  {}: {}", f.kind(), f.message())
            });
            println!(
                "{}  {}  {:<16} {:<16} {:>10}  root {}  version {}{why}",
                time(run.created_at),
                run.id,
                run.handler,
                run.status.as_str(),
                took,
                run.root_id,
                run.version.as_deref().unwrap_or("-")
            );
        }
        if let Some(next) = next {
            println!("more: --after {next}");
        }
    }

    pub(crate) fn tree(&self, runs: &[RunInfo]) {
        if self.json {
            let runs: Vec<Value> = runs.iter().map(run_json).collect();
            return self.print_json(json!({ "runs": runs }));
        }
        print!("{}", render_tree(runs));
        // The top-level runs' failures carry their children's as causes.
        for run in runs.iter().filter(|r| r.depth == 0) {
            if let Some(f) = &run.failure {
                println!("\n{} [run {}] failed:\n{f}", run.handler, run.id);
            }
        }
    }

    pub(crate) fn history(&self, events: &[HistoryEvent]) {
        if self.json {
            let events: Vec<Value> = events
                .iter()
                .map(|e| {
                    json!({
                        "seq": e.seq,
                        "at": time(e.at),
                        "event": e.kind.as_str(),
                        "handler": e.handler,
                        "step": e.step,
                        "run_id": e.run_id.map(|r| r.to_string()),
                        "message_id": e.message_id.to_string(),
                        "failure": failure_json(&e.failure),
                    })
                })
                .collect();
            return self.print_json(json!({ "events": events }));
        }
        for e in events {
            println!("{}  {e}", time(e.at));
        }
    }

    /// The failures of `runs` that tell something: top-level runs', runs whose own code
    /// failed and failed rollbacks; not those of children rolled back because their parent
    /// failed (their trace repeats the parent's), unless a single run was asked for.
    pub(crate) fn trace(&self, runs: &[RunInfo]) {
        let consequence = |r: &RunInfo| {
            runs.len() > 1
                && r.depth > 0
                && r.rollback_failure.is_none()
                && r.failure
                    .as_ref()
                    .is_some_and(|f| f.kind() == "structured_cooperation::ParentSaidSo")
        };
        let failed: Vec<&RunInfo> = runs
            .iter()
            .filter(|r| r.failure.is_some() || r.rollback_failure.is_some())
            .filter(|r| !consequence(r))
            .collect();
        if self.json {
            let runs: Vec<Value> = failed.iter().map(|r| run_json(r)).collect();
            return self.print_json(json!({ "failed": runs }));
        }
        if failed.is_empty() {
            println!("no failures");
        }
        for run in failed {
            println!("{} [run {}]: {}", run.handler, run.id, run.status);
            if let Some(f) = &run.failure {
                println!("{f}");
            }
            if let Some(f) = &run.rollback_failure {
                println!("rollback failed:\n{f}");
            }
            println!();
        }
    }

    pub(crate) fn pruned(&self, report: &PruneReport) {
        if self.json {
            return self.print_json(json!({
                "trees": report.trees, "runs": report.runs, "messages": report.messages,
                "batches": report.batches,
            }));
        }
        println!(
            "pruned {} trees ({} runs, {} messages) in {} transactions",
            report.trees, report.runs, report.messages, report.batches
        );
    }

    pub(crate) fn migrated(&self, migrated: &Migrated) {
        let refused: Vec<Value> = (migrated.refused.iter())
            .map(|r| json!({ "run": r.run.to_string(), "reason": r.reason }))
            .collect();
        if self.json {
            let moved: Vec<String> = migrated.moved.iter().map(ToString::to_string).collect();
            return self.print_json(json!({ "moved": moved, "refused": refused }));
        }
        println!(
            "moved {} runs; {} left at their version",
            migrated.moved.len(),
            migrated.refused.len()
        );
        for r in &migrated.refused {
            println!("  {}: {}", r.run, r.reason);
        }
    }

    pub(crate) fn stats(&self, counts: &[RunCount], runtimes: &[RuntimeInfo]) {
        let now = SystemTime::now();
        let age = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs();
        if self.json {
            let counts: Vec<Value> = counts
                .iter()
                .map(|c| {
                    json!({
                        "handler": c.handler, "version": c.version, "status": c.status.as_str(),
                        "runs": c.runs, "due": c.due, "oldest_age_s": age(c.oldest),
                    })
                })
                .collect();
            let runtimes: Vec<Value> = runtimes.iter().map(runtime_json).collect();
            return self.print_json(json!({ "unfinished": counts, "runtimes": runtimes }));
        }
        println!("unfinished runs:");
        if counts.is_empty() {
            println!("  none");
        }
        for c in counts {
            println!(
                "  {:<20} {:<20} {:<13} {:>8} runs {:>8} due   oldest {} s",
                c.handler,
                c.version.as_deref().unwrap_or("-"),
                c.status.as_str(),
                c.runs,
                c.due,
                age(c.oldest)
            );
        }
        println!("runtimes:");
        if runtimes.is_empty() {
            println!("  none");
        }
        for r in runtimes {
            println!(
                "  {} {} on {} (pid {}), {} workers, {:?}, last seen {} s ago{}",
                r.instance,
                r.edition,
                r.host,
                r.pid,
                r.workers,
                r.handlers,
                age(r.last_seen),
                if r.alive { "" } else { " (NOT ALIVE)" }
            );
        }
    }

    pub(crate) fn topology(&self, entries: &[TopologyEntry]) {
        if self.json {
            let entries: Vec<Value> = entries
                .iter()
                .map(|t| {
                    json!({
                        "topic": t.topic, "handler": t.handler,
                        "served_by_runtimes": t.served_by_runtimes,
                        "live_runtimes": t.live_runtimes,
                    })
                })
                .collect();
            return self.print_json(json!({ "topology": entries }));
        }
        for t in entries {
            let who = if !t.served_by_runtimes {
                "external (completed through the API)".to_owned()
            } else if t.live_runtimes == 0 {
                "NO LIVE RUNTIME: its messages wait".to_owned()
            } else {
                format!("{} live runtimes", t.live_runtimes)
            };
            println!("{:<24} {:<24} {who}", t.topic, t.handler);
        }
    }
}

fn runtime_json(r: &RuntimeInfo) -> Value {
    json!({
        "instance": r.instance, "host": r.host, "pid": r.pid, "edition": r.edition,
        "handlers": r.handlers, "workers": r.workers, "started_at": time(r.started_at),
        "last_seen": time(r.last_seen), "alive": r.alive,
    })
}

/// The tree in Graphviz's dot language: a node per run (handler, status, duration), an edge
/// from each parent to its children.
pub(crate) fn dot(runs: &[RunInfo]) -> String {
    let mut out = String::from("digraph tree {\n  node [shape=box, fontname=\"monospace\"];\n");
    for run in runs {
        let color = match run.status {
            RunStatus::Committed => "darkgreen",
            RunStatus::RolledBack | RunStatus::RollbackFailed => "red",
            _ => "blue",
        };
        let took = ms(run).map_or(String::new(), |ms| format!("\\n{ms} ms"));
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{}{took}\", color={color}];\n",
            run.id, run.handler, run.status
        ));
        if let Some(parent) = run.parent_id {
            out.push_str(&format!("  \"{parent}\" -> \"{}\";\n", run.id));
        }
    }
    out.push_str("}\n");
    out
}

/// Each run as a bar on one time axis, from its creation to its end (or now): `=` while it
/// runs or waits for children, `|` where a step ended (its transaction committed).
pub(crate) fn timeline(runs: &[RunInfo], history: &[HistoryEvent], width: usize) -> String {
    let now = SystemTime::now();
    let Some(start) = runs.iter().map(|r| r.created_at).min() else {
        return "no runs\n".to_owned();
    };
    let end = runs
        .iter()
        .map(|r| r.finished_at.unwrap_or(now))
        .max()
        .unwrap_or(now);
    let span = end
        .duration_since(start)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-6);
    let col = |t: SystemTime| {
        let x = t.duration_since(start).unwrap_or_default().as_secs_f64() / span;
        ((x * (width - 1) as f64).round() as usize).min(width - 1)
    };
    let name_width = runs
        .iter()
        .map(|r| r.handler.len() + 2 * r.depth as usize)
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:name_width$}  0{:>w$}\n",
        "",
        format!("{:.0} ms", span * 1e3),
        w = width - 1
    );
    for run in runs {
        let mut bar = vec![' '; width];
        let (a, b) = (col(run.created_at), col(run.finished_at.unwrap_or(now)));
        for cell in bar.iter_mut().take(b + 1).skip(a) {
            *cell = '=';
        }
        for e in history.iter().filter(|e| {
            e.run_id == Some(run.id)
                && matches!(
                    e.kind,
                    EventKind::Suspended | EventKind::Committed | EventKind::RolledBack
                )
        }) {
            bar[col(e.at)] = '|';
        }
        let name = format!(
            "{:indent$}{}",
            "",
            run.handler,
            indent = 2 * run.depth as usize
        );
        let took = ms(run).map_or_else(|| "running".to_owned(), |ms| format!("{ms} ms"));
        out.push_str(&format!(
            "{name:name_width$}  {}  {} {took}\n",
            bar.iter().collect::<String>(),
            run.status
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_print_in_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_633_600_123);
        assert_eq!(time(t), "2025-12-02T00:00:00.123Z");
        assert_eq!(time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
