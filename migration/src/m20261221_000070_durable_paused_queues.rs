//! Paused queues: `durable_paused_task_queues`, one row per paused queue.
//!
//! A claim of task executions passes over every execution whose queue has a row here; the row
//! is the whole state, so a pause holds across restarts and for executors started later, and a
//! resume (deleting the row) takes effect at the next claim of every executor. The table stays
//! tiny (one row per paused queue), so the claim's `queue NOT IN (SELECT queue FROM …)`, read
//! once per claim, costs next to nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::big_integer;

use crate::limit::QUEUE_LEN;
use crate::schema::id_column;

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum PausedTaskQueues {
    #[sea_orm(iden = "durable_paused_task_queues")]
    Table,
    Queue,
    PausedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use PausedTaskQueues as T;
        manager
            .create_table(
                Table::create()
                    .table(T::Table)
                    .if_not_exists()
                    .col(
                        id_column(manager, T::Queue, QUEUE_LEN)
                            .await?
                            .not_null()
                            .primary_key()
                            .to_owned(),
                    )
                    .col(big_integer(T::PausedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(PausedTaskQueues::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
