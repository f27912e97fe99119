//! The batched result writer: the guarded updates of finished runs, queued by the runs and
//! written together, one storage call (one transaction on SQL storages) per batch.

use super::*;

/// A guarded update waiting for the batch writer, and where its match count goes.
pub(super) type PendingWrite = (
    TaskExecutionGuard,
    TaskExecutionUpdate,
    oneshot::Sender<Result<u64>>,
);

/// Most guarded updates written in one batch.
pub(super) const WRITE_BATCH: usize = 128;

/// Writes the results of runs in batches: whatever accumulated while earlier batches were being
/// written goes out in the next one, in one call (one transaction on SQL storages). An idle
/// executor writes a lone result at once; a busy one pays one commit per batch instead of one per
/// execution. Up to [`WRITES_IN_FLIGHT`] batches are written at once. After each batch it wakes
/// the loops in `written` (the close loop, which closes what the batch finished, and the parents
/// loop: a storage may have closed the children in the batch already). Ends when the channel
/// closes, after [`Executor::shutdown`] and the last reference to the executor are gone.
///
/// A batch whose write panics (in the storage or its driver) is counted in `panics` and
/// logged; its writers see their reply dropped and write their updates themselves.
pub(super) async fn write_batches(
    storage: Arc<dyn TaskExecutionStorage>,
    mut pending: mpsc::UnboundedReceiver<PendingWrite>,
    written: [Arc<Notify>; 2],
    panics: metrics::Counter,
) {
    let in_flight = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        if pending.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            return;
        }
        // Runs claimed together tend to finish together: give the others a moment to join
        // this batch rather than each paying for a transaction of its own.
        for _ in 0..4 {
            if batch.len() >= WRITE_BATCH {
                break;
            }
            tokio::task::yield_now().await;
            while batch.len() < WRITE_BATCH {
                match pending.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
        }
        let (storage, written, panics) = (Arc::clone(&storage), written.clone(), panics.clone());
        tokio::spawn(async move {
            if let Err(panic) = crate::unwind::caught(write_batch(&*storage, batch)).await {
                panics.increment(1);
                tracing::error!(
                    loop_name = "writer",
                    panic,
                    "writing a batch of results panicked; its runs write their results one by one"
                );
            }
            drop(permit);
            // The executions just finished are the close loop's next work, or, closed already,
            // the parents loop's.
            for wake in written {
                wake.notify_one();
            }
        });
    }
}

/// Most batches of results written at once.
pub(super) const WRITES_IN_FLIGHT: usize = 4;

/// Writes one batch. The batch is written at one instant, the latest time of its updates (each
/// run's own time or a few milliseconds later): updates that differ only in their times then
/// set the same values, which a storage can write with one statement.
pub(super) async fn write_batch(storage: &dyn TaskExecutionStorage, batch: Vec<PendingWrite>) {
    let now = batch.iter().map(|(_, update, _)| update.now).max();
    let (updates, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|(guard, mut update, reply)| {
            update.now = now.unwrap_or(update.now);
            ((guard, update), reply)
        })
        .unzip();
    match storage.update_task_executions_many(&updates).await {
        Ok(matched) => {
            for (reply, n) in replies.into_iter().zip(matched) {
                let _ = reply.send(Ok(n));
            }
        }
        Err(err) => {
            // One bad row must not sink the others: write them one by one, so each writer
            // gets its own result.
            tracing::warn!(error = %err, count = updates.len(), "batched write failed; writing one by one");
            for ((guard, update), reply) in updates.iter().zip(replies) {
                let _ = reply.send(storage.update_task_executions(guard, update).await);
            }
        }
    }
}

impl Inner {
    /// A guarded update through the batch writer.
    pub(super) async fn write(
        &self,
        guard: TaskExecutionGuard,
        update: TaskExecutionUpdate,
    ) -> Result<u64> {
        let (reply, matched) = oneshot::channel();
        if self
            .writes
            .send((guard.clone(), update.clone(), reply))
            .is_err()
        {
            return self.storage.update_task_executions(&guard, &update).await;
        }
        match matched.await {
            Ok(result) => result,
            Err(_) => self.storage.update_task_executions(&guard, &update).await,
        }
    }
}
