//! Makes every id column compare exactly (byte for byte, trailing spaces included) on
//! MySQL/MariaDB.
//!
//! The tables were created with the database's default collation, on MariaDB
//! `utf8mb4_general_ci`, which compares case-, accent- and trailing-space-insensitively: the ids
//! `"CaseJob"` and `"casejob"` (or `"pad"` and `"pad "`) were one key, so two jobs or executions
//! could read and overwrite each other's rows. PostgreSQL and SQLite already compare bytes, so
//! there this migration does nothing.
//!
//! Existing installs are upgraded in place: each id column is `MODIFY`ed to the same type,
//! length, character set and nullability with a binary no-pad collation; keys and indexes stay.
//! Running it again changes nothing. `down()` puts the table's default collation back; it fails
//! with a duplicate key error when ids that differ only in case or trailing spaces were saved
//! meanwhile (they would be one key again).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::schema::exact_collation;

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// Every id column of the crate's tables: job, batch, worker, execution, task, parent, root,
/// finalize and executor ids.
const ID_COLUMNS: [(&str, &[&str]); 5] = [
    ("batchactions_jobs", &["id"]),
    ("batchactions_batches", &["id", "job_id", "worker_id"]),
    ("batchactions_records", &["job_id", "batch_id"]),
    (
        "durable_task_executions",
        &[
            "execution_id",
            "task_id",
            "root_task_id",
            "root_execution_id",
            "parent_task_id",
            "parent_execution_id",
            "executor_id",
            "finalize_task_id",
            "finalize_execution_id",
            // The id of the claim that took an execution, on schemas that have it.
            "claim_id",
        ],
    ),
    (
        "durable_finished_child_task_executions",
        &["parent_execution_id", "child_execution_id", "child_task_id"],
    ),
];

/// Which collation the id columns get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Binary and no-pad: exact comparison.
    Exact,
    /// The table's default collation (what `down()` restores).
    TableDefault,
}

/// One id column as it is now.
struct IdColumn {
    name: String,
    column_type: String,
    nullable: bool,
    charset: String,
    collation: String,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_collation(manager, Target::Exact).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_collation(manager, Target::TableDefault).await
    }
}

/// Gives every id column of every existing table of the crate the `target` collation, one
/// `ALTER TABLE` per table (one rebuild), leaving columns that have it already.
async fn set_collation(manager: &SchemaManager<'_>, target: Target) -> Result<(), DbErr> {
    // PostgreSQL and SQLite compare text byte for byte already.
    if manager.get_database_backend() != DbBackend::MySql {
        return Ok(());
    }
    let conn = manager.get_connection();
    for (table, names) in ID_COLUMNS {
        if !manager.has_table(table).await? {
            continue;
        }
        let mut changes = Vec::new();
        for column in id_columns(conn, table, names).await? {
            let collation = match target {
                Target::Exact => exact_collation(conn, &column.charset).await?,
                Target::TableDefault => default_collation(conn, table, &column.charset).await?,
            };
            if column.collation == collation {
                continue;
            }
            changes.push(format!(
                "MODIFY `{}` {} CHARACTER SET {} COLLATE {} {}",
                column.name,
                column.column_type,
                column.charset,
                collation,
                if column.nullable { "NULL" } else { "NOT NULL" }
            ));
        }
        if !changes.is_empty() {
            conn.execute_unprepared(&format!("ALTER TABLE `{table}` {}", changes.join(", ")))
                .await?;
        }
    }
    Ok(())
}

/// The columns `names` of `table` that exist, with their type, nullability, character set
/// and collation.
async fn id_columns<C: ConnectionTrait>(
    conn: &C,
    table: &str,
    names: &[&str],
) -> Result<Vec<IdColumn>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::MySql,
            "SELECT COLUMN_NAME AS name, COLUMN_TYPE AS column_type, IS_NULLABLE AS nullable, \
             CHARACTER_SET_NAME AS charset, COLLATION_NAME AS collation, \
             COLUMN_DEFAULT AS default_value \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            [table.into()],
        ))
        .await?;
    let mut columns = Vec::new();
    for row in rows {
        let name: String = row.try_get("", "name")?;
        if !names.contains(&name.as_str()) {
            continue;
        }
        // `MODIFY` restates the whole column: a default would be lost. Id columns have none
        // (MariaDB reports a nullable column's implicit default as the text `NULL`).
        let default: Option<String> = row.try_get("", "default_value")?;
        if default.as_deref().is_some_and(|d| d != "NULL") {
            return Err(DbErr::Migration(format!(
                "{table}.{name} has a default; its collation is not changed"
            )));
        }
        let nullable: String = row.try_get("", "nullable")?;
        columns.push(IdColumn {
            name,
            column_type: row.try_get("", "column_type")?,
            nullable: nullable == "YES",
            charset: row.try_get("", "charset")?,
            collation: row.try_get("", "collation")?,
        });
    }
    Ok(columns)
}

/// The collation `table`'s columns of `charset` had before: the table's default collation
/// when it belongs to `charset`, else the character set's default.
async fn default_collation<C: ConnectionTrait>(
    conn: &C,
    table: &str,
    charset: &str,
) -> Result<String, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::MySql,
            "SELECT t.TABLE_COLLATION AS table_collation, c.DEFAULT_COLLATE_NAME AS charset_default \
             FROM information_schema.TABLES t, information_schema.CHARACTER_SETS c \
             WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = ? AND c.CHARACTER_SET_NAME = ?",
            [table.into(), charset.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Migration(format!("no collation found for {table}")))?;
    let table_collation: String = row.try_get("", "table_collation")?;
    if table_collation.starts_with(&format!("{charset}_")) {
        Ok(table_collation)
    } else {
        Ok(row.try_get("", "charset_default")?)
    }
}
