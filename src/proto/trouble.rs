//! Statements for runs in trouble: a step retried after a transient error, a run pushed back
//! after infrastructure errors, a run whose own data the database refused, and the listing
//! that shows them to operators.

use std::time::{Duration, SystemTime};

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::{GiveUpCheck, Statement, StmtId, failure_text, millis_col, status, u32_col};
use crate::core::RunStatus;
use crate::error::Result;
use crate::failure::Failure;
use crate::ids::{RootId, RunId};

/// Schedules another attempt of the code that just failed with a transient error: the run's
/// state stays as it was (so the same code runs again), `retries` counts one more, the run
/// sleeps for the delay (on the database clock, woken early by its deadlines), and the
/// history gets a `RETRYING` entry with the failure. The give-up check runs first, as for any
/// step's results.
#[derive(Debug)]
pub(crate) struct ScheduleRetry<'a> {
    pub(crate) run: Uuid,
    pub(crate) delay_us: i64,
    pub(crate) step: String,
    pub(crate) failure: String,
    pub(crate) worker: &'a str,
    pub(crate) error: String,
    pub(crate) check: Option<bool>,
}

impl<'a> ScheduleRetry<'a> {
    pub(crate) fn new(
        run: RunId,
        delay: Duration,
        step: &str,
        failure: &Failure,
        worker: &'a str,
        check: GiveUpCheck,
    ) -> Result<ScheduleRetry<'a>> {
        Ok(ScheduleRetry {
            run: run.as_uuid(),
            delay_us: i64::try_from(delay.as_micros()).unwrap_or(i64::MAX),
            step: step.to_owned(),
            failure: failure_text(failure)?,
            worker,
            error: failure.message().replace('\0', "\u{fffd}"),
            check: check.param(),
        })
    }

    pub(crate) const SQL: &'static str = "
WITH checked AS MATERIALIZED (
    SELECT CASE WHEN $7::bool IS NULL THEN true
                ELSE __S__.check_give_up((SELECT root_id FROM __S__.runs WHERE id = $1), $1,
                                         $7::bool) END AS ok
),
run AS (
    UPDATE __S__.runs SET
        retries = retries + 1,
        last_error = $6,
        wake_at = least(clock_timestamp() + $2::int8 * interval '1 microsecond',
                        CASE WHEN status = 'active' THEN least(happy_deadline, absolute_deadline) END),
        started_at = coalesce(started_at, clock_timestamp()),
        updated_at = clock_timestamp()
    WHERE id = $1 AND (SELECT ok FROM checked)
    RETURNING root_id, message_id, handler, retries
),
hist AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, step, failure, worker)
    SELECT root_id, $1, message_id, 'RETRYING', handler, $3, $4::text::jsonb, $5 FROM run
)
SELECT retries FROM run";
}

impl Statement for ScheduleRetry<'_> {
    /// How many retries the run has had for this code, this one included.
    type Output = u32;

    fn id(&self) -> StmtId {
        StmtId::ScheduleRetry
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.run,
            &self.delay_us,
            &self.step,
            &self.failure,
            &self.worker,
            &self.error,
            &self.check,
        ]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<u32> {
        let row = super::one(rows)?;
        u32_col(&row, "retries")
    }
}

/// Pushes a run back after an attempt at it ended in an infrastructure error: one more
/// consecutive failure, the error kept for operators, and `wake_at` moved out by the retry
/// backoff (base doubling per consecutive failure up to the maximum, the actual delay
/// between half and all of it, drawn by the database), but never past a deadline. Runs on
/// its own (autocommit) after the failed transaction ended; a run someone else holds by now
/// is left alone.
#[derive(Debug)]
pub(crate) struct Postpone {
    pub(crate) run: Uuid,
    pub(crate) error: String,
    pub(crate) base_us: f64,
    pub(crate) max_us: f64,
}

impl Postpone {
    pub(crate) fn new(run: RunId, error: &str, base: Duration, max: Duration) -> Postpone {
        Postpone {
            run: run.as_uuid(),
            error: error.replace('\0', "\u{fffd}"),
            base_us: base.as_micros() as f64,
            max_us: max.as_micros() as f64,
        }
    }

    pub(crate) const SQL: &'static str = "
WITH target AS (
    SELECT id FROM __S__.runs
    WHERE id = $1 AND status IN ('active', 'rolling_back')
    FOR UPDATE SKIP LOCKED
)
UPDATE __S__.runs r SET
    infra_failures = r.infra_failures + 1,
    last_error = $2,
    wake_at = greatest(r.wake_at, least(
        clock_timestamp() + least($4::float8, $3::float8 * power(2, least(r.infra_failures, 30)))
                            * (0.5 + 0.5 * random()) * interval '1 microsecond',
        CASE WHEN r.status = 'active' THEN least(r.happy_deadline, r.absolute_deadline) END)),
    updated_at = clock_timestamp()
FROM target
WHERE r.id = target.id
RETURNING r.infra_failures,
          greatest(0, ceil(extract(epoch FROM r.wake_at - clock_timestamp()) * 1000))::int8
              AS wait_ms";
}

