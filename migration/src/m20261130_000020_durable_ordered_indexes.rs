//! Serves every hot query from an index in the query's own order, ties included, and lets the
//! finalize check of a batch job find an unfinished or failed batch without reading the
//! finished ones.
//!
//! The background queries of the executor order by `(key, execution_id)`: expiry by
//! `(expires_at, execution_id)`, parent claims and closes by `(updated_at, execution_id)`. An
//! index on the key alone hands them its rows in key order only, and rows that share the key
//! (children spawned together share `updated_at`) must all be read and sorted before the first
//! `n` are known. The indexes below end with `execution_id`, so a pick reads `n` entries however
//! large the tie group:
//!
//! - `ix_durable_task_executions_running` → `ix_durable_task_executions_running_claim`
//!   `(expires_at, execution_id) WHERE status = 'running'`
//! - `ix_durable_task_executions_waiting_for_children` → `ix_durable_task_executions_waiting_claim`
//!   `(updated_at, execution_id) WHERE status = 'waiting_for_children_tasks'`
//! - `ix_durable_task_executions_unclosed` → `ix_durable_task_executions_unclosed_claim`
//!   `(updated_at, execution_id) WHERE is_finished AND NOT is_closed`
//!
//! MySQL has no partial indexes: its forms lead with the filtered columns, as before (InnoDB
//! already appends the primary key to a secondary index; naming it keeps the shape the same on
//! every backend).
//!
//! Batch jobs gain `ix_batchactions_batches_unfinished` `(job_id) WHERE status NOT IN
//! ('COMPLETED', 'FAILED')` and `ix_batchactions_batches_failed` `(job_id) WHERE status =
//! 'FAILED'`: `try_finalize_job` asks whether a job has any batch of either kind, which these
//! answer by one index probe instead of walking the job's finished batches. On MySQL one index
//! `(job_id, status)` serves both (as ranges on `status`), under the first name.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::schema::{create_filtered_index, create_partial_index, drop_index, index};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";
const BATCHES: &str = "batchactions_batches";

#[derive(DeriveIden)]
enum TaskExecutions {
    ExecutionId,
    Status,
    ExpiresAt,
    UpdatedAt,
    IsFinished,
    IsClosed,
}

#[derive(DeriveIden)]
enum Batches {
    JobId,
    Status,
}

fn finished_not_closed() -> SimpleExpr {
    Expr::col(TaskExecutions::IsFinished)
        .eq(true)
        .and(Expr::col(TaskExecutions::IsClosed).eq(false))
}

/// The statuses a batch ends in; `try_finalize_job` writes the same literals.
const FINISHED_BATCH: [&str; 2] = ["COMPLETED", "FAILED"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_running_claim")
                .col(T::ExpiresAt)
                .col(T::ExecutionId)
                .to_owned(),
            ("status", "running"),
            index(EXECUTIONS, "ix_durable_task_executions_running_claim")
                .col(T::Status)
                .col(T::ExpiresAt)
                .col(T::ExecutionId)
                .to_owned(),
        )
        .await?;
        drop_index(manager, EXECUTIONS, "ix_durable_task_executions_running").await?;
        create_partial_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_waiting_claim")
                .col(T::UpdatedAt)
                .col(T::ExecutionId)
                .to_owned(),
            ("status", "waiting_for_children_tasks"),
            index(EXECUTIONS, "ix_durable_task_executions_waiting_claim")
                .col(T::Status)
                .col(T::UpdatedAt)
                .col(T::ExecutionId)
                .to_owned(),
        )
        .await?;
        drop_index(
            manager,
            EXECUTIONS,
            "ix_durable_task_executions_waiting_for_children",
        )
        .await?;
        create_filtered_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_unclosed_claim")
                .col(T::UpdatedAt)
                .col(T::ExecutionId)
                .to_owned(),
            finished_not_closed(),
            index(EXECUTIONS, "ix_durable_task_executions_unclosed_claim")
                .col(T::IsFinished)
                .col(T::IsClosed)
                .col(T::UpdatedAt)
                .col(T::ExecutionId)
                .to_owned(),
        )
        .await?;
        drop_index(manager, EXECUTIONS, "ix_durable_task_executions_unclosed").await?;

        create_filtered_index(
            manager,
            BATCHES,
            index(BATCHES, "ix_batchactions_batches_unfinished")
                .col(Batches::JobId)
                .to_owned(),
            Expr::col(Batches::Status).is_not_in(FINISHED_BATCH),
            index(BATCHES, "ix_batchactions_batches_unfinished")
                .col(Batches::JobId)
                .col(Batches::Status)
                .to_owned(),
        )
        .await?;
        // MySQL: the index above serves this question too.
        if manager.get_database_backend() != DbBackend::MySql {
            create_partial_index(
                manager,
                BATCHES,
                index(BATCHES, "ix_batchactions_batches_failed")
                    .col(Batches::JobId)
                    .to_owned(),
                ("status", "FAILED"),
                index(BATCHES, "ix_batchactions_batches_failed")
                    .col(Batches::JobId)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use TaskExecutions as T;
        drop_index(manager, BATCHES, "ix_batchactions_batches_failed").await?;
        drop_index(manager, BATCHES, "ix_batchactions_batches_unfinished").await?;
        // The indexes of `m20261123_000002_durable_create_task_tables`, as they were.
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
        drop_index(
            manager,
            EXECUTIONS,
            "ix_durable_task_executions_running_claim",
        )
        .await?;
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
        drop_index(
            manager,
            EXECUTIONS,
            "ix_durable_task_executions_waiting_claim",
        )
        .await?;
        create_filtered_index(
            manager,
            EXECUTIONS,
            index(EXECUTIONS, "ix_durable_task_executions_unclosed")
                .col(T::UpdatedAt)
                .to_owned(),
            finished_not_closed(),
            index(EXECUTIONS, "ix_durable_task_executions_unclosed")
                .col(T::IsFinished)
                .col(T::IsClosed)
                .col(T::UpdatedAt)
                .to_owned(),
        )
        .await?;
        drop_index(
            manager,
            EXECUTIONS,
            "ix_durable_task_executions_unclosed_claim",
        )
        .await?;
        Ok(())
    }
}
