//! The dispatcher's policy, as a state machine over injected `Instant`s.
//!
//! Workers are handed *tasks*: "try to claim one run of handler `h`" or "sweep". A handler is
//! *hinted* when it may have due work (a notification, a local commit, a timer, a sweep). At most
//! one *probe* per handler is outstanding at a time; each probe that finds work lets the next
//! one go (a cascade that puts as many workers on a handler as it has ready runs, up to its
//! concurrency limit), and a probe that finds nothing clears the hint unless a newer hint
//! arrived meanwhile (tracked by a generation counter). Nothing here blocks, sleeps or reads a
//! clock, so every rule is unit-tested below.

use std::time::{Duration, Instant};

/// How long to wait before retrying after infrastructure errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// First delay; doubles per consecutive error.
    pub(crate) base: Duration,
    /// Longest delay.
    pub(crate) max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The `failures`-th consecutive failure waits between half and all of
    /// `base * 2^(failures-1)`, capped at `max`; `jitter` in `[0, 1)` picks where.
    pub(crate) fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let full = self.base.saturating_mul(1 << exp).min(self.max);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A small xorshift generator for spreading retries and sweeps over time; not for anything
/// secret. The runtime seeds it (from a fresh UUID) so that runtimes started together do not
/// retry in lockstep; tests seed it with a constant.
#[derive(Clone, Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        // xorshift never leaves zero.
        Jitter(seed | 1)
    }

    /// A number in `[0, 1)`.
    pub(crate) fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Work handed to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    /// Claim and process at most one due run of this handler.
    Claim { handler: usize, generation: u64 },
    /// Ask the database which handlers have due runs and when the others' timers fire.
    Sweep,
}

/// How a claim task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimResult {
    /// Runs were processed and the worker stopped only because its batch was used up: the
    /// handler may have more due work.
    Ran,
    /// Nothing was due. `next_wake` is how long until the handler's earliest timer, if any.
    Empty {
        generation: u64,
        next_wake: Option<Duration>,
    },
    /// An infrastructure error (lost connection, ...) ended the attempt.
    Failed,
}

/// What a sweep found for one handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SweepEntry {
    /// The handler has a due run.
    Due(usize),
    /// The handler's earliest runnable run wakes in this long.
    Wait(usize, Duration),
}

#[derive(Debug)]
struct Slot {
    limit: usize,
    hinted: bool,
    generation: u64,
    probing: usize,
    busy: usize,
    timer: Option<Instant>,
    backoff_until: Option<Instant>,
    failures: u32,
}

/// The dispatcher's state.
///
/// # Calling contract
///
/// * **Events in.** [`hint`](Self::hint), [`request_sweep`](Self::request_sweep),
///   [`shut_down`](Self::shut_down) and the `on_*` methods report what happened; they never
///   hand out work themselves.
/// * **Tasks out.** After any of them (and when a deadline passes), call
///   [`next_task`](Self::next_task) until it returns `None`, handing each task to an idle
///   worker. The scheduler counts workers: it never returns more tasks than it was told
///   there are workers, minus those it knows to be busy.
/// * **Answers.** Every task handed out is answered exactly once: a `Task::Claim` by
///   [`on_finished`](Self::on_finished), preceded by at most one
///   [`on_claimed`](Self::on_claimed) once the worker holds a run (and `on_finished`'s
///   `claimed` says whether it was sent); a `Task::Sweep` by
///   [`on_sweep_done`](Self::on_sweep_done).
/// * **Sleep.** With nothing to hand out, wait for the next event or until
///   [`next_deadline`](Self::next_deadline) (forever if `None`), whichever comes first.
/// * **Time.** Every `now` is a monotonic clock reading (`Instant`), and never goes
///   backwards from one call to the next. Jitter is a number in `[0, 1)` (see [`Jitter`]).
#[derive(Debug)]
pub(crate) struct Scheduler {
    slots: Vec<Slot>,
    idle_workers: usize,
    cursor: usize,
    safety_net: Duration,
    next_sweep: Instant,
    sweep_requested: bool,
    sweep_in_flight: bool,
    sweep_failures: u32,
    shutting_down: bool,
    backoff: Backoff,
}

impl Scheduler {
    /// `limits[h]` is handler `h`'s concurrency. The first sweep is due at once.
    pub(crate) fn new(
        limits: &[usize],
        workers: usize,
        safety_net: Duration,
        backoff: Backoff,
        now: Instant,
    ) -> Scheduler {
        Scheduler {
            slots: limits
                .iter()
                .map(|&limit| Slot {
                    limit,
                    hinted: false,
                    generation: 0,
                    probing: 0,
                    busy: 0,
                    timer: None,
                    backoff_until: None,
                    failures: 0,
                })
                .collect(),
            idle_workers: workers,
            cursor: 0,
            safety_net,
            next_sweep: now + safety_net,
            sweep_requested: true,
            sweep_in_flight: false,
            sweep_failures: 0,
            shutting_down: false,
            backoff,
        }
    }

    /// Handler `h` may have due work.
    pub(crate) fn hint(&mut self, h: usize) {
        if let Some(slot) = self.slots.get_mut(h) {
            slot.hinted = true;
            slot.generation += 1;
        }
    }

    /// Ask for a sweep as soon as a worker is free (after a reconnect, for instance).
    pub(crate) fn request_sweep(&mut self) {
        self.sweep_requested = true;
    }

