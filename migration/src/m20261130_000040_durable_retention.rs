//! Serves retention: an index on closed executions in the order they are pruned (oldest
//! finish first), so deleting old work never scans live rows.

use sea_orm_migration::prelude::*;

use crate::schema::{create_filtered_index, drop_index, index};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";
const INDEX: &str = "ix_durable_task_executions_closed";

#[derive(DeriveIden)]
enum TaskExecutions {
    ExecutionId,
    IsClosed,
    FinishedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        create_filtered_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, INDEX)
                .col(T::FinishedAt)
                .col(T::ExecutionId)
                .to_owned(),
            Expr::col(T::IsClosed).eq(true),
            index(EXECUTIONS, INDEX)
                .col(T::IsClosed)
                .col(T::FinishedAt)
                .col(T::ExecutionId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_index(manager, EXECUTIONS, INDEX).await
    }
}
