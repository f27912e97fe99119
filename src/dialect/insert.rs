//! Inserts both stores share: whole rows of an entity with JSON that round-trips on every
//! backend, and insert-if-absent, which MySQL spells differently.

use sea_orm::sea_query::{Expr, InsertStatement, IntoIden, OnConflict, Query, Value};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Iterable, ModelTrait};

use super::json_expr;
use crate::error::{Error, Result};

/// `INSERT INTO` the table of `M` of every row in `models`, with each JSON column written
/// through [`json_expr`], so that any valid JSON is stored on every backend (an entity's own
/// `insert_many` binds JSON as `jsonb` on PostgreSQL).
///
/// # Errors
///
/// When the statement cannot be built (never for rows of one entity).
pub(crate) fn insert_models<M: ModelTrait>(
    backend: DbBackend,
    models: &[M],
) -> Result<InsertStatement> {
    let columns: Vec<_> = <M::Entity as EntityTrait>::Column::iter().collect();
    let mut insert = Query::insert();
    insert
        .into_table(<M::Entity as Default>::default())
        .columns(columns.clone());
    for model in models {
        let row = columns
            .iter()
            .map(|column| match model.get(*column) {
                Value::Json(Some(json)) => json_expr(backend, &json),
                value => Expr::val(value),
            })
            .collect::<Vec<_>>();
        insert.values(row).map_err(statement_error)?;
    }
    Ok(insert)
}

/// A statement that could not be built (a column and value count that differ), as an error.
pub(crate) fn statement_error(err: sea_orm::sea_query::error::Error) -> Error {
    Error::from(sea_orm::DbErr::Custom(format!(
        "statement not built: {err}"
    )))
}

/// The conflict clause that makes an insert leave alone every row whose unique key `keys`
/// (a primary key or a unique index) is taken already: insert-if-absent.
///
/// - PostgreSQL and SQLite: `ON CONFLICT (keys) DO NOTHING`.
/// - MySQL/MariaDB has no `DO NOTHING`: `ON DUPLICATE KEY UPDATE k = k` with `k` the first key
///   column, an assignment that changes nothing. This form is taken over the two others MySQL
///   offers: `INSERT IGNORE` also turns other errors (a value too long, a bad foreign key) into
///   warnings, and `k = VALUES(k)` uses `VALUES()`, deprecated since MySQL 8.0.20. Unlike
///   `DO NOTHING` it applies to a clash on any unique key of the table, not only `keys`.
///
/// Every backend counts a row left alone as not affected, except MySQL, whose driver reports
/// matched rows: there the affected count says nothing about what was inserted (see
/// [`insert_one_if_absent`] for one row).
pub(crate) fn if_absent<C, I>(keys: I) -> OnConflict
where
    C: IntoIden + Copy,
    I: IntoIterator<Item = C>,
{
    let keys: Vec<C> = keys.into_iter().collect();
    OnConflict::columns(keys.clone())
        .do_nothing_on(keys.into_iter().take(1))
        .to_owned()
}

/// Runs `insert` (one row) unless a row with the same unique key `keys` exists; returns
/// whether it inserted.
///
/// - PostgreSQL and SQLite: [`if_absent`]; the affected count tells.
/// - MySQL/MariaDB: a plain insert whose duplicate key error means "there is one already": the
///   affected count of [`if_absent`] is 1 either way there (matched rows).
///
/// # Errors
///
/// Database errors other than the duplicate key.
pub(crate) async fn insert_one_if_absent<C, K, I>(
    conn: &C,
    mut insert: InsertStatement,
    keys: I,
) -> Result<bool>
where
    C: ConnectionTrait,
    K: IntoIden + Copy,
    I: IntoIterator<Item = K>,
{
    match conn.get_database_backend() {
        DbBackend::MySql => match conn.execute(&insert).await {
            Ok(_) => Ok(true),
            Err(err) => match Error::from(err) {
                Error::Conflict { .. } => Ok(false),
                other => Err(other),
            },
        },
        _ => {
            insert.on_conflict(if_absent(keys));
            Ok(conn.execute(&insert).await?.rows_affected() == 1)
        }
    }
}
