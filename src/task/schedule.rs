//! Periodic schedules: a task enqueued at every tick of a cron expression (in a time zone) or
//! of a fixed interval. The domain types and the tick arithmetic; nothing here knows SeaORM.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;

use super::model::NewTaskExecution;
use crate::error::{Error, Result};
use crate::status::status_enum;

/// Most ticks one firing of a [`MissedTicks::CatchUp`] schedule enqueues; the rest follow in the
/// next firings.
pub(crate) const MAX_TICKS_PER_FIRE: usize = 100;

/// When the ticks of a schedule fall.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScheduleSpec {
    /// At the times a cron expression matches, read in an IANA time zone (daylight saving
    /// included). Five fields (minute to weekday) or six (with seconds first).
    Cron {
        /// The expression, for example `0 3 * * *` (every day at 03:00).
        expression: String,
        /// The IANA time zone, for example `Europe/Zurich` (`UTC` by default).
        time_zone: String,
    },
    /// Every `every_ms` milliseconds, counted from the first tick.
    Interval {
        /// The interval, in milliseconds (at least 1).
        every_ms: i64,
    },
}

status_enum! {
    /// What happens to the ticks a schedule missed while no executor was running it. Stored as
    /// `skip` or `catch_up`.
    #[derive(Default)]
    #[strum(serialize_all = "snake_case")]
    pub enum MissedTicks {
        /// Only the most recent missed tick is enqueued; the ones before it are dropped.
        #[default]
        Skip,
        /// Every missed tick is enqueued, oldest first (at most 100 per firing, the rest in the
        /// next ones).
        CatchUp,
    }
}

/// A schedule as stored: which task, with which input, at which ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSchedule {
    /// Unique id of the schedule (1 to [`MAX_SCHEDULE_ID_LEN`](crate::task::MAX_SCHEDULE_ID_LEN) bytes).
    pub schedule_id: String,
    /// The task enqueued at each tick.
    pub task_id: String,
    /// The serialized input of every execution.
    pub input: String,
    /// When the ticks fall.
    pub spec: ScheduleSpec,
    /// What happens to ticks missed during downtime.
    pub missed_ticks: MissedTicks,
    /// The next tick not enqueued yet (epoch ms); `None` once the schedule has ended: its cron
    /// expression has no tick after the last one enqueued (a bounded expression such as
    /// `0 0 0 1 1 * 2027`).
    pub next_tick_at: Option<i64>,
    /// The last tick enqueued (epoch ms).
    pub last_tick_at: Option<i64>,
    /// When the schedule was first saved (epoch ms).
    pub created_at: i64,
    /// When it was last written (epoch ms).
    pub updated_at: i64,
}

impl TaskSchedule {
    /// Whether `other` defines the same schedule (task, input, ticks, policy), whatever its
    /// progress.
    pub fn same_definition(&self, other: &TaskSchedule) -> bool {
        self.schedule_id == other.schedule_id
            && self.task_id == other.task_id
            && self.input == other.input
            && self.spec == other.spec
            && self.missed_ticks == other.missed_ticks
    }
}

/// One firing of a due schedule: its `next_tick_at` moves from `expected_next_tick_at` to
/// `new_next_tick_at` and the tick's executions are enqueued, all or nothing
/// ([`TaskExecutionStorage::fire_task_schedule`](crate::task::storage::TaskExecutionStorage::fire_task_schedule)).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleFire {
    /// The schedule.
    pub schedule_id: String,
    /// The `next_tick_at` the firing executor read; the firing happens only if it still is.
    pub expected_next_tick_at: i64,
    /// The tick after the ones enqueued; `None` when there is none and the schedule ends.
    pub new_next_tick_at: Option<i64>,
    /// The last tick enqueued.
    pub last_tick_at: i64,
    /// One execution per enqueued tick.
    pub executions: Vec<NewTaskExecution>,
    /// The time of the firing (epoch ms).
    pub now: i64,
}

/// The id of the execution of `schedule_id`'s tick at `tick`: one per schedule and tick.
pub(crate) fn tick_execution_id(schedule_id: &str, tick: i64) -> String {
    format!("sch_{schedule_id}_{tick}")
}

