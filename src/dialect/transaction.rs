//! The write transaction every read-modify-write of both stores runs in, the helper that runs a
//! body in one (retried as a whole), and the row locks taken inside it.

use sea_orm::sea_query::{LockBehavior, LockType, SelectStatement};
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

/// Runs a body in a [`write_transaction`] on a connection and commits it, starting over with a
/// new transaction on a retryable error as [`Backoff::STORE`](super::Backoff::STORE) says.
///
/// `in_write_transaction!(db, "operation", |txn| body)`: `db` is a `&DatabaseConnection` (or
/// any `TransactionTrait + ConnectionTrait`), `"operation"` names the operation in the logs,
/// and `body` is a future of a `Result` that uses the transaction `txn` (an owned transaction:
/// pass `&txn`). The body runs once per attempt, so it must be safe to repeat and may only
/// borrow what it uses; whatever it consumes (a `Vec` to insert, say) it clones.
///
/// A macro rather than a function taking an async closure: the futures of an async closure
/// that borrows the caller's values are not provably `Send` for every lifetime of the
/// transaction borrow, and the ports' methods must return `Send` futures.
macro_rules! in_write_transaction {
    ($db:expr, $what:expr, |$txn:ident| $body:expr) => {
        $crate::dialect::Backoff::STORE
            .retry($what, || async {
                let $txn = $crate::dialect::begin_write($db).await?;
                let value = $body.await?;
                $txn.commit().await?;
                Ok(value)
            })
            .await
    };
}
pub(crate) use in_write_transaction;

/// Makes `select` lock the rows it reads until the write transaction it runs in ends
/// (`FOR UPDATE`), so that a read-modify-write of them never interleaves with another.
///
/// - PostgreSQL and MySQL/MariaDB: `SELECT … FOR UPDATE`.
/// - SQLite has no row locks (sea-query drops the clause there anyway); the `IMMEDIATE`
///   transaction already holds the database's write lock, which excludes every other writer.
pub(crate) fn lock_for_update(backend: DbBackend, select: &mut SelectStatement) {
    if backend != DbBackend::Sqlite {
        select.lock(LockType::Update);
    }
}

/// Makes `select` lock the rows it reads and pass over rows other transactions hold
/// (`FOR UPDATE SKIP LOCKED`), so that concurrent claimers each take different rows instead
/// of queueing behind one.
///
/// - PostgreSQL and MySQL/MariaDB (8.0 / 10.6 and later): `FOR UPDATE SKIP LOCKED`. The rows
///   it skips are invisible to this read: a claimer that finds nothing must not conclude that
///   nothing is there without a plain read.
/// - SQLite: nothing, as for [`lock_for_update`]: its writers run one at a time.
pub(crate) fn lock_skip_locked(backend: DbBackend, select: &mut SelectStatement) {
    if backend != DbBackend::Sqlite {
        select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
}
