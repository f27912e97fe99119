//! A run's lifecycle: spawned for a claimed execution, executed under its timeout and
//! cancellation, and its result (success, failure, retry, cancellation) written through the
//! batched writer, guarded by the claim's fencing token.

use super::*;

/// How a run ended, before it is written.
pub(super) enum RunResult {
    Finished(RunOutcome),
    Failed(TaskError, ExecutionErrorKind),
    /// Cancelled through its handle: the row already says so.
    Cancelled,
}

/// The message of a panicked run.
pub(super) fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => crate::unwind::message(payload.as_ref()),
        Err(join) => join.to_string(),
    }
}

/// A span of epoch milliseconds in seconds, for histograms (negative spans count as 0).
pub(super) fn seconds(ms: i64) -> f64 {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).as_secs_f64()
}

impl Inner {
    pub(super) fn spawn_run(
        self: &Arc<Self>,
        execution: TaskExecution,
        permit: OwnedSemaphorePermit,
    ) {
        // Not a child of the shutdown token: shutting down lets running executions finish.
        let token = CancellationToken::new();
        let fencing_token = execution.fencing_token;
        let metrics = self.metrics.task(&execution.queue, &execution.task_id);
        metrics.claimed.increment(1);
        // The claim records its time as the run's start.
        let claimed_at = execution.started_at.unwrap_or_else(|| self.now());
        metrics
            .claim_latency
            .record(seconds(claimed_at.saturating_sub(execution.start_at)));
        self.running().insert(
            execution.execution_id.clone(),
            (fencing_token, token.clone()),
        );
        let inner = Arc::clone(self);
        self.runs.spawn(async move {
            let id = execution.execution_id.clone();
            inner.run(execution, token, &metrics).await;
            // Only this run's entry: a newer claim of the same execution may have replaced it.
            let mut running = inner.running();
            if running
                .get(&id)
                .is_some_and(|(fence, _)| *fence == fencing_token)
            {
                running.remove(&id);
            }
            drop(running);
            drop(permit);
            inner.wake_claim.notify_one();
        });
    }

    #[tracing::instrument(skip_all, fields(execution_id = %execution.execution_id, task_id = %execution.task_id))]
    pub(super) async fn run(
        &self,
        execution: TaskExecution,
        token: CancellationToken,
        metrics: &TaskMetrics,
    ) {
        if let Some(enqueuer) = self.enqueuers.take(&execution.execution_id) {
            tracing::Span::current().follows_from(&enqueuer);
        }
        let lease = Arc::new(super::lease::RunLease::new(
            Arc::clone(&self.storage),
            Arc::clone(&self.options.clock),
            &execution,
            self.options.lease_margin,
        ));
        let result = match self.task(&execution.task_id) {
            None => RunResult::Failed(
                TaskError::fatal(format!("task `{}` is not registered", execution.task_id)),
                ExecutionErrorKind::NotFound,
            ),
            Some(spec) => {
                let started = std::time::Instant::now();
                let result = self.execute(&spec, &execution, token, &lease).await;
                metrics.run_duration.record(started.elapsed());
                result
            }
        };
        // Retry a result that could not be written for as long as the claim's lease lasts, as
        // the run's last heartbeat left it (the fencing token makes a repeated write
        // harmless); after that the lease lapses and the execution is recovered by expiry.
        let lease_ends = lease.expires_at();
        let mut attempt: u32 = 0;
        loop {
            let recorded = match crate::unwind::caught(self.record(&execution, &result, metrics))
                .await
            {
                Ok(recorded) => recorded,
                // A panic in the storage or its driver: tried again like a retryable error,
                // rather than leaving the run registered and its result unwritten for ever.
                Err(panic) if self.now() < lease_ends => {
                    self.loop_panicked("run", &panic);
                    attempt += 1;
                    tokio::time::sleep(Backoff::RUNNER.delay(attempt)).await;
                    continue;
                }
                Err(panic) => {
                    self.loop_panicked("run", &panic);
                    tracing::error!(
                        "recording the run's result panicked until its lease ended; the lease will lapse"
                    );
                    break;
                }
            };
            match recorded {
                Ok(()) => break,
                Err(err) if err.is_retryable() && self.now() < lease_ends => {
                    attempt += 1;
                    tracing::warn!(error = %err, attempt, "recording the run's result failed; retrying");
                    tokio::time::sleep(Backoff::RUNNER.delay(attempt)).await;
                }
                Err(err) if err.is_retryable() => {
                    tracing::error!(error = %err, "recording the run's result failed until its lease ended; the lease will lapse");
                    break;
                }
                Err(err) => {
                    // No retry can write this result (too large for the database, say): the
                    // execution fails with the real reason instead of waiting for its lease to
                    // lapse and being mistaken for a dead executor's.
                    tracing::error!(error = %err, "the run's result cannot be stored; failing the execution");
                    self.record_unstorable(&execution, &err, metrics).await;
                    break;
                }
            }
        }
    }

