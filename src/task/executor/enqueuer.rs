//! The spans that enqueued executions in this process, kept until the executions run here, so
//! that each run's span can follow from the span that asked for it.
//!
//! Only in-process: a run in another process, or one enqueued by hand through the storage,
//! follows from nothing (carrying a context across processes would need it stored with the
//! execution, and an OpenTelemetry-style propagator).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Span;

/// Most spans kept per generation; at most twice this many are kept at once.
const GENERATION: usize = 4096;

/// Spans by execution id, in two generations: when the current one is full it becomes the
/// previous one and the previous one is dropped, so executions that never run here (run by
/// another executor, or enqueued in a transaction that rolled back) are forgotten after
/// [`GENERATION`] newer ones, in O(1) per entry.
#[derive(Default)]
pub(super) struct EnqueueSpans {
    /// Set once anything was kept, so that an application without a tracing subscriber never
    /// takes the lock.
    used: AtomicBool,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, Span>,
    previous: HashMap<String, Span>,
}

impl EnqueueSpans {
    /// Keeps the current span (if a subscriber records it) for the runs of `ids`.
    pub(super) fn remember<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let span = Span::current();
        if span.is_disabled() {
            return;
        }
        self.used.store(true, Ordering::Relaxed);
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in ids {
            if generations.current.len() >= GENERATION {
                generations.previous = std::mem::take(&mut generations.current);
            }
            generations.current.insert(id.to_owned(), span.clone());
        }
    }

    /// Takes the span that enqueued `id`, if it was kept.
    pub(super) fn take(&self, id: &str) -> Option<Span> {
        if !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        generations
            .current
            .remove(id)
            .or_else(|| generations.previous.remove(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(spans: &EnqueueSpans) -> usize {
        let generations = spans
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        generations.current.len() + generations.previous.len()
    }

    #[test]
    fn nothing_is_kept_without_a_recording_span() {
        let spans = EnqueueSpans::default();
        spans.remember(["a"]);
        assert!(spans.take("a").is_none());
        assert!(!spans.used.load(Ordering::Relaxed));
    }

    #[test]
    fn spans_are_taken_once_and_forgotten_after_two_generations() {
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("enqueue");
        let _entered = span.enter();
        let spans = EnqueueSpans::default();
        let ids: Vec<String> = (0..GENERATION * 3).map(|i| format!("te_{i}")).collect();
        spans.remember(ids.iter().map(String::as_str));
        assert!(len(&spans) <= 2 * GENERATION);
        // The oldest were forgotten; the newest are kept, each for one run.
        assert!(spans.take("te_0").is_none());
        let last = format!("te_{}", GENERATION * 3 - 1);
        assert_eq!(spans.take(&last).and_then(|s| s.id()), span.id());
        assert!(spans.take(&last).is_none());
    }
}
