//! [`InMemoryStateStore`]: the reference implementation of the batch ports.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::check;
use super::model::{
    Batch, BatchOutcome, BatchReservation, BatchState, BatchStatus, ClaimBatchResult,
    DistributedJobStatus, JobProgress, JobState, JobStatus, ProcessedRecord,
    REQUEUE_WHILE_FINALIZING, RecordCounts, RecordFilter, RecordOutcome, RecordStatus,
    RequeuedRecords, requeue_refusal,
};
use super::store::{DistributedStateStore, StateStore};
use crate::clock::{self, Clock};
use crate::error::{Error, Result};

/// A [`DistributedStateStore`] kept in process memory.
///
/// It behaves like the database stores (the same conformance suite runs against both), so it
/// suits tests and single-process jobs that need no durability. Clones share the same state.
#[derive(Debug, Clone)]
pub struct InMemoryStateStore {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, StoredJob>,
    /// Records by job, then by index, with the batch each was last written for.
    records: HashMap<String, BTreeMap<u64, (String, ProcessedRecord)>>,
    /// Which job and index each batch row belongs to (batch ids are unique across jobs).
    batch_ids: HashMap<String, (String, u32)>,
}

#[derive(Debug)]
struct StoredJob {
    /// The job as last saved; for a distributed job its `batches` are kept in `rows` instead.
    job: JobState,
    /// Batch rows of a distributed job, by index.
    rows: BTreeMap<u32, BatchRow>,
    /// Who finalized the job.
    finalized_by: Option<String>,
}

#[derive(Debug, Clone)]
struct BatchRow {
    batch: Batch,
    version: i64,
    heartbeat_at: Option<i64>,
    updated_at: i64,
    /// The claim that took the batch last, while it holds.
    claim_id: Option<String>,
}

impl InMemoryStateStore {
    /// An empty store reading the system clock.
    pub fn new() -> Self {
        Self::with_clock(clock::system())
    }

    /// An empty store reading `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::default(),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way later
        // calls trip over (every update is a single insert or field write), so poisoning is
        // ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for InMemoryStateStore {
    fn default() -> Self {
        Self::new()
    }
}

impl StoredJob {
    fn batches(&self) -> Vec<Batch> {
        if self.job.distributed {
            self.rows.values().map(|r| r.batch.clone()).collect()
        } else {
            self.job.batches.clone()
        }
    }
}

/// The batch row `batch_id` of job `job_id`, if both exist.
fn row_mut<'a>(state: &'a mut State, job_id: &str, batch_id: &str) -> Option<&'a mut BatchRow> {
    let (owner, index) = state.batch_ids.get(batch_id)?;
    if owner != job_id {
        return None;
    }
    let index = *index;
    state.jobs.get_mut(job_id)?.rows.get_mut(&index)
}

/// What a record write does to a record already stored at the same index (as the database
/// store's record writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordWrite {
    IfAbsent,
    Forward,
    Replace,
}

fn write_records(
    state: &mut State,
    job_id: &str,
    batch_id: &str,
    records: &[ProcessedRecord],
    mode: RecordWrite,
) {
    let stored = state.records.entry(job_id.to_owned()).or_default();
    for record in records {
        let keep = stored
            .get(&record.index)
            .is_some_and(|(_, old)| match mode {
                RecordWrite::IfAbsent => true,
                RecordWrite::Forward => is_finished(old.status) && !is_finished(record.status),
                RecordWrite::Replace => false,
            });
        if !keep {
            stored.insert(record.index, (batch_id.to_owned(), record.clone()));
        }
    }
}

/// Whether a record has an outcome (`processed`, `failed`, `invalid`).
fn is_finished(status: RecordStatus) -> bool {
    !RecordStatus::PENDING.contains(&status)
}

