//! The tokio runtime's dispatcher: the same [`Scheduler`] as the blocking one's, driven by a
//! task that sleeps on a channel or the next deadline, and spawns a task per unit of work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::runtime::Shared;
use super::worker;
use crate::core::schedule::{Backoff, Scheduler};
use crate::runtime::common::{Event, handle, seeded_jitter};

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<Event>,
    workers: usize,
    safety_net: Duration,
    backoff: Backoff,
) {
    let limits: Vec<usize> = shared
        .registry
        .handlers
        .iter()
        .map(|h| h.concurrency)
        .collect();
    let mut sched = Scheduler::new(&limits, workers, safety_net, backoff, Instant::now());
    let mut jitter = seeded_jitter();
    // Dropping this (when the dispatcher is aborted) drops every task: a crash at that point.
    let mut tasks = JoinSet::new();
    loop {
        let now = Instant::now();
        while let Some(task) = sched.next_task(now) {
            tasks.spawn(worker::run_task(shared.clone(), task));
        }
        while tasks.try_join_next().is_some() {}
        shared.quiescent.send_replace(sched.is_quiescent(now));
        if sched.is_shutting_down() && sched.is_drained() {
            return;
        }
        let event = match sched.next_deadline() {
            Some(deadline) => {
                let deadline = ::tokio::time::Instant::from_std(deadline);
                ::tokio::select! {
                    event = events.recv() => event,
                    () = ::tokio::time::sleep_until(deadline) => continue,
                }
            }
            None => events.recv().await,
        };
        // The channel closes only when the runtime (and every task) is gone.
        let Some(event) = event else { return };
        handle(&mut sched, event, Instant::now(), &mut jitter);
        // Take whatever else is queued before dispatching again.
        while let Ok(event) = events.try_recv() {
            handle(&mut sched, event, Instant::now(), &mut jitter);
        }
    }
}