    pub(super) async fn execute(
        &self,
        spec: &TaskSpec,
        execution: &TaskExecution,
        token: CancellationToken,
        lease: &Arc<super::lease::RunLease>,
    ) -> RunResult {
        let mut ctx = TaskContext::new(execution.execution_id.clone(), execution.task_id.clone())
            .with_lease(Arc::clone(lease));
        ctx.attempt = execution.retry_attempts;
        ctx.prev_error.clone_from(&execution.error);
        ctx.cancellation = token.clone();
        // The run gets a task of its own, so that a panic in task code is caught here (and
        // recorded as the run's failure) instead of unwinding through the executor.
        let mut run = tokio::spawn((spec.run)(ctx, execution.input.clone()));
        // The deadline moves with each heartbeat: the run times out a whole timeout after its
        // start or its last heartbeat, whichever is later.
        let mut deadline = lease.deadline();
        let result = loop {
            let until = *deadline.borrow_and_update();
            tokio::select! {
                r = &mut run => break match r {
                    Ok(Ok(outcome)) => RunResult::Finished(outcome),
                    Ok(Err(err)) => RunResult::Failed(err, ExecutionErrorKind::Generic),
                    Err(join) => RunResult::Failed(
                        TaskError::fatal(format!("task panicked: {}", panic_message(join))),
                        ExecutionErrorKind::Generic,
                    ),
                },
                () = tokio::time::sleep_until(until) => {
                    if *deadline.borrow() > until {
                        continue;
                    }
                    break RunResult::Failed(
                        TaskError::retryable(format!(
                            "task timed out after {} ms without finishing or a heartbeat",
                            execution.timeout.as_millis()
                        )),
                        ExecutionErrorKind::TimedOut,
                    );
                }
                // A heartbeat moved the deadline: wait for the new one.
                Ok(()) = deadline.changed() => {}
                () = token.cancelled() => break RunResult::Cancelled,
            }
        };
        run.abort();
        // Tell anything the run spawned that it is over.
        token.cancel();
        result
    }

    /// Writes how a run ended, guarded by the run's claim.
    pub(super) async fn record(
        &self,
        execution: &TaskExecution,
        result: &RunResult,
        metrics: &TaskMetrics,
    ) -> Result<()> {
        let guard = TaskExecutionGuard::id(execution.execution_id.clone())
            .status(TaskExecutionStatus::Running)
            .fencing_token(execution.fencing_token);
        let now = self.now();
        let written = match result {
            RunResult::Cancelled => {
                metrics.cancelled.increment(1);
                return Ok(());
            }
            RunResult::Failed(err, kind) => {
                let update = self.failure_update(execution, err, *kind, now);
                let status = update.status;
                let written = self.write(guard, update.clone()).await? > 0
                    || self.holds_own(execution, &update).await?;
                if written && err.snoozed_for().is_some() && update.error.is_none() {
                    metrics.snoozed.increment(1);
                } else if written {
                    metrics.result(status);
                }
                written
            }
            RunResult::Finished(outcome) => {
                let spec = self.task(&execution.task_id);
                let written = self
                    .record_success(execution, &guard, spec.as_deref(), outcome, now)
                    .await?;
                if let Some(status) = written {
                    metrics.result(Some(status));
                }
                written.is_some()
            }
        };
        if !written {
            tracing::info!(
                "the execution changed while it ran (cancelled or taken over); result discarded"
            );
        }
        Ok(())
    }

