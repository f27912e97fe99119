//! Column and index shapes shared by the migrations, with the per-backend differences in one place.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

/// A NOT NULL text column without a length limit on every backend.
///
/// MySQL's `TEXT` stops at 64 KiB, so there it is `LONGTEXT` (4 GiB); PostgreSQL and SQLite
/// `text` is already unbounded.
pub(crate) fn long_text(manager: &SchemaManager, column: impl IntoIden) -> ColumnDef {
    let mut def = ColumnDef::new(column);
    match manager.get_database_backend() {
        DbBackend::MySql => def.custom(Alias::new("LONGTEXT")),
        _ => def.text(),
    };
    def.not_null().take()
}

/// Like [`long_text`] but nullable.
pub(crate) fn long_text_null(manager: &SchemaManager, column: impl IntoIden) -> ColumnDef {
    let mut def = long_text(manager, column);
    def.null().take()
}

/// Creates an index unless one of that name exists.
///
/// sea-query drops `IF NOT EXISTS` from `CREATE INDEX` on MySQL (which has no such clause), so
/// there the existence is checked first; PostgreSQL and SQLite use the clause itself.
pub(crate) async fn create_index(
    manager: &SchemaManager<'_>,
    table: &str,
    mut index: IndexCreateStatement,
) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::MySql {
        let name = index
            .get_index_spec()
            .get_name()
            .unwrap_or_default()
            .to_owned();
        if manager.has_index(table, &name).await? {
            return Ok(());
        }
    } else {
        index.if_not_exists();
    }
    manager.create_index(index).await
}

/// Creates a partial index `WHERE <column> = '<value>'` where the backend has partial indexes
/// (PostgreSQL, SQLite); on MySQL it creates `fallback` instead, a full index that leads with the
/// filtered column.
pub(crate) async fn create_partial_index(
    manager: &SchemaManager<'_>,
    table: &str,
    partial: IndexCreateStatement,
    filter: (&str, &str),
    fallback: IndexCreateStatement,
) -> Result<(), DbErr> {
    create_filtered_index(
        manager,
        table,
        partial,
        Expr::col(Alias::new(filter.0)).eq(filter.1),
        fallback,
    )
    .await
}

/// Like [`create_partial_index`] with any filter, for example a conjunction of boolean columns.
///
/// Queries meant to use such an index must write the filter's constants as literals, not bound
/// parameters: neither planner can prove that a parameter matches the index predicate.
pub(crate) async fn create_filtered_index(
    manager: &SchemaManager<'_>,
    table: &str,
    partial: IndexCreateStatement,
    filter: SimpleExpr,
    fallback: IndexCreateStatement,
) -> Result<(), DbErr> {
    match manager.get_database_backend() {
        // MySQL and MariaDB have no partial indexes.
        DbBackend::MySql => create_index(manager, table, fallback).await,
        _ => {
            let mut partial = partial;
            partial.and_where(filter);
            create_index(manager, table, partial).await
        }
    }
}

/// The binary collation of `charset` that does not ignore trailing spaces: `<cs>_nopad_bin`
/// on MariaDB, `utf8mb4_0900_bin` on MySQL 8. Plain `<cs>_bin` is PAD SPACE on both (`'pad'`
/// equals `'pad '`), so it is only the fallback of servers that have neither (MySQL 5.7).
pub(crate) async fn exact_collation<C: ConnectionTrait>(
    conn: &C,
    charset: &str,
) -> Result<String, DbErr> {
    let candidates = [
        format!("{charset}_nopad_bin"),
        format!("{charset}_0900_bin"),
        format!("{charset}_bin"),
    ];
    for candidate in candidates {
        let found = conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::MySql,
                "SELECT COLLATION_NAME AS name FROM information_schema.COLLATIONS \
                 WHERE COLLATION_NAME = ?",
                [candidate.clone().into()],
            ))
            .await?;
        if found.is_some() {
            return Ok(candidate);
        }
    }
    Err(DbErr::Migration(format!(
        "no binary collation for character set {charset}"
    )))
}

/// A nullable string column of at most `len` characters for an id; on MySQL/MariaDB with the
/// exact collation of [`exact_collation`], like every other id column.
pub(crate) async fn id_column(
    manager: &SchemaManager<'_>,
    column: impl IntoIden,
    len: u32,
) -> Result<ColumnDef, DbErr> {
    let mut def = ColumnDef::new(column);
    match manager.get_database_backend() {
        DbBackend::MySql => {
            let collation = exact_collation(manager.get_connection(), "utf8mb4").await?;
            def.custom(Alias::new(format!(
                "VARCHAR({len}) CHARACTER SET utf8mb4 COLLATE {collation}"
            )))
        }
        _ => def.string_len(len),
    };
    Ok(def.null().take())
}

/// Drops an index if it exists. MySQL has no `DROP INDEX IF EXISTS`, so there the existence is
/// checked first; PostgreSQL and SQLite use the clause itself.
pub(crate) async fn drop_index(
    manager: &SchemaManager<'_>,
    table: &str,
    name: &str,
) -> Result<(), DbErr> {
    let mut drop = Index::drop().name(name).table(Alias::new(table)).to_owned();
    if manager.get_database_backend() == DbBackend::MySql {
        if !manager.has_index(table, name).await? {
            return Ok(());
        }
    } else {
        drop.if_exists();
    }
    manager.drop_index(drop).await
}

/// The start of a `CREATE INDEX name ON table` statement; the caller adds the columns.
pub(crate) fn index(table: &str, name: &str) -> IndexCreateStatement {
    Index::create()
        .name(name)
        .table(Alias::new(table))
        .to_owned()
}
