//! Scheduled chains through the client: starting one (idempotently, by key), finding where it
//! is, and stopping it. The engine launches each next occurrence when the previous one ends.

use std::time::SystemTime;

use serde::Serialize;

use super::{CLIENT_WORKER, Client, check_launch};
use crate::error::{Error, Result};
use crate::ids::RootId;
use crate::inspect::{ChainInfo, ChainStop};
use crate::options::EmitOptions;
use crate::proto::{ChainState, Emit, GiveUpCheck, StopChain};
use crate::saga::{Emission, Occurrence};
use crate::schedule::Schedule;
use crate::typed::AsTopic;
use crate::validate;

/// The first occurrence of chain `key`, at the schedule's first time after now.
pub(crate) fn first_occurrence<P: Serialize + ?Sized>(
    key: &str,
    topic: &str,
    payload: &P,
    schedule: &Schedule,
    options: &EmitOptions,
    limit: usize,
) -> Result<Emission> {
    validate::idempotency_key(key).map_err(|_| Error::InvalidName {
        kind: "chain",
        name: key.to_owned(),
        reason: "a chain key is 1 to 500 characters, without U+0000",
    })?;
    if options.idempotency_key.is_some() {
        return Err(Error::Config(
            "a chain's key already makes starting it idempotent; give no idempotency key"
                .to_owned(),
        ));
    }
    let mut emission = Emission::new(topic, payload, options, limit)?;
    emission.occurrence = Some(Occurrence {
        chain: key.to_owned(),
        schedule: schedule.to_spec(),
        at: schedule.first(SystemTime::now())?,
    });
    Ok(emission)
}

/// The error when a chain just started cannot be read back.
pub(crate) fn chain_vanished(key: &str) -> Error {
    Error::UnexpectedData(format!("chain {key:?} was started but cannot be found"))
}

impl Client {
    /// Starts a scheduled chain: occurrences of `topic` with `payload`, one root each, at the
    /// times of `schedule` (see [`Schedule`] for when the next one runs: never overlapping,
    /// missed times skipped). `key` names the chain: starting it again with the same key
    /// changes nothing and reports where it is, from any process. The first occurrence runs
    /// at the schedule's first time (at once for an interval).
    ///
    /// Every occurrence starts with the cooperation context given here (see
    /// [`schedule_with`](Self::schedule_with)); a chain whose key was
    /// [stopped](Self::stop_chain) stays stopped.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use structured_cooperation::Schedule;
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let every = Schedule::every(Duration::from_secs(3600));
    /// let chain = client.schedule("hourly-report", "reports", &serde_json::json!({}), &every)?;
    /// println!("{} occurrences so far, the latest is {}", chain.occurrences, chain.latest_root);
    /// # Ok(())
    /// # }
    /// ```
    pub fn schedule<P: Serialize + ?Sized>(
        &self,
        key: &str,
        topic: impl AsTopic<P>,
        payload: &P,
        schedule: &Schedule,
    ) -> Result<ChainInfo> {
        self.schedule_with(key, topic, payload, schedule, EmitOptions::new())
    }

    /// [`schedule`](Self::schedule) with a cooperation context for every occurrence (and
    /// deadlines for the first one).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use structured_cooperation::{CooperationContext, EmitOptions, Schedule};
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let mut context = CooperationContext::new();
    /// context.set_raw("tenant", r#""acme""#)?;
    /// let every = Schedule::every(Duration::from_secs(60));
    /// client.schedule_with("acme-sync", "sync", &(), &every, EmitOptions::new().context(context))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn schedule_with<P: Serialize + ?Sized>(
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
        let emitted = self.run(&emit)?;
        check_launch(&emitted, &topic, id)?;
        self.chain(key)?.ok_or_else(|| chain_vanished(key))
    }

    /// Where chain `key` is: its latest occurrence and whether it was stopped; `None` if no
    /// chain has the key.
    ///
    /// ```no_run
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// if let Some(chain) = client.chain("hourly-report")? {
    ///     println!("occurrence {} is {:?}", chain.occurrences, chain.latest_status);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn chain(&self, key: &str) -> Result<Option<ChainInfo>> {
        let row = self.run(&ChainState { chain: key })?;
        Ok(row.map(|r| ChainInfo::from_row(key, r)))
    }

    /// Stops chain `key`: no further occurrence is launched, and one waiting for its time
    /// gives up at once (rolled back with `structured_cooperation::ChainStopped`, made of
    /// `source` and `reason`). An occurrence already running finishes; cancel it with
    /// [`cancel`](Self::cancel) to end it too. A stopped key stays stopped.
    ///
    /// ```no_run
    /// use structured_cooperation::ChainStop;
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// match client.stop_chain("hourly-report", "ops", "report retired")? {
    ///     ChainStop::Stopped | ChainStop::AlreadyStopped => {}
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop_chain(&self, key: &str, source: &str, reason: &str) -> Result<ChainStop> {
        let stop = StopChain {
            chain: key,
            source,
            reason,
        };
        Ok(ChainStop::from_stopped(self.run(&stop)?))
    }
}
