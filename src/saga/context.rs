//! What a step closure gets: the open transaction, emission, and facts about the run.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postgres::Statement;
use serde::Serialize;
use uuid::Uuid;

use super::flavor::{Blocking, Flavor};
use crate::context::CooperationContext;
use crate::core::attempt::{SavepointState, UserOutcome};
use crate::core::{Next, Wake};
use crate::error::{Error, Result};
use crate::failure::{Failure, StepError, StepResult};
use crate::ids::{MessageId, RootId, RunId, new_uuid};
use crate::options::EmitOptions;
use crate::proto::{Sql, StmtCache};
use crate::typed::AsTopic;
use crate::validate;

mod blocking;
#[cfg(feature = "tokio")]
mod tokio;
mod values;

/// What kind of user code a [`StepContext`] is given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A step's body, on the happy path.
    Step,
    /// A step's compensating action, while the run rolls back.
    Compensation,
    /// A step's child-failure handler.
    ChildFailures,
}

/// The failures of the children of one step instance, given to a child-failure handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildFailures {
    failure: Failure,
    next: Next,
    iteration: u32,
}

impl ChildFailures {
    pub(crate) fn new(failure: Failure, next: Next, iteration: u32) -> ChildFailures {
        ChildFailures {
            failure,
            next,
            iteration,
        }
    }

    /// The failure the children add up to (`structured_cooperation::ChildRolledBack`, or
    /// `structured_cooperation::ChildRollbackFailed` if one of them also failed to roll back),
    /// with each child's failure among its causes.
    pub fn failure(&self) -> &Failure {
        &self.failure
    }

    /// The children's own failures.
    pub fn children(&self) -> &[Failure] {
        self.failure.causes()
    }

    /// What the step had chosen to do next. Returning it carries on as planned.
    pub fn next(&self) -> Next {
        self.next
    }

    /// How many times the handler already ran for this step (0 the first time).
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// An error that fails the run with the children's failure, unchanged: what happens when a
    /// step has no handler.
    pub fn rethrow(&self) -> StepError {
        StepError::from_failure(self.failure.clone())
    }
}

/// Facts about the step being run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StepInfo {
    pub(crate) handler: Arc<str>,
    pub(crate) run_id: RunId,
    pub(crate) root_id: RootId,
    pub(crate) message_id: MessageId,
    pub(crate) topic: String,
    pub(crate) step_name: String,
    pub(crate) step_index: usize,
    pub(crate) iteration: u32,
    pub(crate) phase: Phase,
    /// For periodic sagas: how many runs of the chain came before this one.
    pub(crate) run_count: u32,
    /// The message's payload as stored (for a periodic saga's next run).
    pub(crate) payload: Arc<str>,
    /// In a compensation: whether the step after the one undone ran after it (try/finally).
    pub(crate) successor_ran: bool,
    /// Which attempt of this code this is (1 unless earlier ones failed transiently).
    pub(crate) attempt: u32,
    /// The context the run's message was launched with (for a periodic saga's next run).
    pub(crate) launch_context: Option<String>,
    /// The saga version that wrote the run (`None`: from before versions existed).
    pub(crate) version: Option<String>,
}

/// What step code's helpers use of the runtime: the statements, the worker connection's
/// caches (lent to the step context for the call, and given back by
/// [`StepContext::finish`]), and the size limit.
#[derive(Debug)]
pub(crate) struct Engine<'c> {
    pub(crate) sql: &'c Sql,
    /// The engine's statements prepared on this connection.
    pub(crate) cache: StmtCache,
    /// Step code's own, from [`StepContext::prepare_cached`].
    pub(crate) statements: UserStatements,
    /// Largest payload, context or return value, in bytes of JSON.
    pub(crate) max_json_bytes: usize,
    /// Set when the runtime starts shutting down.
    pub(crate) stopping: &'c std::sync::atomic::AtomicBool,
}

/// A message to be written when the step returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Emission {
    pub(crate) id: Uuid,
    pub(crate) topic: String,
    pub(crate) payload: String,
    /// `true` for a child of this run, `false` for a launch on the global scope.
    pub(crate) scoped: bool,
    /// Deadlines given with the emission, as JSON for the emit statement.
    pub(crate) deadlines: Option<String>,
    /// For the next run of a periodic saga: how many came before it.
    pub(crate) run_count: u32,
    /// The new runs' cooperation context (`None` = empty).
    pub(crate) context: Option<String>,
    /// A launch's idempotency key.
    pub(crate) key: Option<String>,
    /// For an occurrence of a scheduled chain: which, and when it runs.
    pub(crate) occurrence: Option<Occurrence>,
    /// Whether a topic without handlers is refused; `None`: as the runtime or client says.
    pub(crate) strict: Option<bool>,
}

/// An occurrence of a scheduled chain, as launched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Occurrence {
    /// The chain's key.
    pub(crate) chain: String,
    /// The chain's schedule, as stored.
    pub(crate) schedule: String,
    /// When this occurrence runs (not before).
    pub(crate) at: std::time::SystemTime,
}

