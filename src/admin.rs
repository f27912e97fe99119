//! What operators and front ends do with durable work, in one place: list and show task
//! executions (with their parent and children), count them, see work that waits unserved,
//! cancel, retry, pause and resume queues, list schedules, show a batch job with its failed
//! records, requeue those, and prune what finished long ago. The `sea-orm-durable` command line is a printer over these
//! operations; a dashboard uses the same ones.
//!
//! Every operation goes through the ports ([`TaskExecutionStorage`], [`DistributedStateStore`]),
//! so it works on any storage, the in-memory ones included. Each write says what it races
//! against and what its answer means after a lost reply; reads are single statements (or a few,
//! for a detail view) that see the state of the moment.
//!
//! ```
//! use sea_orm_durable::admin::Admin;
//! use sea_orm_durable::task::TaskExecutionStatus;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}?mode=rwc", dir.path().join("admin.db").display());
//! # let db = sea_orm::Database::connect(url.as_str()).await?;
//! # use sea_orm_durable::migration::{Migrator, MigratorTrait};
//! # Migrator::up(&db, None).await?;
//! let admin = Admin::from_connection(db);
//! let stats = admin.stats().await?;
//! println!("{} ready", stats.count(TaskExecutionStatus::Ready));
//! for waiting in &stats.ready {
//!     println!("{} in {}: oldest waited {:?}", waiting.task_id, waiting.queue, stats.waited(waiting));
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use serde_json::Value;

use crate::Executor;
use crate::batch::store::{DistributedStateStore, RecordFilter};
use crate::batch::{
    DistributedJobStatus, JobProgress, JobState, ProcessedRecord, RecordStatus, RequeuedRecords,
    SeaOrmStateStore,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::task::storage::TaskExecutionStorage;
use crate::task::{
    ExecutorOptions, PausedQueue, ReadyTaskExecutions, Retention, SeaOrmTaskExecutionStorage,
    TaskExecution, TaskExecutionCount, TaskExecutionFilter, TaskExecutionStatus, TaskSchedule,
};

/// Most (queue, status) groups and (task, queue) groups one [`Admin::stats`] returns: a
/// database with more queues than this is not one a table of counts serves, and the cap keeps
/// the answer bounded.
pub const MAX_STATS_GROUPS: u64 = 100_000;

/// Most children [`Admin::execution`] returns with an execution (the first ones, in child
/// order); [`ExecutionDetail::children_count`] says how many it has.
pub const MAX_CHILDREN_SHOWN: u64 = 1_000;

/// The operations on durable work that operators and front ends use, over the two ports.
#[derive(Clone)]
pub struct Admin {
    tasks: Arc<dyn TaskExecutionStorage>,
    jobs: Arc<dyn DistributedStateStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// An execution with its parent and its children.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionDetail {
    /// The execution.
    pub execution: TaskExecution,
    /// Its parent, when it is a child or a finalize execution (and the parent still exists).
    pub parent: Option<TaskExecution>,
    /// Its children and its finalize execution, in child order (at most
    /// [`MAX_CHILDREN_SHOWN`]).
    pub children: Vec<TaskExecution>,
    /// How many children it spawned (all of them, also those beyond `children`).
    pub children_count: u32,
}

/// Counts of the executions by queue and status, and the due ready ones by task and queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// One group per (queue, status) that holds any execution, by queue then status.
    pub counts: Vec<TaskExecutionCount>,
    /// One group per (task, queue) with due `ready` executions, the longest waits first.
    pub ready: Vec<ReadyTaskExecutions>,
    /// The paused queues, by name.
    pub paused: Vec<PausedQueue>,
    /// When the counts were taken (epoch ms).
    pub now: i64,
}

/// A queue as [`Admin::queues`] lists it: its unfinished executions and whether it is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    /// The queue.
    pub queue: String,
    /// When it was paused (epoch ms), if it is.
    pub paused_at: Option<i64>,
    /// Its `ready` executions (due or not).
    pub ready: u64,
    /// Its `running` executions.
    pub running: u64,
    /// Its unfinished executions of every status (`ready`, `running`, `sleeping`, waiting).
    pub unfinished: u64,
}

impl Stats {
    /// How many executions have `status`, over every queue.
    pub fn count(&self, status: TaskExecutionStatus) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.count)
            .sum()
    }

    /// How many executions there are, over every queue and status.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.count).sum()
    }

    /// How long the oldest due execution of `group` had waited when the counts were taken.
    pub fn waited(&self, group: &ReadyTaskExecutions) -> Duration {
        Duration::from_millis(
            u64::try_from(self.now.saturating_sub(group.oldest_start_at)).unwrap_or(0),
        )
    }
}

