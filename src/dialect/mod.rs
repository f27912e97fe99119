//! Per-backend transaction settings and the retry loop for transient database errors.

use std::future::Future;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DbBackend, IsolationLevel, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

use crate::error::Result;

/// Options for a transaction that claims or otherwise read-modify-writes rows.
///
/// - PostgreSQL and MySQL/MariaDB run it at READ COMMITTED: under MariaDB's default REPEATABLE
///   READ, `FOR UPDATE SKIP LOCKED` claims deadlock against each other (gap locks), and READ
///   COMMITTED lets a compare-and-swap see rows committed after the transaction began.
/// - SQLite starts it `IMMEDIATE`, taking the write lock at `BEGIN`: a deferred transaction that
///   reads and then writes fails with `SQLITE_BUSY` on the lock upgrade, busy timeout or not.
pub(crate) fn write_transaction(backend: DbBackend) -> TransactionOptions {
    match backend {
        DbBackend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        },
        _ => TransactionOptions {
            isolation_level: Some(IsolationLevel::ReadCommitted),
            ..Default::default()
        },
    }
}

/// Begins a [`write_transaction`] on `db`.
pub(crate) async fn begin_write<C>(db: &C) -> Result<C::Transaction>
where
    C: TransactionTrait + ConnectionTrait,
{
    Ok(db
        .begin_with_options(write_transaction(db.get_database_backend()))
        .await?)
}

/// How many times [`retry`] tries an operation that keeps failing transiently.
const MAX_ATTEMPTS: u32 = 10;

/// Runs `op` until it succeeds, fails with an error that is not retryable, or has failed
/// [`MAX_ATTEMPTS`] times; between attempts it sleeps a jittered, doubling delay (2 ms to 250 ms).
///
/// `op` must be safe to repeat: each attempt starts its own transaction, so a deadlock victim
/// (rolled back by the server) simply runs again.
pub(crate) async fn retry<T, F, Fut>(what: &'static str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(2);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(err) if err.is_retryable() && attempt < MAX_ATTEMPTS => {
                tracing::debug!(operation = what, attempt, error = %err, "retrying transient error");
                let jitter = fastrand::u64(0..=delay.as_millis().try_into().unwrap_or(u64::MAX));
                tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                delay = (delay * 2).min(Duration::from_millis(250));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// How many bind parameters one statement may carry: PostgreSQL and MySQL count them in a
/// 16-bit field (65 535); SQLite's default `SQLITE_MAX_VARIABLE_NUMBER` is 32 766.
pub(crate) fn max_bind_params(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Sqlite => 32_766,
        _ => 65_535,
    }
}

/// How many bytes of values one multi-row statement should carry at most. MariaDB refuses
/// packets over `max_allowed_packet` (16 MiB by default, 4 MiB on older MySQL); staying well
/// under it costs a few more statements for very large payloads only.
pub(crate) const MAX_STATEMENT_BYTES: usize = 2 * 1024 * 1024;

/// How many bytes of values one multi-row statement carries at most on `backend`.
///
/// sqlx 0.9.0 does not set `TCP_NODELAY` on its sockets. A message the kernel sends as more
/// than one TCP segment then holds back its last, partial segment until the server acknowledges
/// the first (Nagle), and the server delays that acknowledgement by about 40 ms: one statement
/// of 500 records took 45–55 ms over TCP against 2–5 ms over a Unix socket. Statements that fit
/// one segment go out at once:
///
/// - PostgreSQL: sqlx writes a message to the socket in pieces of about 16 KiB, each its own
///   segment, so 12 KiB of values (plus the per-value framing) stays in one piece.
/// - MySQL/MariaDB: sqlx writes a message whole; one segment on the loopback interface is
///   64 KiB, so 48 KiB of values.
/// - SQLite has no socket: [`MAX_STATEMENT_BYTES`].
///
/// The extra statements cost a round trip each (well under a millisecond on a local server).
/// Over a real network a segment is about 1.4 KiB, which no useful statement fits: there the
/// stall is only avoided by `TCP_NODELAY` (a sqlx release that sets it), see the README.
pub(crate) fn max_statement_bytes(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Postgres => 12 * 1024,
        DbBackend::MySql => 48 * 1024,
        _ => MAX_STATEMENT_BYTES,
    }
}

