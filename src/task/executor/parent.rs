//! Parents: spawning a parent's finalize execution, and the parents loop's work of moving on
//! parents whose children all finished (complete, fail with their children, or finalize).

use super::*;

impl Inner {
    /// Moves `parent` to `waiting_for_finalize_task` and enqueues its finalize execution.
    pub(super) async fn spawn_finalize(
        &self,
        parent: &TaskExecution,
        guard: &TaskExecutionGuard,
        finalize: &TaskSpec,
        input: String,
        now: i64,
    ) -> Result<bool> {
        let this = TaskExecutionRef {
            task_id: parent.task_id.clone(),
            execution_id: parent.execution_id.clone(),
        };
        let root = parent.root.clone().unwrap_or_else(|| this.clone());
        let parent_ref = ParentRef {
            task_id: this.task_id.clone(),
            execution_id: this.execution_id.clone(),
            index: 0,
            is_finalize: true,
        };
        let execution = new_execution(finalize, input, Some(root), Some(parent_ref));
        let update = TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::WaitingForFinalize),
            finalize: Some(TaskExecutionRef {
                task_id: execution.task_id.clone(),
                execution_id: execution.execution_id.clone(),
            }),
            clear_error: true,
            ..Default::default()
        };
        let execution = vec![execution];
        let followers = self.followers(&execution);
        let written = self
            .storage
            .update_task_execution_and_enqueue(guard, &update, execution)
            .await?
            || self
                .holds_own(
                    parent,
                    // A repeat of this call spawns a finalize execution of another id: the
                    // parent waiting for one under this claim is what tells.
                    &TaskExecutionUpdate {
                        finalize: None,
                        ..update
                    },
                )
                .await?;
        if written {
            self.remember_followers(followers);
            self.wake_claim.notify_one();
        }
        Ok(written)
    }

    /// One iteration of the parents loop; true when the batch was full.
    pub(super) async fn process_parents(self: Arc<Self>) -> Result<bool> {
        let limit = self.options.background_batch_size;
        let failed = self
            .failed_parent_claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let params = self.claim_params(limit, failed);
        // Kept until the claim answers: one that failed or panicked (possibly after it
        // committed) is resumed by the next claim.
        self.failed_parent_claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone_from(&params.claim_id);
        let parents = self
            .storage
            .claim_parents_with_finished_children(&params)
            .await?;
        self.failed_parent_claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let full = u64::try_from(parents.len()).unwrap_or(u64::MAX) >= limit;
        let parents_empty = parents.is_empty();
        for parent in parents {
            // One parent's failure must not hold up the others claimed with it.
            let processed = self.process_parent(&parent).await;
            if let Ok(true) = processed {
                self.count_parent_finalized(&parent);
            }
            if let Err(err) = processed {
                if err.is_retryable() {
                    tracing::warn!(execution_id = %parent.execution_id, error = %err, "processing a parent failed; it is retried after its lease");
                    continue;
                }
                // Unreadable child outputs or run output: no retry can fix that.
                let guard = TaskExecutionGuard::id(parent.execution_id.clone())
                    .status(TaskExecutionStatus::WaitingForChildren)
                    .fencing_token(parent.fencing_token);
                let update = TaskExecutionUpdate {
                    now: self.now(),
                    status: Some(TaskExecutionStatus::ChildrenFailed),
                    error: Some(ExecutionError {
                        kind: ExecutionErrorKind::Generic,
                        is_retryable: false,
                        is_internal: true,
                        message: format!("the children's results could not be combined: {err}"),
                    }),
                    ..Default::default()
                };
                if self.storage.update_task_executions(&guard, &update).await? > 0 {
                    self.count_parent_finalized(&parent);
                }
            }
        }
        if !parents_empty {
            // Finished parents are closed next.
            self.wake_close.notify_one();
        }
        Ok(full)
    }

    pub(super) fn count_parent_finalized(&self, parent: &TaskExecution) {
        self.metrics
            .task(&parent.queue, &parent.task_id)
            .parents_finalized
            .increment(1);
    }

    /// Moves a parent whose children all finished on; returns whether it did (false: the
    /// parent changed meanwhile).
    #[tracing::instrument(skip_all, fields(execution_id = %parent.execution_id))]
    pub(super) async fn process_parent(&self, parent: &TaskExecution) -> Result<bool> {
        let guard = TaskExecutionGuard::id(parent.execution_id.clone())
            .status(TaskExecutionStatus::WaitingForChildren)
            .fencing_token(parent.fencing_token);
        let now = self.now();
        let children = self
            .storage
            .get_finished_child_task_executions(&parent.execution_id)
            .await?;
        if let Some(failed) = children
            .iter()
            .find(|c| c.status != TaskExecutionStatus::Completed)
        {
            let cause = failed
                .error
                .as_ref()
                .map_or("no error recorded", |e| e.message.as_str());
            let update = TaskExecutionUpdate {
                now,
                status: Some(TaskExecutionStatus::ChildrenFailed),
                error: Some(ExecutionError::generic(
                    format!(
                        "child task {} with execution id {} finished as {}: {cause}",
                        failed.child_task_id, failed.child_execution_id, failed.status
                    ),
                    false,
                )),
                ..Default::default()
            };
            return Ok(self.storage.update_task_executions(&guard, &update).await? > 0);
        }
        let mut outputs = Vec::with_capacity(children.len());
        for child in children {
            let output = match &child.output {
                Some(raw) => serde_json::from_str(raw)?,
                None => Value::Null,
            };
            outputs.push(ChildOutput {
                index: child.index,
                task_id: child.child_task_id,
                execution_id: child.child_execution_id,
                output,
            });
        }
        let run_output: Value = match &parent.run_output {
            Some(raw) => serde_json::from_str(raw)?,
            None => Value::Null,
        };
        let combined = serde_json::to_string(&ParentTaskOutput {
            output: run_output,
            children: outputs,
        })?;
        let Some(spec) = self.task(&parent.task_id) else {
            let update = self.failure_update(
                parent,
                &TaskError::fatal(format!("task `{}` is not registered", parent.task_id)),
                ExecutionErrorKind::NotFound,
                now,
            );
            return Ok(self.storage.update_task_executions(&guard, &update).await? > 0);
        };
        match &spec.finalize {
            Some(finalize) => {
                self.spawn_finalize(parent, &guard, finalize, combined, now)
                    .await
            }
            None => {
                let update = TaskExecutionUpdate {
                    now,
                    status: Some(TaskExecutionStatus::Completed),
                    output: Some(combined),
                    clear_error: true,
                    ..Default::default()
                };
                Ok(self.storage.update_task_executions(&guard, &update).await? > 0)
            }
        }
    }
}