/// Rejects batch ids of `job` that belong to another job's batch rows, before anything is
/// written (as the database's transaction would).
fn check_batch_ids(state: &State, job: &JobState) -> Result<()> {
    for batch in &job.batches {
        let exists = state
            .jobs
            .get(&job.id)
            .is_some_and(|j| j.rows.contains_key(&batch.index));
        if !exists && state.batch_ids.contains_key(&batch.id) {
            return Err(Error::conflict(format!(
                "batch id {} is already taken",
                batch.id
            )));
        }
    }
    Ok(())
}

/// Adds the batch rows of distributed job `job` that its stored job lacks.
fn insert_batches(state: &mut State, job: &JobState, now: i64) {
    let Some(stored) = state.jobs.get_mut(&job.id) else {
        return;
    };
    for batch in &job.batches {
        if stored.rows.contains_key(&batch.index) {
            continue;
        }
        state
            .batch_ids
            .insert(batch.id.clone(), (job.id.clone(), batch.index));
        let heartbeat_at =
            (batch.status == BatchStatus::Processing).then(|| batch.claimed_at.unwrap_or(now));
        stored.rows.insert(
            batch.index,
            BatchRow {
                batch: batch.clone(),
                version: 0,
                heartbeat_at,
                updated_at: now,
                claim_id: None,
            },
        );
    }
}

impl InMemoryStateStore {
    fn save_job(&self, job: &JobState, reset: bool) -> Result<()> {
        check::job(job)?;
        let now = self.clock.now_ms();
        let mut state = self.lock();
        if !reset
            && !job.status.is_terminal()
            && let Some(stored) = state.jobs.get(&job.id)
            && stored.job.status.is_terminal()
        {
            return Err(Error::conflict(format!(
                "job {} is {}; saving it as {} would move it back (reset_job_state does that on purpose)",
                job.id, stored.job.status, job.status
            )));
        }
        if job.distributed {
            check_batch_ids(&state, job)?;
        }
        let stored = state
            .jobs
            .entry(job.id.clone())
            .or_insert_with(|| StoredJob {
                job: job.clone(),
                rows: BTreeMap::new(),
                finalized_by: None,
            });
        stored.job = job.clone();
        if job.distributed {
            stored.job.batches.clear();
            insert_batches(&mut state, job, now);
        }
        Ok(())
    }

    fn write_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
        mode: RecordWrite,
    ) -> Result<()> {
        check::record_args(job_id, batch_id, records)?;
        let mut state = self.lock();
        write_records(&mut state, job_id, batch_id, records, mode);
        Ok(())
    }
}

#[async_trait]
impl StateStore for InMemoryStateStore {
    async fn save_job_state(&self, job: &JobState) -> Result<()> {
        self.save_job(job, false)
    }

    async fn reset_job_state(&self, job: &JobState) -> Result<()> {
        self.save_job(job, true)
    }