    /// Whether `execution` holds `update` under this run's claim (the same fencing token, the
    /// status and values the update writes): a write of this run committed although its
    /// reply was lost, and its repeat, by the storage or by [`run`](Self::run)'s retry, then
    /// matched nothing. Read only when a write matched nothing, so a result written that way
    /// is counted as the run's outcome instead of being taken for a cancellation or takeover.
    pub(super) async fn holds_own(
        &self,
        execution: &TaskExecution,
        update: &TaskExecutionUpdate,
    ) -> Result<bool> {
        let held = self
            .storage
            .get_task_execution(&execution.execution_id)
            .await?
            .is_some_and(|e| e.fencing_token == execution.fencing_token && update.is_held_by(&e));
        if held {
            tracing::info!("the run's result was written by an attempt whose reply was lost");
        }
        Ok(held)
    }

    /// Fails `execution`, whose result cannot be stored, with the error that prevented it.
    pub(super) async fn record_unstorable(
        &self,
        execution: &TaskExecution,
        cause: &Error,
        metrics: &TaskMetrics,
    ) {
        let guard = TaskExecutionGuard::id(execution.execution_id.clone())
            .status(TaskExecutionStatus::Running)
            .fencing_token(execution.fencing_token);
        let update = TaskExecutionUpdate {
            now: self.now(),
            status: Some(TaskExecutionStatus::Failed),
            error: Some(ExecutionError {
                kind: ExecutionErrorKind::Generic,
                is_retryable: false,
                is_internal: true,
                message: format!("the run's result could not be stored: {cause}"),
            }),
            ..Default::default()
        };
        match self.storage.update_task_executions(&guard, &update).await {
            Ok(0) => {
                if self.holds_own(execution, &update).await.unwrap_or(false) {
                    metrics.result(update.status);
                }
            }
            Ok(_) => metrics.result(update.status),
            Err(err) => {
                tracing::error!(error = %err, "failing the execution failed too; its lease will lapse");
            }
        }
    }