/// A parsed spec, ready for tick arithmetic.
pub(crate) enum Ticks {
    Cron(Box<Cron>, Tz),
    Interval(i64),
}

fn invalid(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name,
        reason: reason.into(),
    }
}

impl Ticks {
    /// Parses `spec`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an expression or a time zone that does not parse, or an
    /// interval below 1 ms.
    pub(crate) fn parse(spec: &ScheduleSpec) -> Result<Self> {
        match spec {
            ScheduleSpec::Cron {
                expression,
                time_zone,
            } => {
                let cron = Cron::from_str(expression)
                    .map_err(|e| invalid("cron", format!("`{expression}`: {e}")))?;
                let tz = Tz::from_str(time_zone)
                    .map_err(|e| invalid("time_zone", format!("`{time_zone}`: {e}")))?;
                Ok(Self::Cron(Box::new(cron), tz))
            }
            ScheduleSpec::Interval { every_ms } if *every_ms >= 1 => Ok(Self::Interval(*every_ms)),
            ScheduleSpec::Interval { every_ms } => Err(invalid(
                "interval",
                format!("must be at least 1 ms, got {every_ms} ms"),
            )),
        }
    }

    fn instant(&self, ms: i64) -> Result<DateTime<Tz>> {
        let tz = match self {
            Self::Cron(_, tz) => *tz,
            Self::Interval(_) => Tz::UTC,
        };
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&tz))
            .ok_or_else(|| invalid("time", format!("{ms} ms is out of range")))
    }

    /// The first tick strictly after `after` (epoch ms); `None` when there is none (a bounded
    /// cron expression past its last tick, an interval past the end of time).
    pub(crate) fn next_after(&self, after: i64) -> Result<Option<i64>> {
        match self {
            Self::Interval(every) => Ok(after.checked_add(*every)),
            Self::Cron(cron, _) => match cron.find_next_occurrence(&self.instant(after)?, false) {
                Ok(next) => Ok(Some(next.timestamp_millis())),
                // The search ends at the year 5000: no tick is left.
                Err(CronError::TimeSearchLimitExceeded) => Ok(None),
                Err(e) => Err(invalid("cron", format!("no tick after {after}: {e}"))),
            },
        }
    }

    /// The ticks of a schedule whose next tick is `next` to enqueue at `now` under `policy`,
    /// and the tick after them (`None`: the last tick is among them and the schedule ends).
    /// Empty when `next` is still in the future.
    pub(crate) fn due(
        &self,
        next: i64,
        now: i64,
        policy: MissedTicks,
    ) -> Result<(Vec<i64>, Option<i64>)> {
        if next > now {
            return Ok((Vec::new(), Some(next)));
        }
        match (policy, self) {
            (MissedTicks::Skip, Self::Interval(every)) => {
                // Anchored on `next`: the latest tick `next + k * every` not after `now`.
                let k = (now - next) / every;
                let latest = next.saturating_add(k.saturating_mul(*every));
                Ok((vec![latest], latest.checked_add(*every)))
            }
            (MissedTicks::Skip, Self::Cron(cron, _)) => {
                let latest = cron
                    .find_previous_occurrence(&self.instant(now)?, true)
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(next)
                    .max(next);
                Ok((vec![latest], self.next_after(latest)?))
            }
            (MissedTicks::CatchUp, _) => {
                let mut ticks = vec![next];
                let mut tick = self.next_after(next)?;
                while let Some(t) = tick
                    && t <= now
                    && ticks.len() < MAX_TICKS_PER_FIRE
                {
                    ticks.push(t);
                    tick = self.next_after(t)?;
                }
                Ok((ticks, tick))
            }
        }
    }
}

/// A periodic schedule of a task, for [`Executor::schedule`](super::executor::Executor::schedule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub(crate) id: String,
    pub(crate) spec: ScheduleSpec,
    pub(crate) missed_ticks: MissedTicks,
}

