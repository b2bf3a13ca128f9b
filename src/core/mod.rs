//! The pure core: decisions without a database, threads or a clock.
//!
//! Two state machines live here, and both are plain data in, plain data out:
//!
//! * [`decide`] and [`rollback`] answer "given this run's state (its status, next step, iteration, how its
//!   children ended) what happens next, and what does the outcome of a step turn into?". The
//!   blocking runtime (and later the tokio runtime) claims a run, asks
//!   [`decide::next_action`], runs user code if told to, and persists the [`decide::Transition`]
//!   it gets back from [`decide::after_step`] or [`decide::commit`]. The structured-cooperation
//!   rule itself lives in the store's bookkeeping (a run is only claimable when its
//!   unfinished-children count is zero); this module decides what the run does once it is.
//! * [`schedule`] is the runtime's dispatcher policy: which handler a free worker should try
//!   next, when to stop probing, when timers fire and how far to back off after an
//!   infrastructure error. Time is passed in as `Instant`s by the caller.

pub(crate) mod attempt;
pub(crate) mod decide;
pub(crate) mod migration;
pub(crate) mod operator;
mod retry;
pub(crate) mod rollback;
pub(crate) mod schedule;
mod state;

pub use retry::RetryPolicy;
pub use state::{EventKind, Next, RunStatus};
pub(crate) use state::{Instance, InstanceKind, RunView, StepShape, VersionShape, Wake};
