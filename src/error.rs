//! The crate's error type.

use std::time::Duration;

use crate::ids::RootId;

/// Everything that can go wrong when configuring, starting or talking to the engine.
///
/// Failures of *user* step code are not errors of this type: they are recorded as
/// [`Failure`](crate::Failure)s on the run and in its history.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name (schema, topic, handler, step) does not satisfy the rules for its kind.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name is for, e.g. `"schema"`.
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A saga definition is malformed (no steps, duplicate step names, ...).
    #[error("invalid saga {saga:?}: {reason}")]
    InvalidSaga {
        /// The saga's handler name.
        saga: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A runtime or client setting is out of range or contradicts another.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The database could not be reached within the connection timeout.
    #[error("could not connect to postgres: {0}")]
    Connect(String),

    /// The schema was migrated by a newer version of this library.
    #[error(
        "schema {schema:?} is at migration version {found}, newer than the {known} this library knows"
    )]
    SchemaTooNew {
        /// The schema in question.
        schema: String,
        /// The highest version recorded in the database.
        found: i32,
        /// The highest version this library ships.
        known: i32,
    },

    /// A payload could not be serialized to JSON.
    #[error("could not serialize the payload for topic {topic:?}: {source}")]
    Encode {
        /// The topic the payload was meant for.
        topic: String,
        /// The serializer's error.
        source: serde_json::Error,
    },

    /// A cooperation-context entry is not valid JSON, or does not deserialize into the type
    /// its key asks for. The context keeps the entry as it was.
    #[error("context entry {key:?} does not deserialize into {expected}: {source}")]
    ContextEntry {
        /// The entry's name.
        key: String,
        /// The type the entry was read as.
        expected: &'static str,
        /// The deserializer's error.
        source: serde_json::Error,
    },

    /// A cooperation-context entry's value could not be serialized to JSON.
    #[error("could not serialize context entry {key:?}: {source}")]
    ContextEncode {
        /// The entry's name.
        key: String,
        /// The serializer's error.
        source: serde_json::Error,
    },

    /// A payload, context or return value is larger than the configured limit; nothing was
    /// written.
    #[error("{what} is {size} bytes of json, over the limit of {limit}")]
    TooLarge {
        /// What was too large, e.g. `payload for topic "orders"`.
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit (see `max_json_bytes` on the client and runtime builders).
        limit: usize,
    },

    /// A payload holds something PostgreSQL cannot store (the character U+0000, which `jsonb`
    /// refuses); nothing was written.
    #[error("{what} cannot be stored: {reason}")]
    NotStorable {
        /// What it was, e.g. `the payload for topic "orders"`.
        what: String,
        /// Why.
        reason: &'static str,
    },

    /// A run stored a return value under a name it had already used.
    #[error("run {run} of handler {handler:?} already returned a value named {name:?}")]
    ReturnValueExists {
        /// The storing run.
        run: crate::ids::RunId,
        /// Its handler.
        handler: String,
        /// The value's name.
        name: String,
    },

    /// A child's return value does not deserialize into the type asked for.
    #[error(
        "the value {name:?} returned by handler {handler:?} (run {run}) does not deserialize into {expected}: {source}"
    )]
    ReturnValue {
        /// The value's name.
        name: String,
        /// The handler of the child that stored it.
        handler: String,
        /// That child run.
        run: crate::ids::RunId,
        /// The type it was read as.
        expected: &'static str,
        /// The deserializer's error.
        source: serde_json::Error,
    },

    /// Several children of one handler returned a value of that name, and one was asked for.
    #[error(
        "{count} children of handler {handler:?} returned a value named {name:?}; read them all with child_values"
    )]
    AmbiguousReturnValue {
        /// The value's name.
        name: String,
        /// The handler.
        handler: String,
        /// How many children of it returned one.
        count: usize,
    },

    /// Waiting for a cooperation tree to finish ran out of time.
    #[error("timed out after {waited:?} waiting for root {root} to finish: {detail}")]
    Timeout {
        /// The root that was waited for.
        root: RootId,
        /// How long the caller waited.
        waited: Duration,
        /// What was still unfinished.
        detail: String,
    },

    /// Waiting for a runtime to run out of due work ran out of time.
    #[error("the runtime still had due work after {waited:?}")]
    NotIdle {
        /// How long the caller waited.
        waited: Duration,
    },

    /// A strict launch named a topic that no handler is registered for; nothing was written.
    #[error(
        "no handler is registered for topic {topic:?} and the launch is strict: nothing was \
         written (register the topic's handlers first, e.g. with Client::register_handler)"
    )]
    Unhandled {
        /// The topic.
        topic: String,
    },

    /// The schema lacks migrations and this runtime was told not to apply them.
    #[error(
        "schema {schema:?} is at migration version {found}, older than the {needed} this \
         library needs, and migrating at start is turned off: run the migrations first \
         (Client::migrate, or the SQL of Client::pending_migrations_sql)"
    )]
    SchemaOutdated {
        /// The schema in question.
        schema: String,
        /// The highest version applied (0: none, or no such schema).
        found: i32,
        /// The version this library needs.
        needed: i32,
    },

    /// The id names nothing in the schema: no root was launched with it (or its tree was
    /// deleted).
    #[error("{what} {id} does not exist")]
    NotFound {
        /// What was looked for, e.g. `"root"`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },

    /// A migration of runs between saga versions was refused before anything was written
    /// (see [`Client::migrate_runs`](crate::Client::migrate_runs)).
    #[error("cannot migrate runs of handler {handler:?}: {reason}")]
    InvalidMigration {
        /// The handler whose runs were to move.
        handler: String,
        /// Why, e.g. a version that was never registered or a step that does not exist.
        reason: String,
    },

    /// A string is not a valid id.
    #[error("{input:?} is not a valid {kind}: {source}")]
    InvalidId {
        /// What the id was for, e.g. `"root id"`.
        kind: &'static str,
        /// The rejected text.
        input: String,
        /// The parser's reason.
        source: uuid::Error,
    },

    /// An out-of-band completion named a run that does not exist or is not waiting for one.
    #[error("no run of handler {handler:?} for message {message} can be completed: {reason}")]
    NotCompletable {
        /// The handler named by the caller.
        handler: String,
        /// The message named by the caller.
        message: crate::ids::MessageId,
        /// Why the completion was refused.
        reason: &'static str,
    },

    /// Shutting down did not go cleanly: a thread panicked, or threads were still running
    /// when the timeout passed.
    #[error("shutdown finished with errors: {0}")]
    ShutdownFailed(String),

    /// A step's code ran longer than the runtime's step timeout (tokio runtime). Its query was
    /// cancelled on the server and its connection closed; the run is retried from its last
    /// committed state.
    #[error("step {step:?} of handler {handler:?} did not finish within {after:?}")]
    StepTimeout {
        /// The handler.
        handler: String,
        /// The step.
        step: String,
        /// The timeout.
        after: Duration,
    },

    /// The signal handlers for a graceful shutdown could not be installed.
    #[error("could not install signal handlers: {0}")]
    Signals(#[source] std::io::Error),

    /// A thread of the runtime could not be started.
    #[error("could not start a thread: {0}")]
    Spawn(#[source] std::io::Error),

    /// An error reported by PostgreSQL or the connection to it.
    #[error("{}", with_sources(.0))]
    Postgres(#[from] postgres::Error),

    /// No connection could be taken from the pool (usually: none became free, or the
    /// database could not be reached, within the connection timeout).
    #[error(transparent)]
    Pool(PoolError),

    /// Stored JSON (a failure, a payload) could not be decoded.
    #[error("could not decode stored json: {0}")]
    Decode(#[from] serde_json::Error),

    /// The database holds a value this version of the library does not recognise (a run
    /// status, an event kind, ...), or lacks a row it relies on. The data was written by
    /// something else (a newer version, a hand edit); nothing was changed.
    #[error("unexpected data in the database: {0}")]
    UnexpectedData(String),
}

/// Why no connection could be taken from a pool, whichever pool implementation the runtime
/// uses.
#[derive(Debug)]
pub struct PoolError {
    timeout: bool,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl PoolError {
    pub(crate) fn new(
        timeout: bool,
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    ) -> PoolError {
        PoolError { timeout, source }
    }

    /// Whether the pool gave up waiting for a connection (the pool was exhausted, or new
    /// connections could not be opened in time).
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not get a connection from the pool: {}",
            with_sources(&*self.source)
        )
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// An r2d2 pool reports nothing but timeouts (carrying the last connection error, if any).
pub(crate) fn from_r2d2(e: r2d2::Error) -> Error {
    Error::Pool(PoolError::new(true, Box::new(e)))
}

impl Error {
    /// Whether retrying the same operation later may succeed (lost connections, pool
    /// timeouts, serialization failures and deadlocks reported by PostgreSQL).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Postgres(e) => is_transient_pg(e),
            Error::Pool(_) | Error::Connect(_) => true,
            _ => false,
        }
    }
}

/// `postgres::Error` displays only its kind ("db error"); the server's message is in its
/// source chain, which is what a reader needs.
pub(crate) fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// Whether a PostgreSQL error is one that a retry from the last committed state can cure.
pub(crate) fn is_transient_pg(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true, // io errors, broken connections
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::CONNECTION_FAILURE
                || *code == SqlState::CONNECTION_EXCEPTION
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::QUERY_CANCELED
        }
    }
}

/// The crate's `Result` alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
