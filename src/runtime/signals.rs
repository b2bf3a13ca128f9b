//! Shutting down on SIGTERM / SIGINT (the `signals` feature, Unix).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag::register_conditional_shutdown;
use signal_hook::iterator::Signals;

use super::Runtime;
use crate::error::{Error, Result};

/// Installs the handlers: the first SIGTERM or SIGINT is delivered to `Signals`, a second one
/// ends the process at once (exit code 1), as an impatient operator expects.
pub(crate) fn termination_signals() -> Result<(Signals, Arc<AtomicBool>)> {
    let second = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        register_conditional_shutdown(signal, 1, second.clone()).map_err(Error::Signals)?;
    }
    let signals = Signals::new([SIGTERM, SIGINT]).map_err(Error::Signals)?;
    Ok((signals, second))
}

pub(crate) fn name(signal: i32) -> &'static str {
    if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}

impl Runtime {
    /// Serves until the process receives SIGTERM or SIGINT, then shuts down: no new step
    /// starts, [`StepContext::is_shutting_down`](crate::StepContext::is_shutting_down) turns
    /// true, and running steps get up to `grace` to finish (as with
    /// [`shutdown_timeout`](Self::shutdown_timeout)). A step that has not committed by then
    /// is abandoned: its transaction rolls back when the process exits and another runtime
    /// runs it again; nothing stays claimed. A second signal ends the process at once.
    ///
    /// Blocks the calling thread (typically `main`'s last call). Needs the `signals` feature.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # fn main() -> structured_cooperation::Result<()> {
    /// # let saga = structured_cooperation::Saga::builder("s").step(|_, _: &serde_json::Value| Ok(())).build()?;
    /// let runtime = structured_cooperation::Runtime::builder("postgres://postgres@127.0.0.1/postgres")
    ///     .subscribe("orders", saga)
    ///     .start()?;
    /// runtime.run_until_signal(Duration::from_secs(20))?; // e.g. within Kubernetes' 30 s
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_until_signal(self, grace: Duration) -> Result<()> {
        let (mut signals, second) = termination_signals()?;
        let received = signals.forever().next();
        second.store(true, Ordering::SeqCst);
        log::info!(
            "{}: shutting down; running steps have {grace:?} to finish",
            received.map_or("signals closed", name)
        );
        self.shutdown_timeout(grace)
    }
}
