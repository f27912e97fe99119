//! Panics caught at the boundary of one iteration of a runner loop (the executor's loops and
//! the batch worker's), so that a panic in a storage, a driver or our own code costs that one
//! iteration instead of the loop's tokio task.
//!
//! `catch_unwind` on the iteration's future rather than a spawned task per iteration: it adds
//! no allocation, no scheduling and no `'static` bound to the hot path, only a poll wrapper;
//! the loops keep their state across iterations by reference.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// Runs `future` to its end, or returns the message of the panic it raised.
///
/// The loops only share state behind locks that recover from poisoning and atomics, so a
/// half-done iteration leaves nothing a later one misreads: asserting unwind safety is sound.
pub(crate) async fn caught<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| message(payload.as_ref()))
}

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
