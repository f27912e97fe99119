//! Keeps rows that an index never looks up out of it, on PostgreSQL and SQLite.
//!
//! An update there that changes any indexed column writes a new entry into every index whose
//! filter the new row version matches, and executions are updated three or four times each
//! (claimed, finished, closed). Four indexes of the first migrations held every row although
//! their lookups only ever ask for a few:
//!
//! - `ux_durable_task_executions_sleeping_key` and `ix_durable_task_executions_wake_key`: only
//!   rows with a key (`WHERE … IS NOT NULL`). The unique index still keeps each sleeping key
//!   once: NULLs never collided anyway.
//! - `ix_durable_task_executions_parent`: only children (`parent_execution_id IS NOT NULL`).
//! - `ix_durable_task_executions_executor_cancel`: only rows whose cancellation was requested
//!   (`cancel_requested = TRUE`), now ordered like the query that reads them,
//!   `(executor_id, updated_at, execution_id)`.
//!
//! Every lookup of these indexes compares the column with a value (which implies `IS NOT NULL`
//! to both planners) or writes `cancel_requested = TRUE` as a literal, so each is still served.
//! MySQL and MariaDB have no partial indexes, and InnoDB writes a secondary index only when its
//! own columns change, so nothing changes there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::schema::{create_index, drop_index, index};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";
const SLEEPING_KEY: &str = "ux_durable_task_executions_sleeping_key";
const WAKE_KEY: &str = "ix_durable_task_executions_wake_key";
const PARENT: &str = "ix_durable_task_executions_parent";
const CANCEL: &str = "ix_durable_task_executions_executor_cancel";

#[derive(DeriveIden)]
enum TaskExecutions {
    ExecutionId,
    WakeKey,
    SleepingKey,
    ParentExecutionId,
    IsFinished,
    ExecutorId,
    CancelRequested,
    UpdatedAt,
}

/// The indexes as this migration leaves them.
fn lean() -> [IndexCreateStatement; 4] {
    use TaskExecutions as T;
    [
        index(EXECUTIONS, SLEEPING_KEY)
            .col(T::SleepingKey)
            .unique()
            .and_where(Expr::col(T::SleepingKey).is_not_null())
            .to_owned(),
        index(EXECUTIONS, WAKE_KEY)
            .col(T::WakeKey)
            .and_where(Expr::col(T::WakeKey).is_not_null())
            .to_owned(),
        index(EXECUTIONS, PARENT)
            .col(T::ParentExecutionId)
            .col(T::IsFinished)
            .and_where(Expr::col(T::ParentExecutionId).is_not_null())
            .to_owned(),
        index(EXECUTIONS, CANCEL)
            .col(T::ExecutorId)
            .col(T::UpdatedAt)
            .col(T::ExecutionId)
            .and_where(Expr::col(T::CancelRequested).eq(true))
            .to_owned(),
    ]
}

/// The indexes as the earlier migrations created them.
fn full() -> [IndexCreateStatement; 4] {
    use TaskExecutions as T;
    [
        index(EXECUTIONS, SLEEPING_KEY)
            .col(T::SleepingKey)
            .unique()
            .to_owned(),
        index(EXECUTIONS, WAKE_KEY).col(T::WakeKey).to_owned(),
        index(EXECUTIONS, PARENT)
            .col(T::ParentExecutionId)
            .col(T::IsFinished)
            .to_owned(),
        index(EXECUTIONS, CANCEL)
            .col(T::ExecutorId)
            .col(T::CancelRequested)
            .to_owned(),
    ]
}

/// Replaces each index of `indexes` by the statement's definition (same name), on PostgreSQL
/// and SQLite; their migrations run in a transaction, so the unique index is never missing to
/// another session.
async fn replace(
    manager: &SchemaManager<'_>,
    indexes: [IndexCreateStatement; 4],
) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::MySql {
        return Ok(());
    }
    for statement in indexes {
        let name = statement
            .get_index_spec()
            .get_name()
            .unwrap_or_default()
            .to_owned();
        drop_index(manager, EXECUTIONS, &name).await?;
        create_index(manager, EXECUTIONS, statement).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, lean()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, full()).await
    }
}