/// What [`Postpone`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Postponed {
    /// Consecutive infrastructure failures of the run, this one included.
    pub(crate) failures: u32,
    /// How long until the run is due again.
    pub(crate) wait: Duration,
}

impl Statement for Postpone {
    /// `None`: the run was finished or held by someone else.
    type Output = Option<Postponed>;

    fn id(&self) -> StmtId {
        StmtId::Postpone
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.run, &self.error, &self.base_us, &self.max_us]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<Postponed>> {
        rows.first()
            .map(|row| {
                Ok(Postponed {
                    failures: u32_col(row, "infra_failures")?,
                    wait: millis_col(row, "wait_ms")?,
                })
            })
            .transpose()
    }
}

/// Marks a run whose own data the database refused in the engine's statements (a data
/// exception): the failure is stored as the run's poison, and the run, due at once, fails
/// with it when it is claimed next instead of repeating what cannot succeed. Runs on its
/// own (autocommit) after the failed transaction ended.
#[derive(Debug)]
pub(crate) struct Poison {
    pub(crate) run: Uuid,
    pub(crate) failure: String,
    pub(crate) error: String,
}

impl Poison {
    pub(crate) fn new(run: RunId, failure: &Failure) -> Result<Poison> {
        Ok(Poison {
            run: run.as_uuid(),
            failure: failure_text(failure)?,
            error: failure.message().replace('\0', "\u{fffd}"),
        })
    }

    pub(crate) const SQL: &'static str = "
WITH target AS (
    SELECT id, poison IS NULL AS first FROM __S__.runs
    WHERE id = $1 AND status IN ('active', 'rolling_back')
    FOR UPDATE SKIP LOCKED
)
UPDATE __S__.runs r SET
    poison = $2::text::jsonb,
    last_error = $3,
    infra_failures = r.infra_failures + 1,
    wake_at = clock_timestamp(),
    updated_at = clock_timestamp()
FROM target
WHERE r.id = target.id
RETURNING target.first";
}

impl Statement for Poison {
    /// Whether the run was marked (not if it was finished or held by someone else), and if
    /// so whether it was the first mark: two attempts can meet the same refusal (the run is
    /// claimable between one's rollback and its mark), and the run counts once.
    type Output = Option<bool>;

    fn id(&self) -> StmtId {
        StmtId::Poison
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.run, &self.failure, &self.error]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<bool>> {
        rows.first()
            .map(|row| row.try_get("first").map_err(Into::into))
            .transpose()
    }
}

/// Unfinished runs that are being retried or failing with infrastructure errors, most
/// recently touched first.
#[derive(Debug)]
pub(crate) struct Troubled {
    pub(crate) limit: i64,
}

impl Troubled {
    pub(crate) const SQL: &'static str = "
SELECT id, root_id, handler, topic, status, step_index, retries, infra_failures, last_error,
       wake_at, updated_at
FROM __S__.runs
WHERE (retries > 0 OR infra_failures > 0) AND status IN ('active', 'rolling_back')
ORDER BY updated_at DESC
LIMIT $1";
}

/// One run in trouble, as [`Troubled`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TroubledRow {
    pub(crate) id: RunId,
    pub(crate) root_id: RootId,
    pub(crate) handler: String,
    pub(crate) topic: String,
    pub(crate) status: RunStatus,
    pub(crate) step_index: u32,
    pub(crate) retries: u32,
    pub(crate) infra_failures: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) wake_at: SystemTime,
    pub(crate) updated_at: SystemTime,
}

impl Statement for Troubled {
    type Output = Vec<TroubledRow>;

    fn id(&self) -> StmtId {
        StmtId::Troubled
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.limit]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<TroubledRow>> {
        rows.iter()
            .map(|row| {
                Ok(TroubledRow {
                    id: RunId::from_uuid(row.try_get("id")?),
                    root_id: RootId::from_uuid(row.try_get("root_id")?),
                    handler: row.try_get("handler")?,
                    topic: row.try_get("topic")?,
                    status: status(row, "status")?,
                    step_index: u32_col(row, "step_index")?,
                    retries: u32_col(row, "retries")?,
                    infra_failures: u32_col(row, "infra_failures")?,
                    last_error: row.try_get("last_error")?,
                    wake_at: row.try_get("wake_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }
}
