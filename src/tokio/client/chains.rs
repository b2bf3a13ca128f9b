//! Scheduled chains through the async client; see `crate::client` for what each does.

use serde::Serialize;

use super::{CLIENT_WORKER, Client};
use crate::client::chains::{chain_vanished, first_occurrence};
use crate::client::check_launch;
use crate::error::Result;
use crate::ids::RootId;
use crate::inspect::{ChainInfo, ChainStop};
use crate::options::EmitOptions;
use crate::proto::{ChainState, Emit, GiveUpCheck, StopChain};
use crate::schedule::Schedule;
use crate::typed::AsTopic;

impl Client {
    /// Like [`crate::Client::schedule`], but async.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use structured_cooperation::Schedule;
    ///
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let every = Schedule::every(Duration::from_secs(3600));
    /// let chain = client.schedule("hourly-report", "reports", &(), &every).await?;
    /// # let _ = chain;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn schedule<P: Serialize + ?Sized>(
        &self,
        key: &str,
        topic: impl AsTopic<P>,
        payload: &P,
        schedule: &Schedule,
    ) -> Result<ChainInfo> {
        self.schedule_with(key, topic, payload, schedule, EmitOptions::new())
            .await
    }

    /// Like [`crate::Client::schedule_with`], but async.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use structured_cooperation::{EmitOptions, Schedule};
    ///
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let every = Schedule::every(Duration::from_secs(60));
    /// client.schedule_with("sync", "sync", &(), &every, EmitOptions::new()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn schedule_with<P: Serialize + ?Sized>(
        &self,
        key: &str,
        topic: impl AsTopic<P>,
        payload: &P,
        schedule: &Schedule,
        options: impl Into<EmitOptions>,
    ) -> Result<ChainInfo> {
        let first = first_occurrence(
            key,
            topic.topic_name(),
            payload,
            schedule,
            &options.into(),
            self.max_json_bytes(),
        )?;
        let (topic, id) = (first.topic.clone(), RootId::from_uuid(first.id));
        let emit = Emit::new(
            None,
            vec![first],
            CLIENT_WORKER,
            &[],
            GiveUpCheck::Skip,
            self.strict_topics(),
        );
        let emitted = self.run(&emit).await?;
        check_launch(&emitted, &topic, id)?;
        self.chain(key).await?.ok_or_else(|| chain_vanished(key))
    }

    /// Like [`crate::Client::chain`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// let chain = client.chain("hourly-report").await?;
    /// # let _ = chain;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn chain(&self, key: &str) -> Result<Option<ChainInfo>> {
        let row = self.run(&ChainState { chain: key }).await?;
        Ok(row.map(|r| ChainInfo::from_row(key, r)))
    }

    /// Like [`crate::Client::stop_chain`], but async.
    ///
    /// ```no_run
    /// # async fn example(client: structured_cooperation::tokio::Client) -> structured_cooperation::Result<()> {
    /// client.stop_chain("hourly-report", "ops", "retired").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stop_chain(&self, key: &str, source: &str, reason: &str) -> Result<ChainStop> {
        let stop = StopChain {
            chain: key,
            source,
            reason,
        };
        Ok(ChainStop::from_stopped(self.run(&stop).await?))
    }
}