impl Schedule {
    /// Ticks at the times `expression` matches, in UTC (see [`Schedule::time_zone`]).
    pub fn cron(id: impl Into<String>, expression: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            spec: ScheduleSpec::Cron {
                expression: expression.into(),
                time_zone: "UTC".to_owned(),
            },
            missed_ticks: MissedTicks::default(),
        }
    }

    /// Ticks every `every`, the first one `every` after the schedule is first saved.
    pub fn interval(id: impl Into<String>, every: Duration) -> Self {
        Self {
            id: id.into(),
            spec: ScheduleSpec::Interval {
                every_ms: i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
            },
            missed_ticks: MissedTicks::default(),
        }
    }

    /// Reads a cron expression in this IANA time zone (`Europe/Zurich`); no effect on an
    /// interval.
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        if let ScheduleSpec::Cron { time_zone, .. } = &mut self.spec {
            *time_zone = zone.into();
        }
        self
    }

    /// What happens to ticks missed while no executor ran (default [`MissedTicks::Skip`]).
    pub fn missed_ticks(mut self, policy: MissedTicks) -> Self {
        self.missed_ticks = policy;
        self
    }

    /// The schedule's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_ticks_follow_the_time_zone_and_daylight_saving() -> Result<()> {
        let ticks = Ticks::parse(&ScheduleSpec::Cron {
            expression: "0 3 * * *".to_owned(),
            time_zone: "Europe/Zurich".to_owned(),
        })?;
        // 2026-03-27 12:00 UTC; the clocks go forward in the night to 2026-03-29.
        let noon = 1_774_612_800_000;
        let first = ticks.next_after(noon)?.unwrap_or_default();
        let second = ticks.next_after(first)?.unwrap_or_default();
        // 03:00 CET is 02:00 UTC; 03:00 CEST is 01:00 UTC.
        assert_eq!(first, 1_774_663_200_000);
        assert_eq!(second - first, 23 * 3_600_000);
        Ok(())
    }

    #[test]
    fn missed_ticks_are_skipped_or_caught_up() -> Result<()> {
        let ticks = Ticks::parse(&ScheduleSpec::Interval { every_ms: 10 })?;
        assert_eq!(ticks.due(100, 99, MissedTicks::Skip)?, (vec![], Some(100)));
        assert_eq!(
            ticks.due(100, 135, MissedTicks::Skip)?,
            (vec![130], Some(140))
        );
        assert_eq!(
            ticks.due(100, 135, MissedTicks::CatchUp)?,
            (vec![100, 110, 120, 130], Some(140))
        );
        let (many, next) = ticks.due(0, 10_000, MissedTicks::CatchUp)?;
        assert_eq!((many.len(), next), (MAX_TICKS_PER_FIRE, Some(1_000)));
        Ok(())
    }

    #[test]
    fn a_bounded_cron_gives_its_last_tick_and_then_none() -> Result<()> {
        let ticks = Ticks::parse(&ScheduleSpec::Cron {
            expression: "0 0 0 1 1 * 2027".to_owned(),
            time_zone: "UTC".to_owned(),
        })?;
        // 2026-12-07 00:00 UTC and 2027-01-01 00:00 UTC.
        let before = 1_796_601_600_000;
        let last = 1_798_761_600_000;
        assert_eq!(ticks.next_after(before)?, Some(last));
        assert_eq!(ticks.next_after(last)?, None);
        for policy in [MissedTicks::Skip, MissedTicks::CatchUp] {
            assert_eq!(ticks.due(last, last + 5, policy)?, (vec![last], None));
        }
        let interval = Ticks::parse(&ScheduleSpec::Interval { every_ms: 10 })?;
        assert_eq!(interval.next_after(i64::MAX - 5)?, None);
        Ok(())
    }

    #[test]
    fn bad_specs_are_invalid_arguments() {
        for spec in [
            ScheduleSpec::Cron {
                expression: "not cron".to_owned(),
                time_zone: "UTC".to_owned(),
            },
            ScheduleSpec::Cron {
                expression: "* * * * *".to_owned(),
                time_zone: "Mars/Olympus".to_owned(),
            },
            ScheduleSpec::Interval { every_ms: 0 },
        ] {
            assert!(matches!(
                Ticks::parse(&spec),
                Err(Error::InvalidArgument { .. })
            ));
        }
    }
}
