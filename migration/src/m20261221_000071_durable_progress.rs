//! Adds `progress` to a `durable_task_executions` created before the column: the JSON value a
//! running task last reported through `TaskContext::report_progress`, kept after the run.
//! Nullable and without a default, so adding it rewrites no row on any backend. A table created
//! now has the column already (`m20261123_000002`), so on a fresh database this changes
//! nothing: altering a table while the pool's other SQLite connections hold statements
//! prepared against it is best left to upgrades, which run before the application's first
//! query.

use sea_orm_migration::prelude::*;

use crate::schema::long_text_null;

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const EXECUTIONS: &str = "durable_task_executions";

#[derive(DeriveIden)]
enum TaskExecutions {
    #[sea_orm(iden = "durable_task_executions")]
    Table,
    Progress,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column(EXECUTIONS, "progress").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(TaskExecutions::Table)
                    .add_column(long_text_null(manager, TaskExecutions::Progress))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // The column belongs to the table as `m20261123_000002` creates it now; rolling this
        // back leaves it (it is nullable, and the library of the earlier version ignores it).
        Ok(())
    }
}