/// What [`Admin::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Cancellation {
    /// The status the execution had before.
    pub was: TaskExecutionStatus,
    /// The execution as stored afterwards.
    pub execution: TaskExecution,
}

/// A batch job with its progress, its batches and its first failed records.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDetail {
    /// The job, without its batches.
    pub job: JobState,
    /// Its records and batches, counted.
    pub progress: JobProgress,
    /// Its batches by status, for a distributed job.
    pub batches: Option<DistributedJobStatus>,
    /// Its first failed records (`failed` and `invalid`), by index.
    pub failed_records: Vec<ProcessedRecord>,
}

impl Admin {
    /// Operations over `tasks` and `jobs`, reading time from the system clock.
    pub fn new(tasks: Arc<dyn TaskExecutionStorage>, jobs: Arc<dyn DistributedStateStore>) -> Self {
        Self {
            tasks,
            jobs,
            clock: Arc::new(SystemClock),
        }
    }

    /// Operations over the SeaORM storages on `db` (the application's connection).
    pub fn from_connection(db: DatabaseConnection) -> Self {
        Self::new(
            Arc::new(SeaOrmTaskExecutionStorage::new(db.clone())),
            Arc::new(SeaOrmStateStore::new(db)),
        )
    }

    /// Reads time from `clock` instead (the ages of [`prune_executions`](Self::prune_executions)
    /// and [`prune_jobs`](Self::prune_jobs), the waits of [`stats`](Self::stats), a retry's
    /// new start).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    // -----------------------------------------------------------------------------------------
    // Task executions

    /// The executions matching `filter`, ordered by `created_at`, position in the parent and
    /// execution id. One read.
    ///
    /// Page with [`TaskExecutionFilter::after`] and a `limit`: the next page starts after
    /// [`ExecutionCursor::of`](crate::task::ExecutionCursor::of) the last execution of this
    /// one, so rows inserted or deleted meanwhile never shift a page (an offset would skip or
    /// repeat them). The order has no index of its own yet: each page sorts the rows that
    /// match the other fields.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRow`] when a matching row cannot be read; database errors.
    pub async fn executions(&self, filter: &TaskExecutionFilter) -> Result<Vec<TaskExecution>> {
        self.tasks.get_task_executions(filter).await
    }

    /// Execution `execution_id` with its parent and children. Three reads, each of the state
    /// of its moment: a child that finishes between them may show its new status while the
    /// parent shows the count before it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such execution; [`Error::CorruptRow`]; database
    /// errors.
    pub async fn execution(&self, execution_id: &str) -> Result<ExecutionDetail> {
        let execution = self.get(execution_id).await?;
        let parent = match &execution.parent {
            Some(p) => self.tasks.get_task_execution(&p.execution_id).await?,
            None => None,
        };
        let children = if execution.children_count > 0 || execution.finalize.is_some() {
            self.tasks
                .get_task_executions(&TaskExecutionFilter {
                    parent_execution_id: Some(execution_id.to_owned()),
                    limit: Some(MAX_CHILDREN_SHOWN),
                    ..TaskExecutionFilter::default()
                })
                .await?
        } else {
            Vec::new()
        };
        Ok(ExecutionDetail {
            children_count: execution.children_count,
            execution,
            parent,
            children,
        })
    }

