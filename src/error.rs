//! The library's error type.
//!
//! Every fallible operation returns [`Result`]. Database errors are classified once, in
//! [`Error::from`]`(DbErr)`: unique-key violations become [`Error::Conflict`], everything else
//! stays an opaque [`DatabaseError`] that still knows whether retrying can help.

use sea_orm::DbErr;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a store or a runner.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing asked for does not exist.
    #[error("{entity} not found: {key}")]
    NotFound {
        /// What was looked up (`job`, `batch`, `task execution`, ...).
        entity: &'static str,
        /// The key it was looked up by.
        key: String,
    },
    /// A write would duplicate a unique key (an id that is already taken).
    #[error("conflict: {message}")]
    Conflict {
        /// What collided.
        message: String,
        /// The database error behind it, when the database reported it.
        #[source]
        source: Option<DatabaseError>,
    },
    /// A stored row cannot be turned into a domain value: malformed JSON, an unknown status, a
    /// number out of range. Other rows are unaffected.
    #[error("corrupt row in {table} (key {key}), column {column}: {reason}")]
    CorruptRow {
        /// The table the row is in.
        table: &'static str,
        /// The row's key.
        key: String,
        /// The offending column.
        column: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// An argument was rejected before anything was written.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The operation does not apply to the row as it stands (for example a retry of an
    /// execution that did not fail); nothing was written. The reason says why and what to do
    /// instead.
    #[error("{entity} {key}: {reason}")]
    InvalidState {
        /// What the operation was applied to (`task execution`, `job`, ...).
        entity: &'static str,
        /// Its key.
        key: String,
        /// Why the operation does not apply, and what to do instead.
        reason: String,
    },
    /// The storage cannot do this operation (for example join the application's transaction
    /// when it does not keep its rows in the application's database).
    #[error("{operation} is not supported by this storage")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
    },
    /// An operation did not finish in the time it was given.
    #[error("timed out {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
    },
    /// A payload could not be serialized or deserialized.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The database failed; see [`DatabaseError::is_retryable`].
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl Error {
    /// Whether the same operation may succeed if tried again: serialization failures,
    /// deadlocks, lock wait timeouts, SQLite busy/locked, and lost connections.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl Error {
    /// An [`Error::InvalidArgument`].
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }

    /// An [`Error::CorruptRow`].
    pub(crate) fn corrupt(
        table: &'static str,
        key: impl Into<String>,
        column: &'static str,
        reason: impl std::fmt::Display,
    ) -> Self {
        Error::CorruptRow {
            table,
            key: key.into(),
            column,
            reason: reason.to_string(),
        }
    }

    /// An [`Error::InvalidState`].
    pub(crate) fn invalid_state(
        entity: &'static str,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidState {
            entity,
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Conflict`] found without a database error behind it.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
            source: None,
        }
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            Class::UniqueViolation => Error::Conflict {
                message: "unique key already exists".to_owned(),
                source: Some(DatabaseError {
                    retryable: false,
                    source: err,
                }),
            },
            Class::Retryable => Error::Database(DatabaseError {
                retryable: true,
                source: err,
            }),
            Class::Other => Error::Database(DatabaseError {
                retryable: false,
                source: err,
            }),
        }
    }
}

/// A status string that is not one of the values a status type knows (the error of the status
/// types' `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

/// An opaque database failure.
#[derive(Debug, thiserror::Error)]
#[error("database error: {source}")]
pub struct DatabaseError {
    retryable: bool,
    source: DbErr,
}

impl DatabaseError {
    /// Whether retrying the operation may succeed (deadlock, serialization failure, lock wait
    /// timeout, SQLite busy/locked, lost connection).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// How a database error should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    UniqueViolation,
    Retryable,
    Other,
}

/// Classifies a database error by its portable kind and its backend error code.
///
/// The `DbErr` variant (`Exec` vs `Query`) differs per backend for the same failure, so it is
/// never used to decide; only `sql_err()` and the codes are.
fn classify(err: &DbErr) -> Class {
    if let Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) = err.sql_err() {
        return Class::UniqueViolation;
    }
    let (DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))) = err
    else {
        return match err {
            // A pool that could not hand out a connection in time recovers by itself.
            DbErr::ConnectionAcquire(_) => Class::Retryable,
            _ => Class::Other,
        };
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(db) => {
            #[cfg(feature = "mysql")]
            if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
                // 1213 deadlock, 1205 lock wait timeout; 1040 too many connections, 1053
                // server shutdown in progress, 1927 connection killed (MariaDB).
                return if matches!(my.number(), 1213 | 1205 | 1040 | 1053 | 1927) {
                    Class::Retryable
                } else {
                    Class::Other
                };
            }
            match db.code().as_deref() {
                // PostgreSQL: serialization failure, deadlock detected.
                Some("40001" | "40P01") => Class::Retryable,
                // PostgreSQL: the session was ended or could not start because the server is
                // shutting down, restarting or full (admin_shutdown, crash_shutdown,
                // cannot_connect_now, too_many_connections) or the connection broke (08xxx).
                Some("57P01" | "57P02" | "57P03" | "53300") => Class::Retryable,
                Some(code) if code.starts_with("08") => Class::Retryable,
                // PostgreSQL, while connecting only: the database does not accept connections
                // for now (`ALLOW_CONNECTIONS false` during maintenance). Elsewhere 55000 is a
                // wrong object state that retrying does not fix.
                Some("55000") if matches!(err, DbErr::Conn(_)) => Class::Retryable,
                // SQLite: BUSY, LOCKED and their extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT,
                // BUSY_TIMEOUT, LOCKED_SHAREDCACHE).
                Some("5" | "6" | "261" | "262" | "517" | "773") => Class::Retryable,
                _ => Class::Other,
            }
        }
        // The connection broke or the pool could not supply one: the server may be restarting.
        sea_orm::sqlx::Error::Io(_)
        | sea_orm::sqlx::Error::PoolTimedOut
        | sea_orm::sqlx::Error::PoolClosed
        | sea_orm::sqlx::Error::WorkerCrashed => Class::Retryable,
        _ => Class::Other,
    }
}
