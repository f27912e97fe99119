//! Periodic schedules: `durable_task_schedules`, one row per schedule.
//!
//! A tick is enqueued by the executor that moves the row's `next_tick_at` from the value it read
//! to the next one (a compare-and-swap), in the same transaction as the tick's execution, so any
//! number of executors enqueue each tick once. `ix_durable_task_schedules_next_tick` finds the due
//! schedules.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null};

use crate::limit::{CRON_EXPRESSION_LEN, TASK_ID_LEN, TIME_ZONE_LEN};
use crate::schema::{create_index, id_column, long_text};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const SCHEDULES: &str = "durable_task_schedules";

#[derive(DeriveIden)]
enum TaskSchedules {
    #[sea_orm(iden = "durable_task_schedules")]
    Table,
    ScheduleId,
    TaskId,
    Input,
    CronExpression,
    TimeZone,
    IntervalMs,
    MissedTicks,
    NextTickAt,
    LastTickAt,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskSchedules as T;
        manager
            .create_table(
                Table::create()
                    .table(T::Table)
                    .if_not_exists()
                    .col(
                        id_column(manager, T::ScheduleId, TASK_ID_LEN)
                            .await?
                            .not_null()
                            .primary_key()
                            .to_owned(),
                    )
                    .col(
                        id_column(manager, T::TaskId, TASK_ID_LEN)
                            .await?
                            .not_null()
                            .to_owned(),
                    )
                    .col(long_text(manager, T::Input))
                    .col(id_column(manager, T::CronExpression, CRON_EXPRESSION_LEN).await?)
                    .col(id_column(manager, T::TimeZone, TIME_ZONE_LEN).await?)
                    .col(big_integer_null(T::IntervalMs))
                    .col(
                        id_column(manager, T::MissedTicks, 16)
                            .await?
                            .not_null()
                            .to_owned(),
                    )
                    .col(big_integer(T::NextTickAt))
                    .col(big_integer_null(T::LastTickAt))
                    .col(big_integer(T::CreatedAt))
                    .col(big_integer(T::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            SCHEDULES,
            Index::create()
                .name("ix_durable_task_schedules_next_tick")
                .table(T::Table)
                .col(T::NextTickAt)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The index goes with the table on every backend.
        manager
            .drop_table(
                Table::drop()
                    .table(TaskSchedules::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
