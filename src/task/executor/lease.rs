//! A run's hold on its execution, as its [`TaskContext`] sees it: heartbeats and progress
//! reports extend the stored lease and the run's own deadline, both under the claim's fencing
//! token.

use super::*;
use crate::clock::{Clock, millis};

/// Largest progress report a run may store, in bytes of JSON text: progress is for a bar or a
/// counter on an operator's screen, read with every row of the execution.
pub const MAX_PROGRESS_BYTES: usize = 64 * 1024;

/// What a run's context needs to heartbeat: the claim it holds, where it is stored, and the
/// run's deadline, which each heartbeat moves.
pub(crate) struct RunLease {
    storage: Arc<dyn TaskExecutionStorage>,
    clock: Arc<dyn Clock>,
    execution_id: String,
    fencing_token: i64,
    timeout: Duration,
    lease_margin: Duration,
    /// When the run times out, moved by every heartbeat; the run's timer watches it.
    deadline: tokio::sync::watch::Sender<tokio::time::Instant>,
    /// The stored lease's end (epoch ms), for how long the run's result may still be written.
    expires_at: AtomicI64,
}

impl fmt::Debug for RunLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunLease")
            .field("execution_id", &self.execution_id)
            .field("fencing_token", &self.fencing_token)
            .field("expires_at", &self.expires_at.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RunLease {
    /// The lease of a run of `execution`, just claimed with `lease_margin`.
    pub(crate) fn new(
        storage: Arc<dyn TaskExecutionStorage>,
        clock: Arc<dyn Clock>,
        execution: &TaskExecution,
        lease_margin: Duration,
    ) -> Self {
        let timeout = execution.timeout.max(Duration::from_millis(1));
        let (deadline, _) = tokio::sync::watch::channel(tokio::time::Instant::now() + timeout);
        Self {
            storage,
            clock,
            execution_id: execution.execution_id.clone(),
            fencing_token: execution.fencing_token,
            timeout,
            lease_margin,
            deadline,
            expires_at: AtomicI64::new(execution.expires_at.unwrap_or(i64::MIN)),
        }
    }

    /// The run's deadline, to watch.
    pub(crate) fn deadline(&self) -> tokio::sync::watch::Receiver<tokio::time::Instant> {
        self.deadline.subscribe()
    }

    /// The stored lease's end as last written (epoch ms).
    pub(crate) fn expires_at(&self) -> i64 {
        self.expires_at.load(Ordering::SeqCst)
    }

    /// Extends the lease to a whole timeout (plus the margin) from now, writing `progress`
    /// with it when given; then moves the run's deadline as far.
    pub(crate) async fn extend(&self, progress: Option<String>) -> crate::Result<()> {
        let started = tokio::time::Instant::now();
        let now = self.clock.now_ms();
        let expires_at = now
            .saturating_add(millis(self.timeout))
            .saturating_add(millis(self.lease_margin));
        let guard = TaskExecutionGuard::id(self.execution_id.clone())
            .status(TaskExecutionStatus::Running)
            .fencing_token(self.fencing_token);
        let update = TaskExecutionUpdate {
            now,
            expires_at: Some(expires_at),
            progress,
            ..Default::default()
        };
        // A repeat of this write (the storage's retry after a lost reply) matches as the first
        // did: it changes neither the status nor the token its guard compares.
        if self.storage.update_task_executions(&guard, &update).await? == 0 {
            return Err(Error::invalid_state(
                "task execution",
                &self.execution_id,
                "this run no longer holds it (it was cancelled, or its lease lapsed and it was \
                 claimed again); stop working on it",
            ));
        }
        self.expires_at.fetch_max(expires_at, Ordering::SeqCst);
        // The deadline counts from before the write, so it never outlasts the stored lease.
        self.deadline.send_replace(started + self.timeout);
        Ok(())
    }
}