/// Splits `items` into consecutive chunks that each stay within `max_bind_params(backend)`
/// parameters (`columns` per item) and, except for a single oversized item, within
/// [`max_statement_bytes`] as measured by `size`.
pub(crate) fn chunks<T>(
    backend: DbBackend,
    columns: usize,
    items: &[T],
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let max_rows = (max_bind_params(backend) / columns.max(1)).max(1);
    let max_bytes = max_statement_bytes(backend);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let item_bytes = size(item);
        let rows = i - start;
        if rows > 0 && (rows >= max_rows || bytes + item_bytes > max_bytes) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += item_bytes;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// A query returning the database server's clock as epoch milliseconds in a column `now_ms`,
/// used only to measure how far an application's clock is from the server's (leases compare
/// the clocks of every process that shares the tables).
///
/// - PostgreSQL: `clock_timestamp()`, the time at the call (not at the transaction's start).
/// - MySQL/MariaDB: `NOW(3)` converted by `UNIX_TIMESTAMP`, which undoes the session time zone.
/// - SQLite: the clock of the machine the database file is on, which is this process's.
pub(crate) fn database_time_sql(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => {
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms"
        }
        DbBackend::MySql => "SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) AS now_ms",
        _ => "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS now_ms",
    }
}

/// The expression that writes `value` into a JSON column, in a form that stores any valid JSON
/// on every backend.
///
/// - PostgreSQL: sqlx binds a `serde_json::Value` as `jsonb`, and `jsonb` rejects strings
///   holding U+0000 (`\u0000`, "unsupported Unicode escape sequence") even when the column is
///   `json`. The value is bound as text and cast to `json`, which keeps any valid JSON.
/// - MySQL/MariaDB and SQLite take the bound JSON value as it is (MariaDB checks it with
///   `json_valid`, SQLite stores the text).
pub(crate) fn json_expr(
    backend: DbBackend,
    value: &serde_json::Value,
) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait};
    match backend {
        DbBackend::Postgres => Expr::val(value.to_string()).cast_as(Alias::new("json")),
        _ => Expr::val(value.clone()),
    }
}

/// `INSERT INTO` the table of `M` of every row in `models`, with each JSON column written
/// through [`json_expr`], so that any valid JSON is stored on every backend (an entity's own
/// `insert_many` binds JSON as `jsonb` on PostgreSQL).
///
/// # Errors
///
/// When the statement cannot be built (never for rows of one entity).
pub(crate) fn insert_models<M: sea_orm::ModelTrait>(
    backend: DbBackend,
    models: &[M],
) -> crate::Result<sea_orm::sea_query::InsertStatement> {
    use sea_orm::sea_query::{Expr, Query, Value};
    use sea_orm::{EntityTrait, Iterable};
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
        insert.values(row).map_err(|e| {
            crate::Error::from(sea_orm::DbErr::Custom(format!("statement not built: {e}")))
        })?;
    }
    Ok(insert)
}

/// The token (a fencing token, an optimistic-lock version) that follows `token`: one more,
/// wrapping to 1 instead of overflowing. Tokens are only ever compared for equality, so the
/// wrap keeps them changing with every claim, whatever number a row was left with.
pub(crate) fn next_token(token: i64) -> i64 {
    if token < i64::MAX { token + 1 } else { 1 }
}

/// [`next_token`] of `column`, in SQL: a row holding `i64::MAX` can never make the update that
/// claims it overflow (and so fail every claim for as long as it sorts first).
pub(crate) fn next_token_expr<C>(column: C) -> sea_orm::sea_query::SimpleExpr
where
    C: sea_orm::sea_query::IntoColumnRef + Copy,
{
    use sea_orm::sea_query::{Expr, ExprTrait};
    Expr::case(Expr::col(column).lt(i64::MAX), Expr::col(column).add(1))
        .finally(Expr::val(1_i64))
        .into()
}