    /// A probe for `h` found a run and is now running it.
    pub(crate) fn on_claimed(&mut self, h: usize) {
        let slot = &mut self.slots[h];
        slot.probing = slot.probing.saturating_sub(1);
        slot.busy += 1;
    }

    /// A claim task for `h` ended. `jitter` is a number in `[0, 1)` used to spread retries.
    pub(crate) fn on_finished(
        &mut self,
        h: usize,
        claimed: bool,
        result: ClaimResult,
        now: Instant,
        jitter: f64,
    ) {
        self.idle_workers += 1;
        let slot = &mut self.slots[h];
        if claimed {
            slot.busy = slot.busy.saturating_sub(1);
        } else {
            slot.probing = slot.probing.saturating_sub(1);
        }
        match result {
            ClaimResult::Ran => {
                slot.failures = 0;
                // Whatever a concurrent probe concluded (it may have found this worker's run
                // locked and cleared the hint), there may be more: keep the handler warm.
                slot.hinted = true;
                slot.generation += 1;
            }
            ClaimResult::Empty {
                generation,
                next_wake,
            } => {
                slot.failures = 0;
                if generation == slot.generation {
                    slot.hinted = false;
                }
                if let Some(wait) = next_wake {
                    set_timer(&mut slot.timer, now + wait);
                }
            }
            ClaimResult::Failed => {
                slot.failures += 1;
                let retry = now + self.backoff.delay(slot.failures, jitter);
                slot.backoff_until = Some(retry);
                // Keep the hint: the work is still there once the database answers again. A
                // new generation, because a probe sent before this failure may have found the
                // failed run still locked and is about to report "empty": that report must
                // not clear this hint.
                slot.hinted = true;
                slot.generation += 1;
                // And retry when the backoff ends even if something clears the hint meanwhile
                // (a later probe can still find the run locked by a connection the server has
                // not reaped yet): the retry is a timer, not only a condition on the hint.
                set_timer(&mut slot.timer, retry);
            }
        }
    }

    /// A sweep ended; `found` is `None` if it failed.
    pub(crate) fn on_sweep_done(
        &mut self,
        found: Option<&[SweepEntry]>,
        now: Instant,
        jitter: f64,
    ) {
        self.idle_workers += 1;
        self.sweep_in_flight = false;
        match found {
            Some(entries) => {
                self.sweep_failures = 0;
                for entry in entries {
                    match *entry {
                        SweepEntry::Due(h) => self.hint(h),
                        SweepEntry::Wait(h, wait) => {
                            if let Some(slot) = self.slots.get_mut(h) {
                                set_timer(&mut slot.timer, now + wait);
                            }
                        }
                    }
                }
                // Spread sweeps of many runtimes over time instead of letting them align.
                self.next_sweep = now + self.safety_net.mul_f64(0.9 + 0.2 * jitter);
            }
            None => {
                self.sweep_failures += 1;
                self.next_sweep = now
                    + self
                        .backoff
                        .delay(self.sweep_failures, jitter)
                        .min(self.safety_net);
            }
        }
    }

    /// The next task to hand to an idle worker, if any. Call until it returns `None`.
    pub(crate) fn next_task(&mut self, now: Instant) -> Option<Task> {
        self.fire_timers(now);
        if self.shutting_down || self.idle_workers == 0 {
            return None;
        }
        if !self.sweep_in_flight && (self.sweep_requested || now >= self.next_sweep) {
            self.sweep_requested = false;
            self.sweep_in_flight = true;
            self.idle_workers -= 1;
            return Some(Task::Sweep);
        }
        let n = self.slots.len();
        for offset in 0..n {
            let h = (self.cursor + offset) % n;
            let slot = &mut self.slots[h];
            let backing_off = slot.backoff_until.is_some_and(|t| t > now);
            if slot.hinted
                && slot.probing == 0
                && slot.probing + slot.busy < slot.limit
                && !backing_off
            {
                slot.probing += 1;
                self.idle_workers -= 1;
                self.cursor = (h + 1) % n;
                return Some(Task::Claim {
                    handler: h,
                    generation: slot.generation,
                });
            }
        }
        None
    }

    fn fire_timers(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.timer.is_some_and(|t| t <= now) {
                slot.timer = None;
                slot.hinted = true;
                slot.generation += 1;
            }
            if slot.backoff_until.is_some_and(|t| t <= now) {
                slot.backoff_until = None;
            }
        }
    }

    /// When the dispatcher must wake up even if no event arrives.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.shutting_down {
            return None;
        }
        let mut deadline = (!self.sweep_in_flight).then_some(self.next_sweep);
        for slot in &self.slots {
            for t in [slot.timer, slot.backoff_until.filter(|_| slot.hinted)]
                .into_iter()
                .flatten()
            {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        }
        deadline
    }

    /// Stop handing out tasks; in-flight ones finish.
    pub(crate) fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Nothing is running or being probed.
    pub(crate) fn is_drained(&self) -> bool {
        !self.sweep_in_flight && self.slots.iter().all(|s| s.probing == 0 && s.busy == 0)
    }

    /// Drained and no handler is waiting to be probed: the runtime believes it has no due work.
    pub(crate) fn is_quiescent(&self, now: Instant) -> bool {
        self.is_drained()
            && !self.sweep_requested
            && self
                .slots
                .iter()
                .all(|s| !s.hinted && s.timer.is_none_or(|t| t > now))
    }
}

fn set_timer(timer: &mut Option<Instant>, at: Instant) {
    *timer = Some(timer.map_or(at, |t| t.min(at)));
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
