//! Sleeping task executions: woken by a key from any process, or timed out.
//!
//! - `wake_key`: the key a sleeping task's execution was enqueued under, kept after it wakes so
//!   that a second wake can be answered with the finished execution
//!   (`ix_durable_task_executions_wake_key`).
//! - `sleeping_key`: the same key while the execution is `sleeping`, NULL otherwise. Its unique
//!   index `ux_durable_task_executions_sleeping_key` keeps each key once among sleeping executions on
//!   every backend: NULLs never collide, so MySQL needs no partial unique index.
//! - `ix_durable_task_executions_sleeping`: timeouts of sleeping executions, by `expires_at` (partial
//!   on PostgreSQL and SQLite; `(status, expires_at)` on MySQL).

use sea_orm_migration::prelude::*;

use crate::schema::{create_index, create_partial_index, drop_index, id_column, index};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";

/// Longest wake key (bytes), as long as an execution id.
const KEY_LEN: u32 = crate::limit::TASK_ID_LEN;

const INDEXES: [&str; 3] = [
    "ux_durable_task_executions_sleeping_key",
    "ix_durable_task_executions_wake_key",
    "ix_durable_task_executions_sleeping",
];

#[derive(DeriveIden)]
enum TaskExecutions {
    WakeKey,
    SleepingKey,
    Status,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        for (name, column) in [("wake_key", T::WakeKey), ("sleeping_key", T::SleepingKey)] {
            if !manager.has_column(EXECUTIONS, name).await? {
                manager
                    .alter_table(
                        Table::alter()
                            .table(Alias::new(EXECUTIONS))
                            .add_column(id_column(manager, column, KEY_LEN).await?)
                            .to_owned(),
                    )
                    .await?;
            }
        }
        create_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ux_durable_task_executions_sleeping_key")
                .col(T::SleepingKey)
                .unique()
                .to_owned(),
        )
        .await?;
        create_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_wake_key")
                .col(T::WakeKey)
                .to_owned(),
        )
        .await?;
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_sleeping")
                .col(T::ExpiresAt)
                .to_owned(),
            ("status", "sleeping"),
            index(EXECUTIONS, "ix_durable_task_executions_sleeping")
                .col(T::Status)
                .col(T::ExpiresAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Indexes first: SQLite cannot drop an indexed column.
        for name in INDEXES {
            drop_index(manager, EXECUTIONS, name).await?;
        }
        for column in ["sleeping_key", "wake_key"] {
            if manager.has_column(EXECUTIONS, column).await? {
                manager
                    .alter_table(
                        Table::alter()
                            .table(Alias::new(EXECUTIONS))
                            .drop_column(Alias::new(column))
                            .to_owned(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
