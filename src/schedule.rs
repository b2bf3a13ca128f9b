//! When the occurrences of a scheduled chain run: a fixed interval, or (with the `cron`
//! feature) a cron expression in a time zone. Pure: every time is given.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// When the occurrences of a chain started with
/// [`Client::schedule`](crate::Client::schedule) run.
///
/// An occurrence is one launch of the chain's topic and payload (a root of its own). The
/// next one is launched when the previous one finishes — committed, rolled back, or failed
/// to roll back — for the schedule's first time after both the previous occurrence's time
/// and the moment it finished: occurrences never overlap, and times missed while one ran
/// long are skipped, not queued.
///
/// ```
/// use std::time::Duration;
/// use structured_cooperation::Schedule;
///
/// let every = Schedule::every(Duration::from_secs(600));
/// assert_eq!(every.to_string(), "every 600s");
/// # #[cfg(feature = "cron")]
/// # {
/// let nightly = Schedule::cron("0 3 * * *")?.in_timezone("Europe/Prague")?;
/// assert_eq!(nightly.to_string(), "cron \"0 3 * * *\" in Europe/Prague");
/// # }
/// # Ok::<(), structured_cooperation::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    spec: Spec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Spec {
    Every(Duration),
    /// A cron expression (5 or 6 fields) and the IANA time zone it is read in.
    Cron {
        expr: String,
        zone: String,
    },
}

impl Schedule {
    /// An occurrence every `interval` (at least 1 ms), the first one at once.
    pub fn every(interval: Duration) -> Schedule {
        Schedule {
            spec: Spec::Every(interval.max(Duration::from_millis(1))),
        }
    }

    /// A cron expression — minute, hour, day of month, month, day of week, with an optional
    /// leading seconds field — read in UTC until [`in_timezone`](Self::in_timezone) says
    /// otherwise. The first occurrence is the first matching time after the chain starts.
    #[cfg(feature = "cron")]
    pub fn cron(expr: &str) -> Result<Schedule> {
        parse_cron(expr)?;
        Ok(Schedule {
            spec: Spec::Cron {
                expr: expr.trim().to_owned(),
                zone: "UTC".to_owned(),
            },
        })
    }

    /// Reads a cron schedule in the IANA time zone `zone` (for example `Europe/Prague`), so
    /// `0 3 * * *` stays at 03:00 local time across daylight-saving changes. An interval
    /// schedule is returned unchanged.
    #[cfg(feature = "cron")]
    pub fn in_timezone(self, zone: &str) -> Result<Schedule> {
        parse_zone(zone)?;
        Ok(match self.spec {
            Spec::Cron { expr, .. } => Schedule {
                spec: Spec::Cron {
                    expr,
                    zone: zone.to_owned(),
                },
            },
            every => Schedule { spec: every },
        })
    }

    /// The first time of the chain, when it starts at `now`.
    pub(crate) fn first(&self, now: SystemTime) -> Result<SystemTime> {
        match &self.spec {
            Spec::Every(_) => Ok(now),
            Spec::Cron { .. } => self.cron_after(now),
        }
    }

    /// The time of the occurrence after one scheduled for `previous` that finished at `now`:
    /// the first time of the schedule after both.
    pub(crate) fn next(&self, previous: SystemTime, now: SystemTime) -> Result<SystemTime> {
        match &self.spec {
            Spec::Every(interval) => {
                let next = previous + *interval;
                if next > now {
                    return Ok(next);
                }
                // Skip the times missed while the occurrence ran: the first slot after now.
                let behind = now.duration_since(previous).unwrap_or_default();
                let slots = behind.as_nanos() / interval.as_nanos().max(1) + 1;
                let skip = interval.saturating_mul(u32::try_from(slots).unwrap_or(u32::MAX));
                Ok(previous + skip)
            }
            Spec::Cron { .. } => self.cron_after(previous.max(now)),
        }
    }

    /// The stored form (see [`parse`](Self::parse)).
    pub(crate) fn to_spec(&self) -> String {
        match &self.spec {
            Spec::Every(interval) => format!("every {}us", interval.as_micros()),
            Spec::Cron { expr, zone } => format!("cron {zone} {expr}"),
        }
    }

