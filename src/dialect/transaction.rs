//! The write transaction every read-modify-write of both stores runs in, the helper that runs a
//! body in one (retried as a whole), the row locks taken inside it, and the gate the stores'
//! writers pass on SQLite ([`enter_write`]).

use sea_orm::sea_query::{LockBehavior, LockType, SelectStatement};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, IsolationLevel, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
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

/// Begins a [`write_transaction`] on `db`. On a store's own pool, pass [`enter_write`] first
/// and hold its permit until the transaction ends.
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
/// `in_write_transaction!(db, "operation", |txn| body)`: `db` is the store's
/// `&DatabaseConnection`, whose write gate each attempt passes first ([`enter_write`]),
/// `"operation"` names the operation in the logs,
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
                // Held until the commit; released during the pause before a retry.
                let _gate = $crate::dialect::enter_write($db).await;
                let $txn = $crate::dialect::begin_write($db).await?;
                let value = $body.await?;
                $txn.commit().await?;
                Ok(value)
            })
            .await
    };
}
pub(crate) use in_write_transaction;

/// Leave to write through a store's pool, from [`enter_write`]: on SQLite the database's write
/// gate, held until this is dropped; elsewhere nothing.
#[derive(Debug)]
pub(crate) struct WritePermit {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Waits for leave to write to `db` through its pool: every write of the stores on their own
/// connection (a write transaction, or a single statement in autocommit) enters first and holds
/// the [`WritePermit`] until it has committed.
///
/// - SQLite has one writer at a time, and a writer waiting for the write lock holds a pooled
///   connection for as long as the busy timeout lets it wait. While the application's own
///   transaction holds the lock, every background loop of an executor would wait so, and take
///   the whole pool: the application's reads would then queue for a connection for up to the
///   busy timeout. The gate lets one writer of the library at a time take a connection for a
///   write (one gate per database file, as the connection URL names it, shared by every store
///   of this process), so the library's writers together hold at most one connection while they
///   wait; the others wait here, holding none. SQLite runs its writers one at a time anyway, so
///   no write is slower for it.
/// - PostgreSQL and MySQL/MariaDB lock rows, not the database: writers run side by side, and no
///   gate is taken.
///
/// The application's own transactions (the `*_in` forms of the stores) do not pass the gate:
/// they hold their connection already.
pub(crate) async fn enter_write(db: &DatabaseConnection) -> WritePermit {
    let permit = match sqlite_gate(db) {
        // The gates are never closed, so acquiring cannot fail; were one closed, the write
        // would go ahead ungated, as on the other backends.
        Some(gate) => gate.acquire_owned().await.ok(),
        None => None,
    };
    WritePermit { _permit: permit }
}

/// The write gate of the SQLite database `db` is on, shared by every pool of this process on
/// the same file; `None` for any other backend.
#[cfg(feature = "sqlite")]
fn sqlite_gate(db: &DatabaseConnection) -> Option<std::sync::Arc<tokio::sync::Semaphore>> {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::{Arc, LazyLock, Mutex, PoisonError};

    use tokio::sync::Semaphore;

    /// Gates by database file. An entry no writer holds or waits for (the map's own reference
    /// only) can go: the next writer of that file starts a new one, which is the same thing.
    static GATES: LazyLock<Mutex<HashMap<PathBuf, Arc<Semaphore>>>> = LazyLock::new(Mutex::default);

    if !matches!(
        db.inner,
        sea_orm::DatabaseConnectionType::SqlxSqlitePoolConnection(_)
    ) {
        return None;
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let file = options.get_filename();
    // A panic elsewhere while holding the lock leaves the map as it was: still usable.
    let mut gates = GATES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(gate) = gates.get(file) {
        return Some(Arc::clone(gate));
    }
    gates.retain(|_, gate| Arc::strong_count(gate) > 1);
    let gate = Arc::new(Semaphore::new(1));
    gates.insert(file.to_path_buf(), Arc::clone(&gate));
    Some(gate)
}

/// Without the SQLite driver no database needs a gate.
#[cfg(not(feature = "sqlite"))]
fn sqlite_gate(_db: &DatabaseConnection) -> Option<std::sync::Arc<tokio::sync::Semaphore>> {
    None
}

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