    /// Counts by queue and status, and the due `ready` executions by task and queue with the
    /// oldest one's start (work that no executor serves waits there ever longer). Two
    /// aggregate reads, at most [`MAX_STATS_GROUPS`] groups each.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn stats(&self) -> Result<Stats> {
        let now = self.clock.now_ms();
        let counts = self
            .tasks
            .count_task_executions(TaskExecutionStatus::ALL, MAX_STATS_GROUPS)
            .await?;
        let ready = self
            .tasks
            .ready_task_executions(now, MAX_STATS_GROUPS)
            .await?;
        let paused = self.tasks.paused_task_queues().await?;
        Ok(Stats {
            counts,
            ready,
            paused,
            now,
        })
    }

    /// Every queue that holds an unfinished execution or is paused, by name, with its counts
    /// and pause. Two reads: the counts of the unfinished statuses (served by their indexes)
    /// and the paused queues.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn queues(&self) -> Result<Vec<QueueState>> {
        let unfinished: Vec<TaskExecutionStatus> = TaskExecutionStatus::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_finished())
            .collect();
        let counts = self
            .tasks
            .count_task_executions(&unfinished, MAX_STATS_GROUPS)
            .await?;
        let paused = self.tasks.paused_task_queues().await?;
        fn state<'a>(
            queues: &'a mut std::collections::BTreeMap<String, QueueState>,
            queue: &str,
        ) -> &'a mut QueueState {
            queues
                .entry(queue.to_owned())
                .or_insert_with(|| QueueState {
                    queue: queue.to_owned(),
                    paused_at: None,
                    ready: 0,
                    running: 0,
                    unfinished: 0,
                })
        }
        let mut queues = std::collections::BTreeMap::new();
        for count in &counts {
            let q = state(&mut queues, &count.queue);
            q.unfinished += count.count;
            match count.status {
                TaskExecutionStatus::Ready => q.ready += count.count,
                TaskExecutionStatus::Running => q.running += count.count,
                _ => {}
            }
        }
        for p in paused {
            state(&mut queues, &p.queue).paused_at = Some(p.paused_at);
        }
        Ok(queues.into_values().collect())
    }

    /// Pauses `queue`: from the next claim on, no executor claims its executions; what runs
    /// finishes, and enqueues into it wait `ready`. The pause is stored, so it holds across
    /// restarts and for executors started later; a queue that holds nothing yet can be paused.
    /// Returns the pause, with the time of the first pause when it was paused already.
    ///
    /// Races: one insert-if-absent, so of concurrent pauses the first time is kept; a claim
    /// that began before the pause committed may still take its executions. After a lost
    /// reply, a repeat finds the pause and answers the same.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty or too long queue name (nothing is written);
    /// database errors.
    pub async fn pause_queue(&self, queue: &str) -> Result<PausedQueue> {
        self.tasks
            .pause_task_queue(queue, self.clock.now_ms())
            .await
    }

    /// Resumes a paused queue: its executions are claimed again from the next claim on.
    /// Returns whether it was paused.
    ///
    /// Races: one delete, so of concurrent resumes one answers `true`. After a lost reply, a
    /// repeat answers `false` although the first attempt resumed it: either way the queue is
    /// no longer paused.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a queue name that cannot be paused; database errors.
    pub async fn resume_queue(&self, queue: &str) -> Result<bool> {
        self.tasks.resume_task_queue(queue).await
    }

    /// Cancels an execution that has not finished, as
    /// [`TaskHandle::cancel`](crate::TaskHandle::cancel) does: a `ready`, `sleeping` or
    /// waiting one is cancelled at once, a running one is told to stop through its executor,
    /// and its children are cancelled when it is closed.
    ///
    /// Races: one conditional write, so against an executor finishing the run, another cancel
    /// or a retry, exactly one wins; losing to a finish is [`Error::InvalidState`]. After a
    /// lost reply the cancellation is recognized as this call's own: the answer is the same
    /// as if the reply had arrived.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such execution; [`Error::InvalidState`] when it
    /// has finished (before or while this ran); database errors.
    pub async fn cancel(&self, execution_id: &str) -> Result<Cancellation> {
        let before = self.get(execution_id).await?;
        let finished = |status: TaskExecutionStatus| {
            Error::invalid_state(
                "task execution",
                execution_id,
                format!(
                    "is {status} already: only an execution that has not finished is cancelled"
                ),
            )
        };
        if before.is_finished {
            return Err(finished(before.status));
        }
        // The library's own cancellation (a handle's). The executor is never started: it only
        // lends its handle.
        let executor = Executor::new(
            Arc::clone(&self.tasks),
            ExecutorOptions {
                clock: Arc::clone(&self.clock),
                ..ExecutorOptions::default()
            },
        );
        let cancelled = executor.handle::<Value>(execution_id).cancel().await?;
        let after = self.get(execution_id).await?;
        if !cancelled {
            return Err(finished(after.status));
        }
        Ok(Cancellation {
            was: before.status,
            execution: after,
        })
    }

    /// Runs a failed or timed-out root execution again, as a new attempt
    /// ([`TaskExecutionStorage::retry_task_execution`]): it goes back to `ready` with one more
    /// retry attempt, its error kept for the new run to see.
    ///
    /// Races: one conditional update, so of two retries, or a retry and anything else that
    /// changes the row, one wins. After a lost reply the retry is recognized as done and the
    /// retried execution is returned.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidState`] with the reason and what to do instead for
    /// an execution that cannot be run again (not failed, a child, a parent that spawned
    /// children, a sleeping task's); database errors.
    pub async fn retry(&self, execution_id: &str) -> Result<TaskExecution> {
        self.tasks
            .retry_task_execution(execution_id, self.clock.now_ms())
            .await
    }

    /// Every periodic schedule, by id. One read.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn schedules(&self) -> Result<Vec<TaskSchedule>> {
        let mut schedules = self.tasks.get_task_schedules().await?;
        schedules.sort_by(|a, b| a.schedule_id.cmp(&b.schedule_id));
        Ok(schedules)
    }

    /// Deletes the finished, closed executions that finished more than `older_than` ago (with
    /// the finished-child records of pruned parents), `batch_size` rows per statement, until
    /// none is left; returns how many it deleted ([`Executor::prune`]).
    ///
    /// Races: each batch deletes only rows that are finished and closed when it runs; a retry
    /// of such a row (which reopens it) and its deletion are ordered by the database. A lost
    /// reply of a batch loses only its count: the next batch goes on with what is left.
    ///
    /// # Errors
    ///
    /// Database errors; what was deleted before stays deleted.
    pub async fn prune_executions(&self, older_than: Duration, batch_size: u64) -> Result<u64> {
        let executor = Executor::new(
            Arc::clone(&self.tasks),
            ExecutorOptions {
                clock: Arc::clone(&self.clock),
                ..ExecutorOptions::default()
            },
        );
        executor
            .prune(&Retention {
                completed: Some(older_than),
                failed: Some(older_than),
                cancelled: Some(older_than),
                batch_size: batch_size.max(1),
                ..Retention::default()
            })
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Batch jobs

    /// Job `job_id` with its progress, its batches by status (distributed jobs) and its first
    /// `failed_limit` failed records. A few reads, each of the state of its moment.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such job; database errors.
    pub async fn job(&self, job_id: &str, failed_limit: u64) -> Result<JobDetail> {
        let job = self
            .jobs
            .get_job_without_batches(job_id)
            .await?
            .ok_or_else(|| not_found("job", job_id))?;
        let progress = self.jobs.get_progress(job_id).await?;
        let batches = if job.distributed {
            Some(self.jobs.get_distributed_status(job_id).await?)
        } else {
            None
        };
        let failed_records = self
            .jobs
            .get_records(
                job_id,
                &RecordFilter::new()
                    .statuses(RecordStatus::FAILED.iter().copied())
                    .limit(failed_limit),
            )
            .await?;
        Ok(JobDetail {
            job,
            progress,
            batches,
            failed_records,
        })
    }

    /// Puts the failed records of distributed job `job_id` back to `pending`, to be processed
    /// again, and the job back to processing if it had finished
    /// ([`DistributedStateStore::requeue_failed_records`]).
    ///
    /// Races: one write transaction; batches a worker holds at that moment are left alone
    /// (their failed records are counted in [`RequeuedRecords::left_failed`]: requeue again
    /// later). After a lost reply a repeat finds nothing more to requeue and answers zeros:
    /// read the job ([`job`](Self::job)) to see what the first call did.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidState`] for a job that is aborted, not started,
    /// not distributed or being finalized; database errors.
    pub async fn requeue_failed_records(&self, job_id: &str) -> Result<RequeuedRecords> {
        self.jobs.requeue_failed_records(job_id).await
    }

    /// Deletes the jobs that finished more than `older_than` ago with their batches and
    /// records, `batch_size` rows per statement, until none is left; returns how many rows it
    /// deleted ([`StateStore::prune_finished_jobs`](crate::batch::store::StateStore::prune_finished_jobs)).
    ///
    /// Races: a job reset or requeued meanwhile is no longer finished and is left alone. A lost
    /// reply loses only that statement's count.
    ///
    /// # Errors
    ///
    /// Database errors; what was deleted before stays deleted.
    pub async fn prune_jobs(&self, older_than: Duration, batch_size: u64) -> Result<u64> {
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
        let batch_size = batch_size.max(1);
        let mut deleted = 0_u64;
        loop {
            let n = self.jobs.prune_finished_jobs(cutoff, batch_size).await?;
            if n == 0 {
                return Ok(deleted);
            }
            deleted = deleted.saturating_add(n);
        }
    }

    async fn get(&self, execution_id: &str) -> Result<TaskExecution> {
        self.tasks
            .get_task_execution(execution_id)
            .await?
            .ok_or_else(|| not_found("task execution", execution_id))
    }
}

/// The error of an operation on `key`, which names no stored `entity`.
fn not_found(entity: &'static str, key: &str) -> Error {
    Error::NotFound {
        entity,
        key: key.to_owned(),
    }
}