impl Emission {
    /// A launch on the global scope (`scoped` false) carrying `options`; the step context
    /// turns it into a child where needed. Checks the topic and the sizes.
    pub(crate) fn new<T: Serialize + ?Sized>(
        topic: &str,
        payload: &T,
        options: &EmitOptions,
        limit: usize,
    ) -> Result<Emission> {
        validate::name("topic", topic)?;
        let payload = serde_json::to_string(payload).map_err(|source| Error::Encode {
            topic: topic.to_owned(),
            source,
        })?;
        validate::size(
            || format!("the payload for topic {topic:?}"),
            &payload,
            limit,
        )?;
        validate::storable(|| format!("the payload for topic {topic:?}"), &payload)?;
        let context = options.context.to_stored();
        if let Some(json) = &context {
            validate::size(|| format!("the context for topic {topic:?}"), json, limit)?;
        }
        if let Some(key) = &options.idempotency_key {
            validate::idempotency_key(key)?;
        }
        Ok(Emission {
            id: new_uuid(),
            topic: topic.to_owned(),
            payload,
            scoped: false,
            deadlines: options.deadlines.to_json(),
            run_count: 0,
            context,
            key: options.idempotency_key.clone(),
            occurrence: None,
            strict: options.strict,
        })
    }
}

/// Given to every step closure: the step's open transaction and ways to emit messages.
///
/// Everything done through the context commits atomically with the run's bookkeeping, or not
/// at all: the user's own writes on [`tx`](Self::tx), the messages from [`emit`](Self::emit)
/// and [`launch`](Self::launch), and the step's completion.
pub struct StepContext<'c, X: Flavor = Blocking> {
    tx: X::Tx<'c>,
    /// Taken before user code first touches the transaction.
    savepoint: SavepointState,
    info: StepInfo,
    emissions: Vec<Emission>,
    engine: Engine<'c>,
    wake: Wake,
    context: CooperationContext,
}

/// Statements prepared by step code with [`StepContext::prepare_cached`], per connection.
#[derive(Debug, Default)]
pub(crate) struct UserStatements(std::collections::HashMap<String, Statement>);

/// Beyond this many distinct statements the cache starts over (step code that builds SQL
/// dynamically must not grow it without bound).
pub(super) const MAX_USER_STATEMENTS: usize = 256;

