//! What the two SeaORM stores (task executions and batch jobs) share: the SQL shapes that differ
//! per backend and the machinery every store operation runs on, written once.
//!
//! - [`transaction`]: the write transaction (SQLite `IMMEDIATE`, READ COMMITTED on the servers),
//!   [`in_write_transaction!`] that runs a body in one and retries it, row locks, and the gate
//!   of the stores' writers on SQLite ([`enter_write`]).
//! - [`retry`]: the one retry policy ([`Backoff`]), which layer retries which errors, and jitter.
//! - [`chunk`]: splitting multi-row statements by bind parameters and bytes.
//! - [`insert`]: multi-row inserts with JSON that round-trips, and insert-if-absent.
//! - [`text`]: text from users on every backend: names checked, free text stored losslessly.
//! - here: the database clock, JSON values, fencing tokens.

mod chunk;
mod insert;
mod retry;
pub(crate) mod text;
mod transaction;

pub(crate) use chunk::{chunks, column_count};
pub(crate) use insert::{if_absent, insert_models, insert_one_if_absent, statement_error};
pub(crate) use retry::{Backoff, jitter};
pub(crate) use transaction::{
    begin_write, enter_write, in_write_transaction, lock_for_update, lock_skip_locked,
};

use sea_orm::DbBackend;

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

/// The largest row limit a statement binds: the drivers take integers as `i64` (a `u64` above
/// `i64::MAX` makes them panic) and no table holds more rows anyway.
const SQL_LIMIT_MAX: u64 = 9_223_372_036_854_775_807;

/// A row limit from the API (any `u64`) as every backend can bind it: at most `i64::MAX`, which
/// is "no limit" in effect. Every `LIMIT` a store writes goes through it.
pub(crate) fn sql_limit(limit: u64) -> u64 {
    limit.min(SQL_LIMIT_MAX)
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

/// A column length of the migration crate (`u32`, as DDL takes it) as the `usize` the checks
/// compare lengths with.
#[expect(
    clippy::as_conversions,
    reason = "u32 to usize is lossless on the 32- and 64-bit targets the drivers build for, and \
              no checked conversion between them runs in a const"
)]
pub(crate) const fn column_len(len: u32) -> usize {
    len as usize
}

#[cfg(test)]
mod tests {
    /// Every `LIMIT` of the stores goes through [`super::sql_limit`] (or is a literal): a limit
    /// bound as it came from the API panics the driver above `i64::MAX`. A source check, so
    /// the next statement with a limit is checked too.
    #[test]
    fn every_limit_of_the_stores_is_clamped() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut stack = vec![std::path::PathBuf::from(root)];
        let mut unclamped = Vec::new();
        while let Some(path) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path.to_string_lossy().into_owned();
                if !name.ends_with("sea_orm.rs") {
                    continue;
                }
                let source = std::fs::read_to_string(&path).unwrap_or_default();
                for (n, line) in source.lines().enumerate() {
                    for (at, _) in line.match_indices(".limit(") {
                        let arg = &line[at + ".limit(".len()..];
                        let literal = arg.starts_with(|c: char| c.is_ascii_digit());
                        if !literal && !arg.contains("sql_limit(") {
                            unclamped.push(format!("{name}:{}: {}", n + 1, line.trim()));
                        }
                    }
                    if line.contains("LIMIT {") && !line.contains("LIMIT {budget}") {
                        unclamped.push(format!("{name}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            unclamped.is_empty(),
            "limits bound unclamped: {unclamped:#?}"
        );
    }
}
