//! Operations over many trees through the tokio client: the blocking client's
//! (`src/client/list.rs`), async.

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
    /// Like [`crate::Client::list_runs`], but async.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage> {
        let rows = self.run(&filter.statement()?).await?;
        Ok(filter.page(rows))
    }

    /// Like [`crate::Client::run_info`], but async.
    pub async fn run_info(&self, run: RunId) -> Result<RunInfo> {
        self.run(&RunById { id: run.as_uuid() })
            .await?
            .map(RunInfo::from_row)
            .ok_or_else(|| Error::NotFound {
                what: "run",
                id: run.to_string(),
            })
    }

    /// Like [`crate::Client::unfinished_counts`], but async.
    pub async fn unfinished_counts(&self) -> Result<Vec<RunCount>> {
        let rows = self.run(&UnfinishedCounts).await?;
        Ok(rows.into_iter().map(RunCount::from_row).collect())
    }

    /// Like [`crate::Client::root_counts`], but async.
    pub async fn root_counts(&self, since: SystemTime) -> Result<Vec<RunCount>> {
        let rows = self.run(&RootCounts { since }).await?;
        Ok(rows.into_iter().map(RunCount::from_row).collect())
    }

    /// Like [`crate::Client::prune`], but async.
    pub async fn prune(&self, finished_before: SystemTime) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        loop {
            let batch = PruneBatch {
                before: finished_before,
                limit: PRUNE_BATCH,
                lock: None,
            };
            let pruned = self.run(&batch).await?;
            let empty = pruned.trees == 0;
            report.add(pruned);
            if empty {
                return Ok(report);
            }
        }
    }

    /// Like [`crate::Client::runtimes`], but async.
    pub async fn runtimes(&self) -> Result<Vec<RuntimeInfo>> {
        let rows = self.run(&Runtimes).await?;
        Ok(rows.into_iter().map(RuntimeInfo::from_row).collect())
    }

    /// Like [`crate::Client::topology`], but async.
    pub async fn topology(&self) -> Result<Vec<TopologyEntry>> {
        let rows = self.run(&Topology).await?;
        Ok(rows.into_iter().map(TopologyEntry::from_row).collect())
    }

    /// Like `crate::Client::retire`.
    pub(crate) async fn retire(&self, instance: &str) -> Result<()> {
        self.run(&Retire { instance }).await
    }
}