impl<'c, X: Flavor> StepContext<'c, X> {
    pub(crate) fn new(
        tx: X::Tx<'c>,
        info: StepInfo,
        engine: Engine<'c>,
        context: CooperationContext,
    ) -> StepContext<'c, X> {
        StepContext {
            tx,
            savepoint: SavepointState::Untouched,
            info,
            emissions: Vec::new(),
            engine,
            wake: Wake::Now,
            context,
        }
    }

    /// The run's cooperation context: what the launch or the parent gave it, with the changes
    /// of the steps that ran before this one.
    pub fn context(&self) -> &CooperationContext {
        &self.context
    }

    /// The run's cooperation context, to change. Changes are saved with the step's outcome —
    /// also when the step fails, so that the run's rollback sees them — and children emitted
    /// afterwards in this step receive them.
    pub fn context_mut(&mut self) -> &mut CooperationContext {
        &mut self.context
    }

    /// Emits a child message on `topic` (a [`Topic`](crate::Topic), which fixes the payload
    /// type, or a name). Every handler registered for the topic gets a run, and this run's next
    /// step starts only after all of them have finished. The children get this run's context
    /// as it is now, and inherit its deadlines.
    ///
    /// The message is written when the step returns successfully; its id is known at once.
    pub fn emit<P: Serialize + ?Sized>(
        &mut self,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<MessageId> {
        self.push(topic.topic_name(), payload, true, &EmitOptions::new())
            .map(MessageId::from_uuid)
    }

    /// Like [`emit`](Self::emit), with deadlines and context entries for the children on top
    /// of what they inherit: the earliest deadline of each kind wins, and the given entries
    /// win over this run's (this run's own context does not change).
    pub fn emit_with<P: Serialize + ?Sized>(
        &mut self,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<MessageId> {
        self.push(topic.topic_name(), payload, true, &options.into())
            .map(MessageId::from_uuid)
    }

    /// Launches a message on the global scope: a new, independent cooperation root that this
    /// run does not wait for. It is written atomically with the step, and inherits nothing
    /// (no context, no deadlines).
    pub fn launch<P: Serialize + ?Sized>(
        &mut self,
        topic: impl AsTopic<P>,
        payload: &P,
    ) -> Result<RootId> {
        self.push(topic.topic_name(), payload, false, &EmitOptions::new())
            .map(RootId::from_uuid)
    }

    /// Like [`launch`](Self::launch), with deadlines and context for the new root.
    pub fn launch_with<P: Serialize + ?Sized>(
        &mut self,
        topic: impl AsTopic<P>,
        payload: &P,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        self.push(topic.topic_name(), payload, false, &options.into())
            .map(RootId::from_uuid)
    }

    fn push<T: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        payload: &T,
        scoped: bool,
        options: &EmitOptions,
    ) -> Result<Uuid> {
        let limit = self.engine.max_json_bytes;
        if options.idempotency_key.is_some() {
            return Err(Error::Config(format!(
                "an idempotency key makes launches from a client or runtime idempotent; a \
                 step's emissions and launches (here on topic {topic:?}) already happen exactly \
                 once with the step"
            )));
        }
        let emission = Emission::new(topic, payload, options, limit)?;
        let context = if scoped {
            let context = self.context.clone().merged(&options.context).to_stored();
            if let Some(json) = &context {
                validate::size(|| format!("the context for topic {topic:?}"), json, limit)?;
            }
            context
        } else {
            emission.context
        };
        let id = emission.id;
        self.emissions.push(Emission {
            scoped,
            context,
            ..emission
        });
        Ok(id)
    }

    /// Starts the next run of a periodic saga: this message's topic and payload again, on the
    /// global scope, counting one more run.
    pub(crate) fn relaunch_next(&mut self) {
        self.emissions.push(Emission {
            id: new_uuid(),
            topic: self.info.topic.clone(),
            payload: self.info.payload.to_string(),
            scoped: false,
            deadlines: None,
            run_count: self.info.run_count + 1,
            context: self.info.launch_context.clone(),
            key: None,
            occurrence: None,
            strict: None,
        });
    }

    /// Makes the run's next step (or its commit) wait `delay` after this step commits —
    /// measured with the database clock, and durable: a restart does not shorten or lose it.
    /// The run still wakes early for its deadlines and for a cancellation.
    pub fn delay_next(&mut self, delay: Duration) {
        self.wake = Wake::After(delay);
    }

    /// Makes the run's next step wait until `at` (a past time means at once).
    pub fn next_not_before(&mut self, at: SystemTime) {
        self.wake = Wake::At(at);
    }

    /// For periodic sagas: how many runs of the chain came before this one (0 for the first).
    pub fn run_count(&self) -> u32 {
        self.info.run_count
    }

    /// Which attempt of this code this is: 1, or more when earlier attempts failed
    /// transiently and were retried (see [`RetryPolicy`](crate::RetryPolicy)).
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    pub(crate) fn successor_ran(&self) -> bool {
        self.info.successor_ran
    }

    /// The handler (saga) name.
    pub fn handler(&self) -> &str {
        &self.info.handler
    }

    /// Whether the runtime running this step has begun to shut down (`shutdown`,
    /// `shutdown_timeout`, or a signal with `run_until_signal`). A long step can check it
    /// now and then and stop early: returning a [`StepError::transient`] error discards the
    /// step and lets the run be retried (by this runtime's successor, or another one) after
    /// its retry delay. Nothing else changes: a step that ignores it runs to its end, within
    /// the shutdown's grace period.
    ///
    /// [`StepError::transient`]: crate::StepError::transient
    pub fn is_shutting_down(&self) -> bool {
        self.engine
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This run's id.
    pub fn run_id(&self) -> RunId {
        self.info.run_id
    }

    /// The id of the cooperation root this run belongs to.
    pub fn root_id(&self) -> RootId {
        self.info.root_id
    }

    /// The id of the message this run handles.
    pub fn message_id(&self) -> MessageId {
        self.info.message_id
    }

    /// The topic of the message this run handles.
    pub fn topic(&self) -> &str {
        &self.info.topic
    }

    /// The name of the running step.
    pub fn step_name(&self) -> &str {
        &self.info.step_name
    }

    /// The index of the running step.
    pub fn step_index(&self) -> usize {
        self.info.step_index
    }

    /// The saga version that wrote this run, and so runs this code (see
    /// [`SagaOf::version`](crate::SagaOf::version)); `None` for a run written before versions
    /// existed (it is driven by the newest version its runtime serves).
    pub fn saga_version(&self) -> Option<&str> {
        self.info.version.as_deref()
    }

    /// How many times this step has run consecutively before this execution (0 the first
    /// time; reset when another step runs in between). In a compensating action: the iteration
    /// of the execution being undone.
    pub fn iteration(&self) -> u32 {
        self.info.iteration
    }

    /// Whether this is a step's body, its compensating action, or its child-failure handler.
    pub fn phase(&self) -> Phase {
        self.info.phase
    }

    /// Gives back the transaction, and what the code left for the attempt: its `result`,
    /// the buffered emissions, whether (and how) the savepoint was taken, when the next step
    /// may run, and the context as the code left it.
    /// User code is about to use the transaction: what it writes must be rolled back (to the
    /// savepoint taken with the claim) if it fails.
    fn touch(&mut self) {
        self.savepoint = SavepointState::Touched;
    }

    pub(crate) fn finish(
        self,
        result: std::thread::Result<StepResult<Next>>,
    ) -> (X::Tx<'c>, Engine<'c>, UserOutcome) {
        let outcome = UserOutcome {
            result,
            emissions: self.emissions,
            savepoint: self.savepoint,
            wake: self.wake,
            context: self.context,
        };
        (self.tx, self.engine, outcome)
    }
}

impl<X: Flavor> fmt::Debug for StepContext<'_, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("info", &self.info)
            .field("emissions", &self.emissions.len())
            .finish()
    }
}
