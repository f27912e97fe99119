//! The ids this crate makes up itself: executions, executors, and the claims and finalizations
//! of tasks and batches.

/// A fresh id: `prefix`, then a UUID v7 in 32 lowercase hex digits.
///
/// Version 7 starts with the time in milliseconds, so ids made one after another sort together
/// and inserting them as primary keys writes to one end of the B-tree instead of all over it.
/// The rest is a counter that keeps the ids of one process in order, reseeded at random every
/// millisecond, and random bits, which keep the ids of different processes apart.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::new_id;

    #[test]
    fn ids_keep_their_prefix_and_sort_in_creation_order() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("te_")).collect();
        assert!(ids.iter().all(|id| id.len() == 35 && id.starts_with("te_")));
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}
