//! Adds queues and claim ids to `durable_task_executions`, and serves claims filtered by task and queue
//! from one index in the claim's own order.
//!
//! - `queue`: the queue an execution waits in (`'default'` for the rows that exist already).
//! - `claim_id`: the id of the claim that took an execution last, so that a claim whose reply
//!   was lost can be taken back by its retry.
//! - `ix_durable_task_executions_ready` (on `start_at`) is replaced by `ix_durable_task_executions_ready_claim`
//!   on `(start_at, execution_id, task_id, queue)`: claims order by `(start_at, execution_id)`
//!   and filter by task and queue, which the index answers without reading the rows.

use sea_orm_migration::prelude::*;

use crate::limit::{CLAIM_ID_LEN, QUEUE_LEN};
use crate::schema::{create_index, create_partial_index, drop_index, id_column, index};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";

#[derive(DeriveIden)]
enum TaskExecutions {
    ExecutionId,
    TaskId,
    Queue,
    ClaimId,
    Status,
    StartAt,
    ExecutorId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        if !manager.has_column(EXECUTIONS, "queue").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(EXECUTIONS))
                        .add_column(
                            id_column(manager, T::Queue, QUEUE_LEN)
                                .await?
                                .not_null()
                                .default("default")
                                .to_owned(),
                        )
                        .to_owned(),
                )
                .await?;
        }
        if !manager.has_column(EXECUTIONS, "claim_id").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(EXECUTIONS))
                        .add_column(id_column(manager, T::ClaimId, CLAIM_ID_LEN).await?)
                        .to_owned(),
                )
                .await?;
        }
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_ready_claim")
                .col(T::StartAt)
                .col(T::ExecutionId)
                .col(T::TaskId)
                .col(T::Queue)
                .to_owned(),
            ("status", "ready"),
            index(EXECUTIONS, "ix_durable_task_executions_ready_claim")
                .col(T::Status)
                .col(T::StartAt)
                .col(T::ExecutionId)
                .col(T::TaskId)
                .col(T::Queue)
                .to_owned(),
        )
        .await?;
        drop_index(manager, EXECUTIONS, "ix_durable_task_executions_ready").await?;
        // Taking back what a claim took: by executor and claim id.
        create_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_executor_claim")
                .col(T::ExecutorId)
                .col(T::ClaimId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_ready")
                .col(T::StartAt)
                .to_owned(),
            ("status", "ready"),
            index(EXECUTIONS, "ix_durable_task_executions_ready")
                .col(T::Status)
                .col(T::StartAt)
                .to_owned(),
        )
        .await?;
        drop_index(
            manager,
            EXECUTIONS,
            "ix_durable_task_executions_ready_claim",
        )
        .await?;
        drop_index(
            manager,
            EXECUTIONS,
            "ix_durable_task_executions_executor_claim",
        )
        .await?;
        for column in ["claim_id", "queue"] {
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
