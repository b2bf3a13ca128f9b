//! The dispatcher thread: a thin loop around [`Scheduler`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Shared;
use crate::core::schedule::{Backoff, ClaimResult, Jitter, Scheduler, SweepEntry, Task};

/// What the dispatcher hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// Handler `h` may have due work.
    Hint(usize),
    /// A probe of handler `h` claimed a run.
    Claimed(usize),
    /// A claim task of handler `h` ended.
    Finished {
        handler: usize,
        claimed: bool,
        result: ClaimResult,
    },
    /// A sweep ended (`None`: it failed).
    SweepDone(Option<Vec<SweepEntry>>),
    /// Notifications may have been lost: sweep soon.
    SweepRequested,
    /// Stop handing out work and exit once running tasks are done.
    Shutdown,
}

pub(crate) fn run(
    shared: Arc<Shared>,
    events: Receiver<Event>,
    tasks: Sender<Task>,
    workers: usize,
    safety_net: Duration,
    backoff: Backoff,
) {
    let limits: Vec<usize> = shared.handlers.iter().map(|h| h.concurrency).collect();
    let mut sched = Scheduler::new(&limits, workers, safety_net, backoff, Instant::now());
    // Seeded per runtime, so that runtimes started together do not retry in lockstep.
    let mut jitter = Jitter::new(crate::ids::new_uuid().as_u64_pair().1);
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
        handle(&mut sched, event, &mut jitter);
        // Take whatever else is queued before dispatching again.
        while let Ok(event) = events.try_recv() {
            handle(&mut sched, event, &mut jitter);
        }
    }
}

fn handle(sched: &mut Scheduler, event: Event, jitter: &mut Jitter) {
    let now = Instant::now();
    match event {
        Event::Hint(h) => sched.hint(h),
        Event::Claimed(h) => sched.on_claimed(h),
        Event::Finished {
            handler,
            claimed,
            result,
        } => sched.on_finished(handler, claimed, result, now, jitter.next()),
        Event::SweepDone(found) => sched.on_sweep_done(found.as_deref(), now, jitter.next()),
        Event::SweepRequested => sched.request_sweep(),
        Event::Shutdown => sched.shut_down(),
    }
}