    pub(super) fn failure_update(
        &self,
        execution: &TaskExecution,
        err: &TaskError,
        kind: ExecutionErrorKind,
        now: i64,
    ) -> TaskExecutionUpdate {
        let retry =
            err.is_retryable() && execution.retry_attempts < execution.retry_options.max_attempts;
        let error = ExecutionError {
            kind,
            is_retryable: err.is_retryable(),
            is_internal: kind == ExecutionErrorKind::NotFound,
            message: err.message().to_owned(),
        };
        if let (Some(delay), ExecutionErrorKind::Generic) = (err.snoozed_for(), kind) {
            // Not a failure: back to `ready` later, with the attempts and the error as they were.
            let delay = delay.min(crate::task::MAX_SLEEP_BEFORE_RUN);
            return TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::Ready),
                start_at: Some(now.saturating_add(millis(delay))),
                ..Default::default()
            };
        }
        if retry {
            let attempt = execution.retry_attempts.saturating_add(1);
            let delay = execution.retry_options.delay(attempt);
            // Jitter only lengthens the delay: a retry never runs before its configured delay.
            let delay = delay.mul_f64(1.0 + fastrand::f64() * 0.25);
            TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::Ready),
                error: Some(error),
                retry_attempts: Some(attempt),
                start_at: Some(now.saturating_add(millis(delay))),
                ..Default::default()
            }
        } else {
            let status = match kind {
                ExecutionErrorKind::TimedOut => TaskExecutionStatus::TimedOut,
                _ => TaskExecutionStatus::Failed,
            };
            TaskExecutionUpdate {
                now,
                status: Some(status),
                error: Some(error),
                ..Default::default()
            }
        }
    }

    pub(super) async fn record_success(
        &self,
        execution: &TaskExecution,
        guard: &TaskExecutionGuard,
        spec: Option<&TaskSpec>,
        outcome: &RunOutcome,
        now: i64,
    ) -> Result<Option<TaskExecutionStatus>> {
        let storage = &self.storage;
        let this = TaskExecutionRef {
            task_id: execution.task_id.clone(),
            execution_id: execution.execution_id.clone(),
        };
        let root = execution.root.clone().unwrap_or_else(|| this.clone());
        if !outcome.children.is_empty() {
            let mut children = Vec::with_capacity(outcome.children.len());
            for (index, child) in outcome.children.iter().enumerate() {
                let input = match &child.input {
                    Ok(input) => input.clone(),
                    Err(e) => {
                        let err = TaskError::fatal(format!(
                            "child {index} input does not serialize: {e}"
                        ));
                        let update =
                            self.failure_update(execution, &err, ExecutionErrorKind::Generic, now);
                        let written = storage.update_task_executions(guard, &update).await? > 0
                            || self.holds_own(execution, &update).await?;
                        return Ok(if written { update.status } else { None });
                    }
                };
                let parent = ParentRef {
                    task_id: this.task_id.clone(),
                    execution_id: this.execution_id.clone(),
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    is_finalize: false,
                };
                children.push(new_execution(
                    &child.spec,
                    input,
                    Some(root.clone()),
                    Some(parent),
                ));
            }
            let update = TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::WaitingForChildren),
                run_output: Some(outcome.output.clone()),
                children_count: Some(u32::try_from(children.len()).unwrap_or(u32::MAX)),
                clear_error: true,
                ..Default::default()
            };
            let followers = self.followers(&children);
            let unregistered = self.unregistered_tasks(&children);
            let written = storage
                .update_task_execution_and_enqueue(guard, &update, children)
                .await?
                || self.holds_own(execution, &update).await?;
            if written {
                self.warn_unregistered_children(&execution.execution_id, unregistered);
                self.remember_followers(followers);
                self.wake_claim.notify_one();
            }
            return Ok(written.then_some(TaskExecutionStatus::WaitingForChildren));
        }
        let parent_output = |run_output: &str| -> Result<String> {
            let output: Value = serde_json::from_str(run_output)?;
            Ok(serde_json::to_string(&ParentTaskOutput {
                output,
                children: Vec::new(),
            })?)
        };
        // The run's output is stored once: as the final output, or inside the finalize
        // execution's input. `run_output` is kept only for parents that wait for children.
        match spec.and_then(|s| s.finalize.clone()) {
            Some(finalize) => {
                let input = parent_output(&outcome.output)?;
                let written = self
                    .spawn_finalize(execution, guard, &finalize, input, now)
                    .await?;
                Ok(written.then_some(TaskExecutionStatus::WaitingForFinalize))
            }
            None => {
                let output = if spec.is_some_and(|s| s.is_parent) {
                    parent_output(&outcome.output)?
                } else {
                    outcome.output.clone()
                };
                let update = TaskExecutionUpdate {
                    now,
                    status: Some(TaskExecutionStatus::Completed),
                    output: Some(output),
                    clear_error: true,
                    ..Default::default()
                };
                let written = self.write(guard.clone(), update.clone()).await? > 0
                    || self.holds_own(execution, &update).await?;
                Ok(written.then_some(TaskExecutionStatus::Completed))
            }
        }
    }
}
