//! Operations over many trees through the client: listing runs, counting unfinished work,
//! and pruning finished trees.

use std::time::SystemTime;

use super::Client;
use crate::error::Error;
use crate::error::Result;
use crate::ids::RunId;
use crate::inspect::RunInfo;
use crate::listing::{
    PRUNE_BATCH, PruneReport, RunCount, RunFilter, RunPage, RuntimeInfo, TopologyEntry,
};
use crate::proto::{PruneBatch, Retire, RootCounts, RunById, Runtimes, Topology, UnfinishedCounts};

impl Client {
    /// One page of the runs `filter` selects, newest first; [`RunPage::next`] continues.
    ///
    /// ```no_run
    /// use structured_cooperation::{RunFilter, render_tree};
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let newest = client.list_runs(&RunFilter::roots().handler("order-saga").limit(10))?;
    /// for run in &newest.runs {
    ///     print!("{}", render_tree(&client.tree(run.root_id)?));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn list_runs(&self, filter: &RunFilter) -> Result<RunPage> {
        let rows = self.run(&filter.statement()?)?;
        Ok(filter.page(rows))
    }

    /// One run, by id ([`Error::NotFound`] if there is none).
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let run = client.run_info("0193a0c4-5d1e-7f00-8000-000000000000".parse()?)?;
    /// println!("{} of root {}: {}", run.handler, run.root_id, run.status);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_info(&self, run: RunId) -> Result<RunInfo> {
        self.run(&RunById { id: run.as_uuid() })?
            .map(RunInfo::from_row)
            .ok_or_else(|| Error::NotFound {
                what: "run",
                id: run.to_string(),
            })
    }

    /// Unfinished runs per handler and status: how many, how many could run now, and the
    /// oldest one's age. (Finished runs are listed, not counted: there are too many.)
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// for c in client.unfinished_counts()? {
    ///     println!("{} {}: {} runs, {} due", c.handler, c.status, c.runs, c.due);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn unfinished_counts(&self) -> Result<Vec<RunCount>> {
        Ok(self
            .run(&UnfinishedCounts)?
            .into_iter()
            .map(RunCount::from_row)
            .collect())
    }

    /// Top-level runs (one per handler of each root) created since `since`, per handler and
    /// status: how a recent window went (`due` counts unfinished ones that could run now).
    /// Index-backed: the cost follows the window's size, not the history's.
    ///
    /// ```no_run
    /// use std::time::{Duration, SystemTime};
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    /// for c in client.root_counts(hour_ago)? {
    ///     println!("{} {}: {}", c.handler, c.status, c.runs);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn root_counts(&self, since: SystemTime) -> Result<Vec<RunCount>> {
        Ok(self
            .run(&RootCounts { since })?
            .into_iter()
            .map(RunCount::from_row)
            .collect())
    }

    /// Deletes every finished tree whose top-level runs all finished before `finished_before`
    /// (and roots nobody handled, launched before it): every row of them (history,
    /// cancellations, step instances, return values, runs, messages and their idempotency
    /// keys), 100 trees per transaction. A tree with anything unfinished is never touched,
    /// and trees whose runs another transaction holds (an operator's rollback request being
    /// written) are left for the next call; workers are never waited for. A pruned tree can
    /// no longer be inspected or rolled back.
    ///
    /// ```no_run
    /// use std::time::{Duration, SystemTime};
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let month_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    /// let pruned = client.prune(month_ago)?;
    /// println!("{} trees ({} runs) deleted", pruned.trees, pruned.runs);
    /// # Ok(())
    /// # }
    /// ```
    pub fn prune(&self, finished_before: SystemTime) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        loop {
            let batch = PruneBatch {
                before: finished_before,
                limit: PRUNE_BATCH,
                lock: None,
            };
            let pruned = self.run(&batch)?;
            let empty = pruned.trees == 0;
            report.add(pruned);
            if empty {
                return Ok(report);
            }
        }
    }

    /// The runtimes that recorded themselves in this schema (at start and at every
    /// safety-net sweep), oldest first, and whether each is alive.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// for r in client.runtimes()? {
    ///     println!("{} on {} (pid {}): {:?}, alive: {}", r.instance, r.host, r.pid, r.handlers, r.alive);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn runtimes(&self) -> Result<Vec<RuntimeInfo>> {
        Ok(self
            .run(&Runtimes)?
            .into_iter()
            .map(RuntimeInfo::from_row)
            .collect())
    }

    /// Every registered (topic, handler) and how many live runtimes serve it.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// for t in client.topology()? {
    ///     if t.served_by_runtimes && t.live_runtimes == 0 {
    ///         println!("nobody serves {} on {:?}: its messages wait", t.handler, t.topic);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn topology(&self) -> Result<Vec<TopologyEntry>> {
        Ok(self
            .run(&Topology)?
            .into_iter()
            .map(TopologyEntry::from_row)
            .collect())
    }

    /// Removes a runtime's heartbeat row (it shut down cleanly).
    pub(crate) fn retire(&self, instance: &str) -> Result<()> {
        self.run(&Retire { instance })
    }
}
