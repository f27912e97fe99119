//! Conformance suites for implementations of this crate's ports, public so that other
//! implementations can run them too (feature `testkit`).
//!
//! Each suite is a set of public async case functions, so an implementation proves it behaves
//! like the reference one:
//!
//! - [`task`]: the [`TaskExecutionStorage`](crate::task::storage::TaskExecutionStorage) port, run with
//!   [`task_storage_conformance!`](crate::task_storage_conformance);
//! - [`batch`]: the [`DistributedStateStore`](crate::batch::store::DistributedStateStore) port, run with
//!   [`batch_store_conformance!`](crate::batch_store_conformance);
//! - [`lost_reply`]: [`LoseReplies`](lost_reply::LoseReplies), a wrapper of either port that
//!   loses the reply of a write after it took effect, for the suites' lost-reply cases;
//! - [`executor`]: end-to-end [`Executor`](crate::Executor) scenarios over any task storage, run
//!   one by one with [`run_case`];
//! - [`fault`]: stores that delegate to another and panic on (or delay) chosen calls, to test
//!   that the runners on top survive what a storage, a driver or a bug below them does.
//!
//! Every case returns a [`CaseResult`]: `Err` is a [`CaseFailure`] naming the first expectation
//! that failed (or the unexpected error) and the file and line where it happened.
//!
//! # Fresh stores, and skipping a case
//!
//! Each case runs against a fresh, empty store that a *factory* makes for it. A factory returns
//! [`Setup::Ready`] with an [`UnderTest`] (the store, plus whatever must live as long as the
//! store, such as a temporary database, dropped after the case), or [`Setup::Skip`] with the
//! reason the case cannot run here (for instance, no database server is configured). A skipped
//! case passes, and prints one `skipped <case>: <reason>` line so it never passes unnoticed.
//! This is the only way to skip a case, in every suite.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::Location;

// The assertion macros of every suite, defined before the suites so they are in scope there.
/// Fails the current conformance case unless `cond` holds, with a formatted message and the
/// file and line of the expectation.
macro_rules! check {
    ($cond:expr $(,)?) => {
        check!($cond, "expected {}", stringify!($cond))
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return ::std::result::Result::Err($crate::testkit::CaseFailure::new(format!($($msg)+)).into());
        }
    };
}

/// Fails the current conformance case unless `left == right`, showing both.
macro_rules! check_eq {
    ($left:expr, $right:expr $(,)?) => {{
        match (&$left, &$right) {
            (left, right) => check!(
                left == right,
                "{} == {}: left {:?}, right {:?}",
                stringify!($left),
                stringify!($right),
                left,
                right
            ),
        }
    }};
}

pub mod batch;
mod control;
pub mod executor;
pub mod fault;
pub mod lost_reply;
mod sweep;
pub mod task;
mod values;

/// What a conformance case returns (`T` is `()` for all but a few executor scenarios, which
/// return a measurement to report).
pub type CaseResult<T = ()> = Result<T, CaseFailure>;

/// Why a conformance case failed: a broken expectation or an unexpected error, and the file and
/// line where the case noticed it.
///
/// The suites' `check!` and `check_eq!` return one for a broken expectation, and `?` converts
/// into one, located where it met the error: the crate's [`Error`](crate::Error) and
/// [`TaskError`](crate::TaskError), `sea_orm::DbErr`, `serde_json::Error`, tokio's join and
/// timeout errors, integer parsing and conversion errors, and any
/// `Box<dyn Error + Send + Sync>` (so `.map_err(Box::from)?` takes any other error).
pub struct CaseFailure {
    message: String,
    location: &'static Location<'static>,
}

impl CaseFailure {
    /// A failure with `message`, located at the caller.
    #[track_caller]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            location: Location::caller(),
        }
    }

    /// What went wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file of the case where the failure was noticed.
    pub fn file(&self) -> &'static str {
        self.location.file()
    }

    /// The line in [`file`](Self::file) where the failure was noticed.
    pub fn line(&self) -> u32 {
        self.location.line()
    }

    /// An unexpected error, located at the caller.
    #[track_caller]
    fn unexpected(err: impl fmt::Display) -> Self {
        Self::new(format!("unexpected error: {err}"))
    }
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at {}:{})", self.message, self.file(), self.line())
    }
}

// A test returning `Err` prints the error's `Debug`: show the message, not the struct.
impl fmt::Debug for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CaseFailure {}

/// Converts errors into a [`CaseFailure`] located where `?` met them (`?` passes its caller's
/// location on to `From::from`).
macro_rules! unexpected_from {
    ($($err:ty),* $(,)?) => {
        $(impl From<$err> for CaseFailure {
            #[track_caller]
            fn from(err: $err) -> Self {
                Self::unexpected(err)
            }
        })*
    };
}

unexpected_from!(
    crate::Error,
    crate::TaskError,
    sea_orm::DbErr,
    serde_json::Error,
    tokio::task::JoinError,
    tokio::time::error::Elapsed,
    std::num::TryFromIntError,
    std::num::ParseIntError,
    Box<dyn std::error::Error + Send + Sync>,
);

impl From<String> for CaseFailure {
    #[track_caller]
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for CaseFailure {
    #[track_caller]
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// What a factory made for one case: the store to run it against, or why it cannot run here.
#[must_use]
pub enum Setup<T> {
    /// Run the case against this.
    Ready(T),
    /// Do not run the case, for this reason (for instance "DATABASE_URL_POSTGRES is not set");
    /// the case passes and prints one line saying it was skipped and why.
    Skip(String),
}

/// A store to run a case against, and whatever must live as long as it (a temporary database,
/// a directory), dropped after the case.
pub struct UnderTest<S> {
    /// The store.
    pub store: S,
    /// Dropped after the case, never read.
    pub guard: Box<dyn Any + Send>,
}

impl<S> UnderTest<S> {
    /// A store that needs nothing else kept alive.
    pub fn new(store: S) -> Self {
        Self {
            store,
            guard: Box::new(()),
        }
    }

    /// A store and the value that keeps its backing alive.
    pub fn with_guard(store: S, guard: impl Any + Send) -> Self {
        Self {
            store,
            guard: Box::new(guard),
        }
    }
}

/// Runs `case` (named `name` in the skip line) against the store `setup` makes, then drops the
/// store and its guard; when `setup` says [`Setup::Skip`], prints `skipped <name>: <reason>` to
/// stderr and returns `Ok(None)` without running the case.
///
/// # Errors
///
/// The factory's error, or the case's [`CaseFailure`].
pub async fn run_case<S, T, E, C, CFut>(
    name: &str,
    setup: impl Future<Output = Result<Setup<UnderTest<S>>, E>>,
    case: C,
) -> CaseResult<Option<T>>
where
    S: Clone,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: FnOnce(S) -> CFut,
    CFut: Future<Output = CaseResult<T>>,
{
    let under_test = match setup
        .await
        .map_err(|e| CaseFailure::new(format!("could not set up the store: {}", e.into())))?
    {
        Setup::Ready(under_test) => under_test,
        Setup::Skip(reason) => {
            // The one trace a skipped case leaves: without it, it would read as passed.
            eprintln!("skipped {name}: {reason}");
            return Ok(None);
        }
    };
    let result = case(under_test.store.clone()).await;
    drop(under_test);
    result.map(Some)
}
