//! Creates `durable_task_executions` and `durable_finished_child_task_executions`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, boolean, integer, json, json_null, string_len, string_len_null,
};

use crate::schema::{
    create_filtered_index, create_index, create_partial_index, index, long_text, long_text_null,
};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";
const FINISHED_CHILDREN: &str = "durable_finished_child_task_executions";

/// Task and execution ids ([`TASK_ID_LEN`](crate::limit::TASK_ID_LEN), checked before insert).
const ID_LEN: u32 = crate::limit::TASK_ID_LEN;

#[derive(DeriveIden)]
enum TaskExecutions {
    ExecutionId,
    TaskId,
    RootTaskId,
    RootExecutionId,
    ParentTaskId,
    ParentExecutionId,
    IndexInParent,
    IsFinalize,
    RetryOptions,
    MaxRetryAttempts,
    SleepMsBeforeRun,
    TimeoutMs,
    Status,
    IsFinished,
    Input,
    RunOutput,
    Output,
    Error,
    ExecutorId,
    FencingToken,
    CancelRequested,
    RetryAttempts,
    StartAt,
    StartedAt,
    ExpiresAt,
    FinishedAt,
    ChildrenCount,
    FinishedChildrenCount,
    FailedChildrenCount,
    FinalizeTaskId,
    FinalizeExecutionId,
    IsClosed,
    ClosedAt,
    CreatedAt,
    UpdatedAt,
    Progress,
}

#[derive(DeriveIden)]
enum FinishedChildTaskExecutions {
    ParentExecutionId,
    ChildExecutionId,
    ChildTaskId,
    ChildIndex,
    Status,
    Output,
    Error,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        let mut input = long_text(manager, T::Input);
        let mut run_output = long_text_null(manager, T::RunOutput);
        let mut output = long_text_null(manager, T::Output);
        // Also added to tables created before it by `m20261221_000071_durable_progress`.
        let mut progress = long_text_null(manager, T::Progress);
        manager
            .create_table(
                Table::create()
                    .table(Alias::new(EXECUTIONS))
                    .if_not_exists()
                    .col(string_len(T::ExecutionId, ID_LEN).primary_key())
                    .col(string_len(T::TaskId, ID_LEN))
                    .col(string_len_null(T::RootTaskId, ID_LEN))
                    .col(string_len_null(T::RootExecutionId, ID_LEN))
                    .col(string_len_null(T::ParentTaskId, ID_LEN))
                    .col(string_len_null(T::ParentExecutionId, ID_LEN))
                    .col(integer(T::IndexInParent).default(0))
                    .col(boolean(T::IsFinalize).default(false))
                    .col(json(T::RetryOptions))
                    // Copied from `retry_options.maxAttempts` so lease expiry can decide between
                    // retry and failure in SQL.
                    .col(integer(T::MaxRetryAttempts).default(0))
                    .col(big_integer(T::SleepMsBeforeRun).default(0))
                    .col(big_integer(T::TimeoutMs))
                    .col(string_len(T::Status, 32))
                    .col(boolean(T::IsFinished).default(false))
                    .col(&mut input)
                    .col(&mut run_output)
                    .col(&mut output)
                    .col(json_null(T::Error))
                    .col(string_len_null(T::ExecutorId, ID_LEN))
                    .col(big_integer(T::FencingToken).default(0))
                    .col(boolean(T::CancelRequested).default(false))
                    .col(integer(T::RetryAttempts).default(0))
                    .col(big_integer(T::StartAt))
                    .col(big_integer_null(T::StartedAt))
                    .col(big_integer_null(T::ExpiresAt))
                    .col(big_integer_null(T::FinishedAt))
                    .col(integer(T::ChildrenCount).default(0))
                    .col(integer(T::FinishedChildrenCount).default(0))
                    .col(integer(T::FailedChildrenCount).default(0))
                    .col(string_len_null(T::FinalizeTaskId, ID_LEN))
                    .col(string_len_null(T::FinalizeExecutionId, ID_LEN))
                    .col(boolean(T::IsClosed).default(false))
                    .col(big_integer_null(T::ClosedAt))
                    .col(big_integer(T::CreatedAt))
                    .col(big_integer(T::UpdatedAt))
                    .col(&mut progress)
                    .to_owned(),
            )
            .await?;
        // Claim: `ready` executions whose start passed, earliest first.
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
        // Lease expiry: `running` executions whose lease passed.
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_running")
                .col(T::ExpiresAt)
                .to_owned(),
            ("status", "running"),
            index(EXECUTIONS, "ix_durable_task_executions_running")
                .col(T::Status)
                .col(T::ExpiresAt)
                .to_owned(),
        )
        .await?;
        // Parents waiting for children, oldest change first.
        create_partial_index(
            manager,
            EXECUTIONS,
            index(
                EXECUTIONS,
                "ix_durable_task_executions_waiting_for_children",
            )
            .col(T::UpdatedAt)
            .to_owned(),
            ("status", "waiting_for_children_tasks"),
            index(
                EXECUTIONS,
                "ix_durable_task_executions_waiting_for_children",
            )
            .col(T::Status)
            .col(T::UpdatedAt)
            .to_owned(),
        )
        .await?;
        // Closing: finished executions not closed yet. Closed rows pile up forever, so the
        // fallback leads with the flags and the partial index leaves closed rows out entirely.
        create_filtered_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_unclosed")
                .col(T::UpdatedAt)
                .to_owned(),
            Expr::col(T::IsFinished)
                .eq(true)
                .and(Expr::col(T::IsClosed).eq(false)),
            index(EXECUTIONS, "ix_durable_task_executions_unclosed")
                .col(T::IsFinished)
                .col(T::IsClosed)
                .col(T::UpdatedAt)
                .to_owned(),
        )
        .await?;
        // Cancellation requests addressed to one executor.
        create_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_executor_cancel")
                .col(T::ExecutorId)
                .col(T::CancelRequested)
                .to_owned(),
        )
        .await?;
        // Children of a parent, and the unfinished ones a failed parent cancels.
        create_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_parent")
                .col(T::ParentExecutionId)
                .col(T::IsFinished)
                .to_owned(),
        )
        .await?;

        use FinishedChildTaskExecutions as F;
        let mut child_output = long_text_null(manager, F::Output);
        manager
            .create_table(
                Table::create()
                    .table(Alias::new(FINISHED_CHILDREN))
                    .if_not_exists()
                    .col(string_len(F::ParentExecutionId, ID_LEN))
                    .col(string_len(F::ChildExecutionId, ID_LEN))
                    .col(string_len(F::ChildTaskId, ID_LEN))
                    .col(integer(F::ChildIndex))
                    .col(string_len(F::Status, 32))
                    .col(&mut child_output)
                    .col(json_null(F::Error))
                    .col(big_integer(F::CreatedAt))
                    // One record per (parent, child): the insert-if-absent key.
                    .primary_key(
                        Index::create()
                            .name("pk_finished_child_task_executions")
                            .col(F::ParentExecutionId)
                            .col(F::ChildExecutionId),
                    )
                    .to_owned(),
            )
            .await?;
        // "Finished children of a parent in child order".
        create_index(
            manager,
            FINISHED_CHILDREN,
            Index::create()
                .name("ix_durable_finished_child_task_executions_parent_index")
                .table(Alias::new(FINISHED_CHILDREN))
                .col(F::ParentExecutionId)
                .col(F::ChildIndex)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping a table drops its indexes on every backend.
        for table in [FINISHED_CHILDREN, EXECUTIONS] {
            manager
                .drop_table(
                    Table::drop()
                        .table(Alias::new(table))
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
