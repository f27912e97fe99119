//! Handles to enqueued executions.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::dialect::Backoff;
use crate::error::{Error, Result};
use crate::task::model::{
    ExecutionError, TaskExecution, TaskExecutionGuard, TaskExecutionStatus, TaskExecutionUpdate,
    distinct_write_time, finished_by_update_at,
};
use crate::task::storage::TaskExecutionStorage;

/// How [`TaskHandle::wait_with`] waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitOptions {
    /// How often the execution is read while it has not finished.
    pub poll_interval: Duration,
    /// Give up after this long (`None`: wait for ever).
    pub timeout: Option<Duration>,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(50),
            timeout: None,
        }
    }
}

/// A finished execution and its typed output.
#[derive(Debug, Clone)]
pub struct FinishedExecution<O> {
    /// The execution as stored.
    pub execution: TaskExecution,
    /// The output, when the execution completed.
    pub output: Option<O>,
}

impl<O> FinishedExecution<O> {
    /// The final status.
    pub fn status(&self) -> TaskExecutionStatus {
        self.execution.status
    }

    /// The error of an execution that did not complete.
    pub fn error(&self) -> Option<&ExecutionError> {
        self.execution.error.as_ref()
    }
}

/// A handle to one execution of a task whose output is `O`.
///
/// Handles are cheap to clone and can be rebuilt from an execution id with
/// [`Executor::handle`](super::Executor::handle), in another process too.
pub struct TaskHandle<O> {
    execution_id: String,
    storage: Arc<dyn TaskExecutionStorage>,
    clock: Arc<dyn Clock>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for TaskHandle<O> {
    fn clone(&self) -> Self {
        Self {
            execution_id: self.execution_id.clone(),
            storage: Arc::clone(&self.storage),
            clock: Arc::clone(&self.clock),
            _output: PhantomData,
        }
    }
}

impl<O> fmt::Debug for TaskHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("execution_id", &self.execution_id)
            .finish()
    }
}

impl<O: DeserializeOwned> TaskHandle<O> {
    pub(crate) fn new(
        execution_id: String,
        storage: Arc<dyn TaskExecutionStorage>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            execution_id,
            storage,
            clock,
            _output: PhantomData,
        }
    }

    /// The execution's id.
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// The execution as stored now.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such execution exists; storage errors.
    pub async fn get(&self) -> Result<TaskExecution> {
        self.storage
            .get_task_execution(&self.execution_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                entity: "task execution",
                key: self.execution_id.clone(),
            })
    }

    /// Waits until the execution finished, polling every 50 ms.
    ///
    /// # Errors
    ///
    /// As [`TaskHandle::wait_with`].
    pub async fn wait(&self) -> Result<FinishedExecution<O>> {
        self.wait_with(&WaitOptions::default()).await
    }

    /// Waits until the execution finished.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such execution exists; [`Error::Timeout`] when
    /// `options.timeout` passed first; [`Error::Serialization`] when the output does not
    /// deserialize as `O`; storage errors.
    pub async fn wait_with(&self, options: &WaitOptions) -> Result<FinishedExecution<O>> {
        let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let execution = self.get().await?;
            if execution.is_finished {
                let output = match (&execution.status, &execution.output) {
                    (TaskExecutionStatus::Completed, Some(raw)) => Some(serde_json::from_str(raw)?),
                    _ => None,
                };
                return Ok(FinishedExecution { execution, output });
            }
            let mut sleep = options.poll_interval;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout {
                        what: format!("waiting for {}", self.execution_id),
                    });
                }
                sleep = sleep.min(left);
            }
            tokio::time::sleep(sleep).await;
        }
    }

    /// Cancels the execution if it has not finished. An executor running it is told to stop;
    /// whatever the run returns afterwards is discarded. Its children are cancelled when it is
    /// closed. Returns whether this call cancelled it.
    ///
    /// A reply lost after the cancellation took effect does not turn it into `false`: the
    /// update is repeated as it was (by the storage, or here after a retryable error), matches
    /// nothing the second time, and the execution is then read: cancelled by this call's
    /// update, at its time, it answers `true`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub async fn cancel(&self) -> Result<bool> {
        let guard =
            TaskExecutionGuard::id(self.execution_id.clone()).statuses(TaskExecutionStatus::ACTIVE);
        let update = TaskExecutionUpdate {
            now: distinct_write_time(self.clock.now_ms()),
            status: Some(TaskExecutionStatus::Cancelled),
            error: Some(ExecutionError::cancelled("task cancelled")),
            cancel_requested: Some(true),
            ..Default::default()
        };
        let matched = Backoff::REPEAT
            .retry("cancel", || {
                self.storage.update_task_executions(&guard, &update)
            })
            .await?;
        if matched > 0 {
            return Ok(true);
        }
        // The executor running it clears the request once it stopped the run: not part of
        // what tells this cancellation apart.
        let cancelled = TaskExecutionUpdate {
            cancel_requested: None,
            ..update
        };
        Ok(self
            .storage
            .get_task_execution(&self.execution_id)
            .await?
            .is_some_and(|e| cancelled.is_held_by(&e) && finished_by_update_at(&e, cancelled.now)))
    }
}
