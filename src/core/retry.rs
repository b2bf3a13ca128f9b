//! How often, and how far apart, a step is retried after a transient failure.

use std::time::Duration;

use crate::ids::RunId;

/// How many times a step's code runs before a transient failure fails the run, and how long
/// the run waits between attempts.
///
/// Only *transient* failures are retried: errors the code marks with
/// [`StepError::transient`](crate::StepError::transient), and PostgreSQL's serialization
/// failures (`40001`) and deadlocks (`40P01`) raised by the step's own statements. Any other
/// error, and a panic, fails the run at once. A retry discards everything the attempt did
/// (its writes, emissions and context changes), records a `RETRYING` entry with the failure
/// in the history, and sleeps on the run's durable timer (the database clock, surviving
/// restarts, ended early by a cancellation or a deadline, which then wins). After the last
/// attempt the run takes its rollback path with the last failure.
///
/// The policy applies to a step's body, its child-failure handler and its compensating
/// action alike. Set one per saga with
/// [`SagaBuilder::default_retry`](crate::SagaBuilder::default_retry) and per step with
/// [`SagaBuilder::retry`](crate::SagaBuilder::retry).
///
/// ```
/// use std::time::Duration;
/// use structured_cooperation::RetryPolicy;
///
/// let policy = RetryPolicy::attempts(5).backoff(Duration::from_millis(200), Duration::from_secs(30));
/// assert_eq!(policy.max_attempts(), 5);
/// assert_eq!(RetryPolicy::default(), RetryPolicy::attempts(3));
/// assert_eq!(RetryPolicy::NEVER.max_attempts(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    base: Duration,
    max: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts in all, 100 ms before the second, doubling, at most 10 s apart.
    fn default() -> Self {
        RetryPolicy::attempts(3)
    }
}

impl RetryPolicy {
    /// One attempt: a transient failure fails the run like any other.
    pub const NEVER: RetryPolicy = RetryPolicy {
        attempts: 1,
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    /// `attempts` runs in all (the first one included; 0 counts as 1), with the default
    /// backoff: 100 ms before the second, doubling, at most 10 s.
    pub const fn attempts(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts: if attempts == 0 { 1 } else { attempts },
            ..RetryPolicy::NEVER
        }
    }

    /// Waits `base` before the second attempt, doubling for each one after it, never more
    /// than `max`. Each wait is between half and all of that (spread per run, so runs that
    /// failed together do not retry together).
    pub const fn backoff(self, base: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy { base, max, ..self }
    }

    /// How many times the code runs at most.
    pub const fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether a run whose code failed transiently on attempt `attempt` (1-based) gets
    /// another one.
    pub(crate) fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.attempts
    }

    /// The wait before retry number `retry` (1 for the second attempt) of `run`: the full
    /// backoff scaled into `[0.5, 1)` by a number drawn from the run and the retry, so the
    /// core stays deterministic.
    pub(crate) fn delay(&self, run: RunId, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1 << exp).min(self.max);
        let (hi, lo) = run.as_uuid().as_u64_pair();
        let x = splitmix(hi ^ lo ^ u64::from(retry));
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        full.mul_f64(0.5 + 0.5 * unit)
    }
}

/// One step of the splitmix64 generator: a well-spread function of its input.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_stay_in_the_upper_half() {
        let p =
            RetryPolicy::attempts(10).backoff(Duration::from_millis(100), Duration::from_secs(1));
        let run = RunId::from_uuid(uuid::Uuid::from_u128(0x0123_4567_89ab_cdef));
        for (retry, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let d = p.delay(run, retry);
            let full = Duration::from_millis(full);
            assert!(
                d >= full / 2 && d < full,
                "retry {retry}: {d:?} for {full:?}"
            );
            assert_eq!(d, p.delay(run, retry), "deterministic");
        }
        let other = RunId::from_uuid(uuid::Uuid::from_u128(42));
        assert_ne!(p.delay(run, 1), p.delay(other, 1), "spread across runs");
    }

    #[test]
    fn attempts_count_the_first_one() {
        let p = RetryPolicy::attempts(3);
        assert!(p.allows_another(1) && p.allows_another(2) && !p.allows_another(3));
        assert!(!RetryPolicy::NEVER.allows_another(1));
        assert_eq!(RetryPolicy::attempts(0), RetryPolicy::NEVER);
    }
}
