//! The dispatcher thread: a thin loop around [`Scheduler`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Shared;
use super::common::{Event, handle, seeded_jitter};
use crate::core::schedule::{Backoff, Scheduler, Task};

pub(crate) fn run(
    shared: Arc<Shared>,
    events: Receiver<Event>,
    tasks: Sender<Task>,
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
    loop {
        let now = Instant::now();
        while let Some(task) = sched.next_task(now) {
            if tasks.send(task).is_err() {
                log::error!("all workers are gone; the dispatcher stops");
                return;
            }
        }
        shared.signals.set_quiescent(sched.is_quiescent(now));
        if sched.is_shutting_down() && sched.is_drained() {
            return;
        }
        let event = match sched.next_deadline() {
            Some(deadline) => match events.recv_deadline(deadline) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match events.recv() {
                Ok(event) => event,
                Err(_) => return,
            },
        };
        handle(&mut sched, event, Instant::now(), &mut jitter);
        // Take whatever else is queued before dispatching again.
        while let Ok(event) = events.try_recv() {
            handle(&mut sched, event, Instant::now(), &mut jitter);
        }
    }
}
