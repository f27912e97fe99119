//! Conformance suites for implementations of this crate's ports, public so that other
//! implementations can run them too (feature `testkit`).
//!
//! Each suite is a set of async functions that take what they test and return a
//! [`TestResult`]; a failed expectation is an error naming what differed.

pub mod executor;

/// The result of a conformance case: `Err` describes the first expectation that failed.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Fails the current case with a formatted message unless `cond` holds.
#[macro_export]
#[doc(hidden)]
macro_rules! testkit_ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}
