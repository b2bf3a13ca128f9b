//! Shutdown as a long step sees it (issue 11): `StepContext::is_shutting_down` turns true when
//! the runtime begins to stop, so the step can end early and be retried later. (A real
//! SIGTERM to a process: `tests/multiprocess/graceful.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use structured_cooperation::{EventKind, StepContext, StepError, StepResult};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT, eventually};

fn a_long_step_learns_that_shutdown_began<E: Engine>() {
    let db = TestDb::new("shutting_down");
    let running = Arc::new(AtomicBool::new(false));
    let saga = {
        let running = running.clone();
        E::saga("long")
            .step(
                move |ctx: &mut StepContext<'_, E::X>, _: &Value| -> StepResult {
                    running.store(true, Ordering::SeqCst);
                    let started = Instant::now();
                    while !ctx.is_shutting_down() {
                        assert!(started.elapsed() < WAIT, "shutdown never showed");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(StepError::transient(StepError::msg("shutting down")))
                },
            )
            .build()
            .unwrap()
    };
    let runtime = E::runtime(&db).subscribe("t", saga).start().unwrap();
    let root = runtime.launch("t", &json!({})).unwrap();
    eventually("the step to run", || running.load(Ordering::SeqCst));
    let started = Instant::now();
    runtime.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    // The step ended early and its run waits for a retry, by whichever runtime comes next.
    let client = db.client();
    let history = client.history(root).unwrap();
    assert!(
        history.iter().any(|e| e.kind == EventKind::Retrying),
        "{history:?}"
    );
    assert!(!client.outcome(root).unwrap().is_finished());
}

both!(a_long_step_learns_that_shutdown_began);