    /// Reads a stored schedule. A cron schedule needs the `cron` feature to be used.
    pub(crate) fn parse(spec: &str) -> Result<Schedule> {
        let bad = |why: &str| Error::UnexpectedData(format!("schedule {spec:?}: {why}"));
        if let Some(us) = spec
            .strip_prefix("every ")
            .and_then(|s| s.strip_suffix("us"))
        {
            let us: u64 = us.parse().map_err(|_| bad("not an interval"))?;
            return Ok(Schedule::every(Duration::from_micros(us)));
        }
        let Some((zone, expr)) = spec.strip_prefix("cron ").and_then(|s| s.split_once(' ')) else {
            return Err(bad("neither an interval nor a cron expression"));
        };
        Ok(Schedule {
            spec: Spec::Cron {
                expr: expr.to_owned(),
                zone: zone.to_owned(),
            },
        })
    }

    #[cfg(feature = "cron")]
    fn cron_after(&self, after: SystemTime) -> Result<SystemTime> {
        use chrono::{DateTime, Utc};
        let Spec::Cron { expr, zone } = &self.spec else {
            return Ok(after);
        };
        let cron = parse_cron(expr)?;
        let zone = parse_zone(zone)?;
        let start = DateTime::<Utc>::from(after).with_timezone(&zone);
        let next = cron.find_next_occurrence(&start, false).map_err(|e| {
            Error::Config(format!("cron expression {expr:?} has no next time: {e}"))
        })?;
        Ok(SystemTime::from(next.with_timezone(&Utc)))
    }

    #[cfg(not(feature = "cron"))]
    fn cron_after(&self, _after: SystemTime) -> Result<SystemTime> {
        Err(Error::Config(format!(
            "the schedule {self} is a cron expression: build structured-cooperation with the \
             `cron` feature to run it"
        )))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spec {
            Spec::Every(interval) => write!(f, "every {interval:?}"),
            Spec::Cron { expr, zone } => write!(f, "cron {expr:?} in {zone}"),
        }
    }
}

#[cfg(feature = "cron")]
fn parse_cron(expr: &str) -> Result<croner::Cron> {
    expr.trim()
        .parse::<croner::Cron>()
        .map_err(|e| Error::Config(format!("invalid cron expression {expr:?}: {e}")))
}

#[cfg(feature = "cron")]
fn parse_zone(zone: &str) -> Result<chrono_tz::Tz> {
    zone.parse::<chrono_tz::Tz>()
        .map_err(|_| Error::Config(format!("unknown time zone {zone:?} (use an IANA name)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn intervals_run_at_once_then_keep_their_rate_and_skip_missed_slots() {
        let s = Schedule::every(Duration::from_secs(10));
        assert_eq!(s.first(at(100)).unwrap(), at(100));
        assert_eq!(s.next(at(100), at(103)).unwrap(), at(110));
        // Finished at 135: 110, 120 and 130 are gone.
        assert_eq!(s.next(at(100), at(135)).unwrap(), at(140));
        assert_eq!(s.next(at(100), at(110)).unwrap(), at(120));
        assert_eq!(Schedule::parse(&s.to_spec()).unwrap(), s);
        assert_eq!(s.to_string(), "every 10s");
    }

    #[test]
    fn stored_specs_that_are_not_schedules_are_refused() {
        for bad in ["", "every", "every xus", "hourly", "cron"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(feature = "cron")]
    #[test]
    fn cron_expressions_follow_their_time_zone_across_daylight_saving() {
        let s = Schedule::cron("0 3 * * *")
            .unwrap()
            .in_timezone("Europe/Prague")
            .unwrap();
        assert_eq!(Schedule::parse(&s.to_spec()).unwrap(), s);
        // From 2026-03-27 12:00 UTC: 03:00 in Prague on the 28th is winter time (02:00 UTC);
        // on the 29th, the day daylight saving starts, it is summer time (01:00 UTC).
        let first = s.first(at(1_774_612_800)).unwrap();
        assert_eq!(first, at(1_774_663_200), "2026-03-28 02:00 UTC");
        let second = s.next(first, first + Duration::from_secs(60)).unwrap();
        assert_eq!(second, at(1_774_746_000), "2026-03-29 01:00 UTC");
        assert!(Schedule::cron("not cron").is_err());
        assert!(
            Schedule::cron("0 3 * * *")
                .unwrap()
                .in_timezone("Mars/Olympus")
                .is_err()
        );
    }

    #[cfg(not(feature = "cron"))]
    #[test]
    fn a_stored_cron_schedule_needs_the_feature() {
        let s = Schedule::parse("cron UTC 0 3 * * *").unwrap();
        let e = s.first(at(0)).unwrap_err().to_string();
        assert!(e.contains("`cron` feature"), "{e}");
    }
}
