//! `durable_task_schedules`: one row per periodic schedule of a task.

use sea_orm::entity::prelude::*;

/// A schedule as stored.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "durable_task_schedules")]
pub struct Model {
    /// Unique id of the schedule.
    #[sea_orm(primary_key, auto_increment = false)]
    pub schedule_id: String,
    /// The task enqueued at each tick.
    pub task_id: String,
    /// The serialized input of every execution.
    #[sea_orm(column_type = "Text")]
    pub input: String,
    /// The cron expression, for a cron schedule.
    pub cron_expression: Option<String>,
    /// The IANA time zone of the cron expression.
    pub time_zone: Option<String>,
    /// The interval in milliseconds, for an interval schedule.
    pub interval_ms: Option<i64>,
    /// What happens to missed ticks: `skip` or `catch_up`.
    pub missed_ticks: String,
    /// The next tick not enqueued yet (epoch ms); `i64::MAX` once the schedule has ended (its
    /// cron expression has no tick left).
    pub next_tick_at: i64,
    /// The last tick enqueued (epoch ms).
    pub last_tick_at: Option<i64>,
    /// When the schedule was first saved (epoch ms).
    pub created_at: i64,
    /// When the row was last written (epoch ms).
    pub updated_at: i64,
}

/// `durable_task_schedules` has no declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
