//! Adds `progress` to `durable_task_executions`: the JSON value a running task last reported
//! through `TaskContext::report_progress`, kept after the run for inspection. Nullable and
//! without a default, so adding it rewrites no row on any backend.

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

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column(EXECUTIONS, "progress").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(TaskExecutions::Table)
                    .drop_column(TaskExecutions::Progress)
                    .to_owned(),
            )
            .await
    }
}
