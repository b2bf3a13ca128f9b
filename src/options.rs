//! What an emission or launch can carry besides its payload.

use crate::context::CooperationContext;
use crate::deadline::Deadlines;

/// Deadlines and cooperation-context entries given to one emission or launch.
///
/// For a child ([`StepContext::emit_with`](crate::StepContext::emit_with)) both come on top of
/// what it inherits from its parent: the earliest deadline of each kind wins, and these context
/// entries win over the parent's. A launch (a new root) inherits nothing and gets exactly these.
///
/// Anything that converts into it can be passed: `&Deadlines`, `&CooperationContext`, or the
/// full set built here.
///
/// ```
/// use std::time::Duration;
/// use structured_cooperation::{CooperationContext, Deadlines, EmitOptions};
///
/// let mut context = CooperationContext::new();
/// context.set_raw("Tenant", r#""acme""#).unwrap();
/// let options = EmitOptions::new()
///     .deadlines(Deadlines::new().happy_path_within(Duration::from_secs(30), "checkout"))
///     .context(context);
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmitOptions {
    pub(crate) deadlines: Deadlines,
    pub(crate) context: CooperationContext,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) strict: Option<bool>,
}

impl EmitOptions {
    /// Nothing beyond what is inherited.
    pub fn new() -> EmitOptions {
        EmitOptions::default()
    }

    /// Sets the deadlines.
    pub fn deadlines(mut self, deadlines: Deadlines) -> EmitOptions {
        self.deadlines = deadlines;
        self
    }

    /// Sets the context entries.
    pub fn context(mut self, context: CooperationContext) -> EmitOptions {
        self.context = context;
        self
    }

    /// Makes a launch idempotent: the first launch with this key creates the root, and every
    /// later one (from any process, also while the first is committing) creates nothing and
    /// returns the first one's [`RootId`](crate::RootId). Keys are unique per schema and are
    /// kept as long as the root's message is (until the tree is pruned).
    ///
    /// Only for launches through a client or runtime (`launch_with`, `launch_in_with`): a
    /// step's emissions and launches already happen exactly once with the step, and one with
    /// a key is refused. A key is 1 to 500 characters, without U+0000.
    ///
    /// ```no_run
    /// use structured_cooperation::EmitOptions;
    ///
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let client = structured_cooperation::Client::builder("postgres://postgres@127.0.0.1/postgres").connect()?;
    /// let once = EmitOptions::new().idempotency_key("order-7/checkout");
    /// let first = client.launch_with("orders", &7, once.clone())?;
    /// let again = client.launch_with("orders", &7, once)?;
    /// assert_eq!(first, again);
    /// # Ok(())
    /// # }
    /// ```
    pub fn idempotency_key(mut self, key: impl Into<String>) -> EmitOptions {
        self.idempotency_key = Some(key.into());
        self
    }
}

impl EmitOptions {
    /// Whether this emission is refused when no handler is registered for its topic,
    /// overriding the runtime's or client's `strict_topics` setting. Strict, a step's
    /// emission fails the step (a failure of type `structured_cooperation::UnhandledTopic`,
    /// nothing of the step is kept) and a launch fails with
    /// [`Error::Unhandled`](crate::Error::Unhandled), writing nothing. Not strict (the
    /// default), the message is written and waited for by nobody: its emitter carries on at
    /// once, and the history, the log and [`RuntimeStats::unhandled`](crate::RuntimeStats)
    /// say so.
    ///
    /// ```
    /// use structured_cooperation::EmitOptions;
    ///
    /// let must_be_handled = EmitOptions::new().strict(true);
    /// # let _ = must_be_handled;
    /// ```
    pub fn strict(mut self, strict: bool) -> EmitOptions {
        self.strict = Some(strict);
        self
    }
}

impl From<Deadlines> for EmitOptions {
    fn from(deadlines: Deadlines) -> Self {
        EmitOptions::new().deadlines(deadlines)
    }
}

impl From<&Deadlines> for EmitOptions {
    fn from(deadlines: &Deadlines) -> Self {
        EmitOptions::new().deadlines(deadlines.clone())
    }
}

impl From<CooperationContext> for EmitOptions {
    fn from(context: CooperationContext) -> Self {
        EmitOptions::new().context(context)
    }
}

impl From<&CooperationContext> for EmitOptions {
    fn from(context: &CooperationContext) -> Self {
        EmitOptions::new().context(context.clone())
    }
}

impl From<&EmitOptions> for EmitOptions {
    fn from(options: &EmitOptions) -> Self {
        options.clone()
    }
}