    async fn prune_finished_jobs(&self, finished_before: i64, limit: u64) -> Result<u64> {
        let mut state = self.lock();
        let oldest = state
            .jobs
            .values()
            .filter(|j| {
                j.job.status.is_terminal()
                    && j.job.completed_at.is_some_and(|at| at < finished_before)
            })
            .min_by_key(|j| (j.job.completed_at, j.job.id.clone()))
            .map(|j| j.job.id.clone());
        let Some(job_id) = oldest else {
            return Ok(0);
        };
        let mut budget = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut deleted = 0_u64;
        if let Some(records) = state.records.get_mut(&job_id) {
            while budget > 0 && records.pop_first().is_some() {
                budget -= 1;
                deleted += 1;
            }
            if records.is_empty() {
                state.records.remove(&job_id);
            }
        }
        let rows: Vec<(u32, String)> = state
            .jobs
            .get(&job_id)
            .map(|j| {
                j.rows
                    .iter()
                    .take(budget)
                    .map(|(i, r)| (*i, r.batch.id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (index, batch_id) in rows {
            if let Some(job) = state.jobs.get_mut(&job_id) {
                job.rows.remove(&index);
            }
            state.batch_ids.remove(&batch_id);
            budget -= 1;
            deleted += 1;
        }
        let empty = !state.records.contains_key(&job_id)
            && state.jobs.get(&job_id).is_some_and(|j| j.rows.is_empty());
        if budget > 0 && empty {
            state.jobs.remove(&job_id);
            deleted += 1;
        }
        Ok(deleted)
    }

    async fn reset_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.write_records(job_id, batch_id, records, RecordWrite::Replace)
    }

    async fn get_job_state(&self, job_id: &str) -> Result<Option<JobState>> {
        let state = self.lock();
        Ok(state.jobs.get(job_id).map(|stored| JobState {
            batches: stored.batches(),
            ..stored.job.clone()
        }))
    }

    async fn update_batch_state(
        &self,
        job_id: &str,
        batch_id: &str,
        new: &BatchState,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(stored) = state.jobs.get_mut(job_id) else {
            return Ok(());
        };
        if !stored.job.distributed {
            for batch in stored.job.batches.iter_mut().filter(|b| b.id == batch_id) {
                batch.status = new.status;
                batch.processed_count = new.processed_count;
                batch.failed_count = new.failed_count;
            }
            return Ok(());
        }
        if let Some(row) = row_mut(&mut state, job_id, batch_id) {
            apply_batch_state(row, new, now);
        }
        Ok(())
    }

    async fn save_processed_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.write_records(job_id, batch_id, records, RecordWrite::Forward)
    }

    async fn get_records(
        &self,
        job_id: &str,
        filter: &RecordFilter,
    ) -> Result<Vec<ProcessedRecord>> {
        let state = self.lock();
        let Some(records) = state.records.get(job_id) else {
            return Ok(Vec::new());
        };
        let limit = filter
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        Ok(records
            .values()
            .filter(|(batch_id, record)| filter.matches(batch_id, record))
            .take(limit)
            .map(|(_, record)| record.clone())
            .collect())
    }

    async fn get_progress(&self, job_id: &str) -> Result<JobProgress> {
        let now = self.clock.now_ms();
        let state = self.lock();
        let mut counts = RecordCounts::default();
        let records = state.records.get(job_id);
        for (_, record) in records.into_iter().flat_map(|r| r.values()) {
            counts.count(Some(record.status), 1);
        }
        let Some(stored) = state.jobs.get(job_id) else {
            counts.total = records.map_or(0, |r| u64::try_from(r.len()).unwrap_or(u64::MAX));
            return Ok(JobProgress::compute(counts, 0, 0, None, None, now));
        };
        counts.total = stored.job.total_records;
        let batches = stored.batches();
        let completed = batches
            .iter()
            .filter(|b| b.status == BatchStatus::Completed)
            .count();
        Ok(JobProgress::compute(
            counts,
            u64::try_from(completed).unwrap_or(u64::MAX),
            u64::try_from(batches.len()).unwrap_or(u64::MAX),
            stored.job.started_at,
            stored.job.completed_at,
            now,
        ))
    }
}

/// [`StateStore::update_batch_state`] on a batch row: a status change bumps the version,
/// clears the claim when the batch goes back to `PENDING`, restarts the staleness clock when it
/// goes to `PROCESSING`.
fn apply_batch_state(row: &mut BatchRow, new: &BatchState, now: i64) {
    if row.batch.status != new.status {
        row.version = crate::dialect::next_token(row.version);
        row.claim_id = None;
        match new.status {
            BatchStatus::Pending => {
                row.batch.worker_id = None;
                row.batch.claimed_at = None;
                row.heartbeat_at = None;
            }
            BatchStatus::Processing => row.heartbeat_at = Some(now),
            _ => {}
        }
    }
    row.batch.status = new.status;
    row.batch.processed_count = new.processed_count;
    row.batch.failed_count = new.failed_count;
    row.updated_at = now;
}

#[async_trait]
impl DistributedStateStore for InMemoryStateStore {
    async fn create_job(&self, job: &JobState) -> Result<bool> {
        check::job(job)?;
        let mut state = self.lock();
        if state.jobs.contains_key(&job.id) {
            return Ok(false);
        }
        let mut row = job.clone();
        row.batches.clear();
        state.jobs.insert(
            job.id.clone(),
            StoredJob {
                job: row,
                rows: BTreeMap::new(),
                finalized_by: None,
            },
        );
        Ok(true)
    }

    async fn start_job(&self, job: &JobState) -> Result<bool> {
        check::job(job)?;
        if !job.distributed {
            return Err(Error::invalid(
                "job.distributed",
                "start_job starts distributed jobs",
            ));
        }
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let created = state
            .jobs
            .get(&job.id)
            .is_some_and(|j| j.job.status == JobStatus::Created);
        if !created {
            return Ok(false);
        }
        check_batch_ids(&state, job)?;
        insert_batches(&mut state, job, now);
        let Some(stored) = state.jobs.get_mut(&job.id) else {
            return Ok(false);
        };
        stored.job.status = job.status;
        stored.job.config = job.config.clone();
        stored.job.total_records = job.total_records;
        stored.job.started_at = Some(job.started_at.unwrap_or(now));
        stored.job.completed_at = job
            .completed_at
            .or_else(|| job.status.is_terminal().then_some(now));
        stored.job.distributed = true;
        Ok(true)
    }

    async fn claim_batch_with_id(
        &self,
        job_id: &str,
        worker_id: &str,
        claim_id: &str,
    ) -> Result<ClaimBatchResult> {
        check::claim_args(job_id, worker_id, claim_id)?;
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(stored) = state.jobs.get_mut(job_id) else {
            return Ok(ClaimBatchResult::JobNotFound);
        };
        if stored.job.status != JobStatus::Processing {
            return Ok(ClaimBatchResult::JobNotProcessing);
        }
        if let Some(row) = stored.rows.values().find(|r| {
            r.batch.status == BatchStatus::Processing && r.claim_id.as_deref() == Some(claim_id)
        }) {
            return Ok(ClaimBatchResult::Claimed(reservation(
                job_id, row, worker_id,
            )));
        }
        let Some(row) = stored
            .rows
            .values_mut()
            .find(|r| r.batch.status == BatchStatus::Pending)
        else {
            return Ok(ClaimBatchResult::NoPendingBatches);
        };
        row.batch.status = BatchStatus::Processing;
        row.batch.worker_id = Some(worker_id.to_owned());
        row.batch.claimed_at = Some(now);
        row.heartbeat_at = Some(now);
        row.updated_at = now;
        row.version = crate::dialect::next_token(row.version);
        row.claim_id = Some(claim_id.to_owned());
        Ok(ClaimBatchResult::Claimed(reservation(
            job_id, row, worker_id,
        )))
    }

    async fn release_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(row) = held_row(&mut state, reservation) else {
            return Ok(false);
        };
        back_to_pending(row, now);
        Ok(true)
    }

    async fn reclaim_stale_batches(&self, job_id: &str, timeout: Duration) -> Result<u64> {
        let now = self.clock.now_ms();
        let cutoff = check::stale_cutoff(now, timeout);
        let mut state = self.lock();
        let Some(stored) = state.jobs.get_mut(job_id) else {
            return Ok(0);
        };
        let mut reclaimed = 0;
        for row in stored.rows.values_mut() {
            let last_sign = row.heartbeat_at.unwrap_or(row.updated_at);
            if row.batch.status == BatchStatus::Processing && last_sign < cutoff {
                back_to_pending(row, now);
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }

    async fn save_batch_records(
        &self,
        job_id: &str,
        batch_id: &str,
        records: &[ProcessedRecord],
    ) -> Result<()> {
        self.write_records(job_id, batch_id, records, RecordWrite::IfAbsent)
    }

    async fn get_distributed_status(&self, job_id: &str) -> Result<DistributedJobStatus> {
        let state = self.lock();
        let mut status = DistributedJobStatus::empty(job_id);
        if let Some(stored) = state.jobs.get(job_id) {
            for row in stored.rows.values() {
                status.count(Some(row.batch.status), 1);
            }
        }
        Ok(status)
    }

    async fn try_finalize_job_with_id(&self, job_id: &str, finalizer_id: &str) -> Result<bool> {
        check::claim_id("finalizer_id", finalizer_id)?;
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(stored) = state.jobs.get_mut(job_id) else {
            return Ok(false);
        };
        let mut status = DistributedJobStatus::empty(job_id);
        for row in stored.rows.values() {
            status.count(Some(row.batch.status), 1);
        }
        if stored.job.status != JobStatus::Processing || !status.is_complete {
            // Finalized by this finalizer before (its answer lost on the way)?
            return Ok(stored.job.status.is_terminal()
                && stored.finalized_by.as_deref() == Some(finalizer_id));
        }
        stored.finalized_by = Some(finalizer_id.to_owned());
        stored.job.status = if status.failed_batches > 0 {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        };
        stored.job.completed_at = Some(now);
        Ok(true)
    }

    async fn requeue_failed_records(&self, job_id: &str) -> Result<RequeuedRecords> {
        let now = self.clock.now_ms();
        let mut guard = self.lock();
        let state = &mut *guard;
        let stored = state.jobs.get_mut(job_id).ok_or_else(|| Error::NotFound {
            entity: "job",
            key: job_id.to_owned(),
        })?;
        if let Some(reason) = requeue_refusal(stored.job.status, stored.job.distributed) {
            return Err(Error::invalid_state("job", job_id, reason));
        }
        let mut done = RequeuedRecords {
            records: 0,
            batches: 0,
            left_failed: 0,
            job_status: stored.job.status,
        };
        let Some(records) = state.records.get_mut(job_id) else {
            return Ok(done);
        };
        let failed: Vec<u64> = records
            .iter()
            .filter(|(_, (_, r))| r.status == RecordStatus::Failed)
            .map(|(index, _)| *index)
            .collect();
        if failed.is_empty() {
            return Ok(done);
        }
        if stored.job.status == JobStatus::Processing
            && stored.rows.values().all(|r| r.batch.status.is_terminal())
        {
            return Err(Error::invalid_state(
                "job",
                job_id,
                REQUEUE_WHILE_FINALIZING,
            ));
        }
        for index in failed {
            let Some((batch_id, record)) = records.get_mut(&index) else {
                continue;
            };
            let row = state
                .batch_ids
                .get(batch_id.as_str())
                .filter(|(owner, _)| owner == job_id)
                .and_then(|(_, batch_index)| stored.rows.get_mut(batch_index));
            let Some(row) = row else {
                // A record of no batch row is claimed by no one; leave it as the SQL store does.
                done.left_failed += 1;
                continue;
            };
            match row.batch.status {
                BatchStatus::Completed | BatchStatus::Failed => {
                    row.batch.status = BatchStatus::Pending;
                    row.batch.worker_id = None;
                    row.batch.claimed_at = None;
                    row.batch.failed_count = 0;
                    row.heartbeat_at = None;
                    row.claim_id = None;
                    row.updated_at = now;
                    row.version = crate::dialect::next_token(row.version);
                    done.batches += 1;
                }
                BatchStatus::Pending => {}
                BatchStatus::Processing | BatchStatus::Paused => {
                    done.left_failed += 1;
                    continue;
                }
            }
            record.status = RecordStatus::Pending;
            record.processing_error = None;
            done.records += 1;
        }
        if done.records > 0 && stored.job.status.is_terminal() {
            stored.job.status = JobStatus::Processing;
            stored.job.completed_at = None;
            stored.finalized_by = None;
        }
        done.job_status = stored.job.status;
        Ok(done)
    }

    async fn complete_batch(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
    ) -> Result<bool> {
        self.complete_batch_with_outcomes(reservation, outcome, &[])
            .await
    }

    async fn complete_batch_with_outcomes(
        &self,
        reservation: &BatchReservation,
        outcome: BatchOutcome,
        outcomes: &[RecordOutcome],
    ) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(row) = held_row(&mut state, reservation) else {
            return Ok(false);
        };
        row.batch.status = outcome.status();
        row.batch.processed_count = outcome.processed_count;
        row.batch.failed_count = outcome.failed_count;
        row.updated_at = now;
        apply_outcomes(
            &mut state,
            &reservation.job_id,
            &reservation.batch_id,
            outcomes,
        );
        Ok(true)
    }

    async fn heartbeat_batch(&self, reservation: &BatchReservation) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let Some(row) = held_row(&mut state, reservation) else {
            return Ok(false);
        };
        row.heartbeat_at = Some(now);
        row.updated_at = now;
        Ok(true)
    }

    async fn save_record_outcomes(
        &self,
        job_id: &str,
        batch_id: &str,
        outcomes: &[RecordOutcome],
    ) -> Result<u64> {
        check::id("job_id", job_id)?;
        check::id("batch_id", batch_id)?;
        let mut state = self.lock();
        Ok(apply_outcomes(&mut state, job_id, batch_id, outcomes))
    }
}

/// Writes outcomes onto the records of `batch_id`; returns how many it changed.
fn apply_outcomes(
    state: &mut State,
    job_id: &str,
    batch_id: &str,
    outcomes: &[RecordOutcome],
) -> u64 {
    let Some(stored) = state.records.get_mut(job_id) else {
        return 0;
    };
    let mut updated = 0;
    for outcome in outcomes {
        if let Some((owner, record)) = stored.get_mut(&outcome.index)
            && owner == batch_id
        {
            record.status = outcome.status;
            record.errors = outcome.errors.clone();
            record.processing_error = outcome.processing_error.clone();
            record.retry_count = outcome.retry_count;
            updated += 1;
        }
    }
    updated
}

/// The reservation of claimed batch `row`.
fn reservation(job_id: &str, row: &BatchRow, worker_id: &str) -> BatchReservation {
    BatchReservation {
        job_id: job_id.to_owned(),
        batch_id: row.batch.id.clone(),
        batch_index: row.batch.index,
        worker_id: row
            .batch
            .worker_id
            .clone()
            .unwrap_or_else(|| worker_id.to_owned()),
        claimed_at: row.batch.claimed_at.unwrap_or(row.updated_at),
        record_start_index: row.batch.record_start_index.unwrap_or(0),
        record_end_index: row.batch.record_end_index.unwrap_or(0),
        version: row.version,
    }
}

/// Puts a batch back to `PENDING` without an owner, bumping its version so that the former
/// owner's claim no longer holds.
fn back_to_pending(row: &mut BatchRow, now: i64) {
    row.batch.status = BatchStatus::Pending;
    row.batch.worker_id = None;
    row.batch.claimed_at = None;
    row.heartbeat_at = None;
    row.claim_id = None;
    row.updated_at = now;
    row.version = crate::dialect::next_token(row.version);
}

/// The row of the batch `reservation` claimed, while the claim still holds it: still
/// `PROCESSING`, under the same worker and version (a reclaim or release bumps the version).
fn held_row<'a>(state: &'a mut State, reservation: &BatchReservation) -> Option<&'a mut BatchRow> {
    row_mut(state, &reservation.job_id, &reservation.batch_id).filter(|row| {
        row.batch.status == BatchStatus::Processing
            && row.version == reservation.version
            && row.batch.worker_id.as_deref() == Some(reservation.worker_id.as_str())
    })
}
