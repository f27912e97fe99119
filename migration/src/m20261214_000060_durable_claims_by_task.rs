//! Serves the claims of an executor from the rows of the tasks it registered only, however many
//! rows of other tasks wait.
//!
//! An executor claims only its own tasks (`task_id IN (…)`), in `(start_at, execution_id)`
//! order. Through `ix_durable_task_executions_ready_claim`, led by `start_at`, a claim walked
//! every earlier ready row of every task until it had found `n` of its own: with 200 000 ready
//! rows of a task no executor serves, each claim (idle polls included) took 320–480 ms on
//! MariaDB. The indexes below are led by `task_id`, so a claim reads the first `n` entries of
//! each task it serves and merges them:
//!
//! - `ix_durable_task_executions_ready_task` `(task_id, start_at, execution_id, queue) WHERE
//!   status = 'ready'`: the claim of executions (the queue is compared from the index).
//! - `ix_durable_task_executions_waiting_task` `(task_id, updated_at, execution_id) WHERE
//!   status = 'waiting_for_children_tasks'`: the claim of parents whose children finished.
//!
//! MySQL has no partial indexes: its forms lead with `status`. The indexes led by the order
//! (`…_ready_claim`, `…_waiting_claim`) stay: claims that admit any task still use them.

use sea_orm_migration::prelude::*;

use crate::schema::{create_partial_index, drop_index, index};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";
const READY_TASK: &str = "ix_durable_task_executions_ready_task";
const WAITING_TASK: &str = "ix_durable_task_executions_waiting_task";

#[derive(DeriveIden)]
enum TaskExecutions {
    ExecutionId,
    TaskId,
    Queue,
    Status,
    StartAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, READY_TASK)
                .col(T::TaskId)
                .col(T::StartAt)
                .col(T::ExecutionId)
                .col(T::Queue)
                .to_owned(),
            ("status", "ready"),
            index(EXECUTIONS, READY_TASK)
                .col(T::Status)
                .col(T::TaskId)
                .col(T::StartAt)
                .col(T::ExecutionId)
                .col(T::Queue)
                .to_owned(),
        )
        .await?;
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, WAITING_TASK)
                .col(T::TaskId)
                .col(T::UpdatedAt)
                .col(T::ExecutionId)
                .to_owned(),
            ("status", "waiting_for_children_tasks"),
            index(EXECUTIONS, WAITING_TASK)
                .col(T::Status)
                .col(T::TaskId)
                .col(T::UpdatedAt)
                .col(T::ExecutionId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_index(manager, EXECUTIONS, WAITING_TASK).await?;
        drop_index(manager, EXECUTIONS, READY_TASK).await
    }
}
