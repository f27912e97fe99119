//! [`InMemoryTaskExecutionStorage`]: the reference implementation of the port, for unit tests
//! of applications and as the yardstick of the conformance suite.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::model::{
    ClaimParams, FinishedChildTaskExecution, NewTaskExecution, TaskExecution, TaskExecutionCount,
    TaskExecutionFilter, TaskExecutionGuard, TaskExecutionStatus, TaskExecutionUpdate, Wake,
    WakeResult, apply_retry, retry_refusal,
};
use super::schedule::{ScheduleFire, TaskSchedule};
use super::storage::TaskExecutionStorage;
use super::validate_new;
use crate::error::{Error, Result};

/// Task executions kept in process memory. Everything is lost when the process exits.
#[derive(Debug, Default)]
pub struct InMemoryTaskExecutionStorage {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    executions: HashMap<String, TaskExecution>,
    /// Finished children by parent, then by (child index, child execution id).
    finished: HashMap<String, BTreeMap<(u32, String), FinishedChildTaskExecution>>,
    /// Periodic schedules by id.
    schedules: BTreeMap<String, TaskSchedule>,
    /// Paused queues, with when each was paused.
    paused: BTreeMap<String, i64>,
}

impl InMemoryTaskExecutionStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave a half-applied change behind (every
        // operation validates before it mutates), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn matches_guard(e: &TaskExecution, guard: &TaskExecutionGuard) -> bool {
    guard
        .statuses
        .as_ref()
        .is_none_or(|s| s.contains(&e.status))
        && guard.fencing_token.is_none_or(|t| t == e.fencing_token)
}

/// Applies `update` and the fields that follow from the status (see [`TaskExecutionUpdate`]).
pub(crate) fn apply_update(e: &mut TaskExecution, update: &TaskExecutionUpdate) {
    if let Some(status) = update.status {
        e.status = status;
        if status.is_finished() {
            e.is_finished = true;
            // Never before `started_at`: the executor finishing it may read another clock.
            e.finished_at = Some(
                e.started_at
                    .map_or(update.now, |started| started.max(update.now)),
            );
        }
        if status != TaskExecutionStatus::Running {
            e.expires_at = None;
            if status != TaskExecutionStatus::Cancelled {
                e.executor_id = None;
            }
        }
    }
    if let Some(v) = &update.run_output {
        e.run_output = Some(v.clone());
    }
    if let Some(v) = &update.output {
        e.output = Some(v.clone());
    }
    if let Some(v) = &update.error {
        e.error = Some(v.clone());
    }
    if update.clear_error {
        e.error = None;
    }
    if let Some(v) = update.cancel_requested {
        e.cancel_requested = v;
    }
    if let Some(v) = update.retry_attempts {
        e.retry_attempts = v;
    }
    if let Some(v) = update.start_at {
        e.start_at = v;
    }
    if let Some(v) = update.children_count {
        e.children_count = v;
    }
    if let Some(v) = &update.finalize {
        e.finalize = Some(v.clone());
    }
    if let Some(v) = update.expires_at
        && update
            .status
            .is_none_or(|s| s == TaskExecutionStatus::Running)
    {
        e.expires_at = Some(v);
    }
    if let Some(v) = &update.progress {
        e.progress = Some(v.clone());
    }
    e.updated_at = update.now;
}

impl State {
    fn insert(&mut self, executions: Vec<NewTaskExecution>, now: i64) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        // The same enqueue again (a retry after a lost reply): every row is there as it wrote
        // them, so it succeeds without writing, as the SQL storage's retry does.
        if !executions.is_empty()
            && executions.iter().all(|e| {
                self.executions
                    .get(&e.execution_id)
                    .is_some_and(|stored| super::model::enqueued_as(stored, e, now))
            })
        {
            return Ok(());
        }
        for e in &executions {
            if self.executions.contains_key(&e.execution_id) || !seen.insert(&e.execution_id) {
                return Err(Error::Conflict {
                    message: format!("task execution {} already exists", e.execution_id),
                    source: None,
                });
            }
            if let Some(key) = &e.wake_key
                && (!keys.insert(key) || self.sleeping(key).is_some())
            {
                return Err(Error::Conflict {
                    message: format!("an execution already sleeps under wake key {key}"),
                    source: None,
                });
            }
        }
        for e in executions {
            self.executions
                .insert(e.execution_id.clone(), e.into_execution(now));
        }
        Ok(())
    }

    /// The id of the execution sleeping under `key`, if any.
    fn sleeping(&self, key: &str) -> Option<String> {
        self.executions
            .values()
            .find(|e| {
                e.status == TaskExecutionStatus::Sleeping && e.wake_key.as_deref() == Some(key)
            })
            .map(|e| e.execution_id.clone())
    }

    fn update(&mut self, guard: &TaskExecutionGuard, update: &TaskExecutionUpdate) -> u64 {
        let mut matched = 0;
        for id in &guard.execution_ids {
            if let Some(e) = self
                .executions
                .get_mut(id)
                .filter(|e| matches_guard(e, guard))
            {
                apply_update(e, update);
                matched += 1;
            }
        }
        matched
    }

    /// Executions matching `pred`, ordered by `key`, at most `limit`.
    fn pick<K: Ord>(
        &self,
        limit: u64,
        pred: impl Fn(&TaskExecution) -> bool,
        key: impl Fn(&TaskExecution) -> K,
    ) -> Vec<String> {
        let mut found: Vec<&TaskExecution> = self.executions.values().filter(|e| pred(e)).collect();
        found.sort_by_key(|e| key(e));
        found
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|e| e.execution_id.clone())
            .collect()
    }

    /// A claim by `params`: with `resume`, the executions in `status` the same claim took
    /// before; then, up to the rest of the limit, those `eligible` admits in `key` order, each
    /// given the claim's executor, claim id, a new fencing token and what `take` sets. Returns
    /// them all in `key` order.
    fn claim<K: Ord>(
        &mut self,
        params: &ClaimParams,
        status: TaskExecutionStatus,
        eligible: impl Fn(&TaskExecution) -> bool,
        key: impl Fn(&TaskExecution) -> K,
        take: impl Fn(&mut TaskExecution),
    ) -> Vec<TaskExecution> {
        if params.admits_nothing() {
            return Vec::new();
        }
        let mut claimed = if params.resume {
            self.taken_back(params, status)
        } else {
            Vec::new()
        };
        let limit = params
            .limit
            .saturating_sub(u64::try_from(claimed.len()).unwrap_or(u64::MAX));
        let ids = self.pick(
            limit,
            |e| eligible(e) && params.admits(&e.task_id, &e.queue),
            &key,
        );
        for id in ids {
            if let Some(e) = self.executions.get_mut(&id) {
                e.executor_id = Some(params.executor_id.clone());
                e.claim_id.clone_from(&params.claim_id);
                e.fencing_token = crate::dialect::next_token(e.fencing_token);
                e.updated_at = params.now;
                take(e);
                claimed.push(e.clone());
            }
        }
        claimed.sort_by_key(|e| key(e));
        claimed
    }

    /// The executions `params.executor_id` took under `params.claim_id` and still holds in
    /// `status`.
    fn taken_back(&self, params: &ClaimParams, status: TaskExecutionStatus) -> Vec<TaskExecution> {
        let Some(claim_id) = &params.claim_id else {
            return Vec::new();
        };
        let ids = self.pick(
            params.limit,
            |e| {
                e.status == status
                    && e.executor_id.as_deref() == Some(params.executor_id.as_str())
                    && e.claim_id.as_deref() == Some(claim_id.as_str())
            },
            |e| e.execution_id.clone(),
        );
        ids.iter()
            .filter_map(|id| self.executions.get(id).cloned())
            .collect()
    }

    fn cancel_active_children(&mut self, parent: &TaskExecution, now: i64) {
        let update = TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::Cancelled),
            error: Some(super::parent_finished_error(parent)),
            cancel_requested: Some(true),
            ..Default::default()
        };
        for e in self.executions.values_mut() {
            let is_child = e
                .parent
                .as_ref()
                .is_some_and(|p| p.execution_id == parent.execution_id);
            if is_child && !e.is_finished {
                apply_update(e, &update);
            }
        }
    }

    fn record_finished_children(&mut self, children: Vec<FinishedChildTaskExecution>) {
        let mut parents = Vec::new();
        for child in children {
            let records = self
                .finished
                .entry(child.parent_execution_id.clone())
                .or_default();
            let exists = records
                .values()
                .any(|r| r.child_execution_id == child.child_execution_id);
            if !exists {
                parents.push(child.parent_execution_id.clone());
                records.insert((child.index, child.child_execution_id.clone()), child);
            }
        }
        for parent_id in parents {
            let records = self.finished.get(&parent_id);
            let finished = records.map_or(0, BTreeMap::len);
            let failed = records.map_or(0, |r| {
                r.values()
                    .filter(|c| c.status != TaskExecutionStatus::Completed)
                    .count()
            });
            if let Some(parent) = self.executions.get_mut(&parent_id) {
                parent.finished_children_count = u32::try_from(finished).unwrap_or(u32::MAX);
                parent.failed_children_count = u32::try_from(failed).unwrap_or(u32::MAX);
            }
        }
    }
}

#[async_trait]
impl TaskExecutionStorage for InMemoryTaskExecutionStorage {
    async fn enqueue_task_executions(
        &self,
        executions: Vec<NewTaskExecution>,
        now: i64,
    ) -> Result<()> {
        executions.iter().try_for_each(validate_new)?;
        self.state().insert(executions, now)
    }

    async fn get_task_execution(&self, execution_id: &str) -> Result<Option<TaskExecution>> {
        Ok(self.state().executions.get(execution_id).cloned())
    }

    async fn get_task_executions(
        &self,
        filter: &TaskExecutionFilter,
    ) -> Result<Vec<TaskExecution>> {
        let state = self.state();
        let mut found: Vec<TaskExecution> = state
            .executions
            .values()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect();
        super::list_in_order(&mut found, filter.limit);
        Ok(found)
    }

    async fn count_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        limit: u64,
    ) -> Result<Vec<TaskExecutionCount>> {
        let state = self.state();
        let mut groups: BTreeMap<(String, &'static str), (TaskExecutionStatus, u64)> =
            BTreeMap::new();
        for e in state.executions.values() {
            if statuses.contains(&e.status) {
                groups
                    .entry((e.queue.clone(), e.status.as_str()))
                    .or_insert((e.status, 0))
                    .1 += 1;
            }
        }
        Ok(groups
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|((queue, _), (status, count))| TaskExecutionCount {
                queue,
                status,
                count,
            })
            .collect())
    }

    async fn ready_task_executions(
        &self,
        now: i64,
        limit: u64,
    ) -> Result<Vec<crate::task::ReadyTaskExecutions>> {
        let state = self.state();
        let mut groups: BTreeMap<(&str, &str), (u64, i64)> = BTreeMap::new();
        for e in state.executions.values() {
            if e.status == TaskExecutionStatus::Ready && e.start_at <= now {
                let group = groups
                    .entry((e.task_id.as_str(), e.queue.as_str()))
                    .or_insert((0, e.start_at));
                group.0 += 1;
                group.1 = group.1.min(e.start_at);
            }
        }
        let mut ready: Vec<crate::task::ReadyTaskExecutions> = groups
            .into_iter()
            .map(
                |((task_id, queue), (count, oldest_start_at))| crate::task::ReadyTaskExecutions {
                    task_id: task_id.to_owned(),
                    queue: queue.to_owned(),
                    count,
                    oldest_start_at,
                },
            )
            .collect();
        ready.sort_by(|a, b| {
            (a.oldest_start_at, &a.task_id, &a.queue).cmp(&(
                b.oldest_start_at,
                &b.task_id,
                &b.queue,
            ))
        });
        ready.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(ready)
    }

    async fn retry_task_execution(&self, execution_id: &str, now: i64) -> Result<TaskExecution> {
        let mut state = self.state();
        let e = state
            .executions
            .get_mut(execution_id)
            .ok_or_else(|| Error::NotFound {
                entity: "task execution",
                key: execution_id.to_owned(),
            })?;
        if let Some(reason) = retry_refusal(e) {
            // The same retry again (after a lost reply) finds what its first attempt left.
            if super::model::retried_at(e, now) {
                return Ok(e.clone());
            }
            return Err(Error::invalid_state("task execution", execution_id, reason));
        }
        apply_retry(e, now);
        Ok(e.clone())
    }

    async fn claim_task_executions(&self, params: &ClaimParams) -> Result<Vec<TaskExecution>> {
        super::validate_claim(params)?;
        let mut state = self.state();
        let paused = state.paused.clone();
        Ok(state.claim(
            params,
            TaskExecutionStatus::Running,
            |e| {
                e.status == TaskExecutionStatus::Ready
                    && e.start_at <= params.now
                    && !paused.contains_key(&e.queue)
            },
            |e| (e.start_at, e.execution_id.clone()),
            |e| {
                e.status = TaskExecutionStatus::Running;
                e.started_at = Some(params.now);
                e.expires_at = Some(
                    params
                        .lease_base()
                        .saturating_add(crate::clock::millis(e.timeout)),
                );
            },
        ))
    }

    async fn update_task_executions(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
    ) -> Result<u64> {
        Ok(self.state().update(guard, update))
    }

    async fn update_task_execution_and_enqueue(
        &self,
        guard: &TaskExecutionGuard,
        update: &TaskExecutionUpdate,
        children: Vec<NewTaskExecution>,
    ) -> Result<bool> {
        children.iter().try_for_each(validate_new)?;
        let mut state = self.state();
        let matched = guard.execution_ids.iter().any(|id| {
            state
                .executions
                .get(id)
                .is_some_and(|e| matches_guard(e, guard))
        });
        if !matched {
            return Ok(false);
        }
        // Insert first: a conflict must leave the guarded executions untouched.
        state.insert(children, update.now)?;
        state.update(guard, update);
        Ok(true)
    }

    async fn add_finished_child_task_executions(
        &self,
        children: Vec<FinishedChildTaskExecution>,
    ) -> Result<()> {
        children
            .iter()
            .try_for_each(super::validate_finished_child)?;
        self.state().record_finished_children(children);
        Ok(())
    }

    async fn get_finished_child_task_executions(
        &self,
        parent_execution_id: &str,
    ) -> Result<Vec<FinishedChildTaskExecution>> {
        Ok(self
            .state()
            .finished
            .get(parent_execution_id)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn expire_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        let mut state = self.state();
        let ids = state.pick(
            limit,
            |e| e.status == TaskExecutionStatus::Running && e.expires_at.is_some_and(|x| x < now),
            |e| (e.expires_at, e.execution_id.clone()),
        );
        let mut count = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        for id in ids {
            if let Some(e) = state.executions.get_mut(&id) {
                apply_update(e, &super::expiry_update(e, now));
            }
        }
        let sleepers = state.pick(
            limit,
            |e| e.status == TaskExecutionStatus::Sleeping && e.expires_at.is_some_and(|x| x < now),
            |e| (e.expires_at, e.execution_id.clone()),
        );
        let timed_out = super::model::TaskExecutionUpdate {
            now,
            status: Some(TaskExecutionStatus::TimedOut),
            error: Some(super::sleep_timed_out_error()),
            ..Default::default()
        };
        count = count.saturating_add(u64::try_from(sleepers.len()).unwrap_or(u64::MAX));
        for id in sleepers {
            if let Some(e) = state.executions.get_mut(&id) {
                apply_update(e, &timed_out);
            }
        }
        Ok(count)
    }

    async fn save_task_schedule(&self, schedule: TaskSchedule) -> Result<TaskSchedule> {
        super::validate_schedule(&schedule)?;
        let mut state = self.state();
        let stored = match state.schedules.get(&schedule.schedule_id) {
            Some(existing) if existing.same_definition(&schedule) => existing.clone(),
            Some(existing) => TaskSchedule {
                created_at: existing.created_at,
                last_tick_at: existing.last_tick_at,
                ..schedule
            },
            None => schedule,
        };
        state
            .schedules
            .insert(stored.schedule_id.clone(), stored.clone());
        Ok(stored)
    }

    async fn pause_task_queue(&self, queue: &str, now: i64) -> Result<crate::task::PausedQueue> {
        super::validate_queue(queue)?;
        let mut state = self.state();
        let paused_at = *state.paused.entry(queue.to_owned()).or_insert(now);
        Ok(crate::task::PausedQueue {
            queue: queue.to_owned(),
            paused_at,
        })
    }

    async fn resume_task_queue(&self, queue: &str) -> Result<bool> {
        super::validate_queue(queue)?;
        Ok(self.state().paused.remove(queue).is_some())
    }

    async fn paused_task_queues(&self) -> Result<Vec<crate::task::PausedQueue>> {
        Ok(self
            .state()
            .paused
            .iter()
            .map(|(queue, paused_at)| crate::task::PausedQueue {
                queue: queue.clone(),
                paused_at: *paused_at,
            })
            .collect())
    }

    async fn get_task_schedules(&self) -> Result<Vec<TaskSchedule>> {
        Ok(self.state().schedules.values().cloned().collect())
    }

    async fn delete_task_schedule(&self, schedule_id: &str) -> Result<bool> {
        Ok(self.state().schedules.remove(schedule_id).is_some())
    }

    async fn due_task_schedules(
        &self,
        now: i64,
        task_ids: Option<&[String]>,
        limit: u64,
    ) -> Result<Vec<TaskSchedule>> {
        let state = self.state();
        let mut due: Vec<TaskSchedule> = state
            .schedules
            .values()
            .filter(|s| {
                s.next_tick_at.is_some_and(|next| next <= now)
                    && task_ids.is_none_or(|ids| ids.contains(&s.task_id))
            })
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.next_tick_at, &a.schedule_id).cmp(&(b.next_tick_at, &b.schedule_id)));
        due.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(due)
    }

    async fn fire_task_schedule(&self, fire: &ScheduleFire) -> Result<bool> {
        fire.executions.iter().try_for_each(validate_new)?;
        super::validate_schedule_id(&fire.schedule_id)?;
        let mut state = self.state();
        let due = state
            .schedules
            .get(&fire.schedule_id)
            .is_some_and(|s| s.next_tick_at == Some(fire.expected_next_tick_at));
        if !due {
            return Ok(false);
        }
        // Insert first: a conflict must leave the schedule where it was.
        state.insert(fire.executions.clone(), fire.now)?;
        if let Some(schedule) = state.schedules.get_mut(&fire.schedule_id) {
            schedule.next_tick_at = fire.new_next_tick_at;
            schedule.last_tick_at = Some(fire.last_tick_at);
            schedule.updated_at = fire.now;
        }
        Ok(true)
    }

    async fn wake_task_execution(&self, wake: &Wake) -> Result<WakeResult> {
        super::validate_wake_key(&wake.wake_key)?;
        let mut state = self.state();
        if let Some(id) = state.sleeping(&wake.wake_key)
            && let Some(e) = state.executions.get_mut(&id)
        {
            apply_update(e, &super::wake_update(&wake.outcome, wake.now));
            return Ok(WakeResult::Woken(e.clone()));
        }
        state
            .executions
            .values()
            .filter(|e| e.wake_key.as_deref() == Some(wake.wake_key.as_str()))
            .max_by(|a, b| (a.created_at, &a.execution_id).cmp(&(b.created_at, &b.execution_id)))
            .map(|e| {
                if super::woken_by(e, wake) {
                    WakeResult::Woken(e.clone())
                } else {
                    WakeResult::AlreadyFinished(e.clone())
                }
            })
            .ok_or_else(|| super::unknown_wake_key(&wake.wake_key))
    }

    async fn claim_parents_with_finished_children(
        &self,
        params: &ClaimParams,
    ) -> Result<Vec<TaskExecution>> {
        super::validate_claim(params)?;
        Ok(self.state().claim(
            params,
            TaskExecutionStatus::WaitingForChildren,
            |e| {
                e.status == TaskExecutionStatus::WaitingForChildren
                    && (e.finished_children_count >= e.children_count
                        || e.failed_children_count > 0)
                    && e.expires_at.is_none_or(|x| x <= params.now)
            },
            |e| (e.updated_at, e.execution_id.clone()),
            |e| e.expires_at = Some(params.lease_base()),
        ))
    }

    async fn close_finished_task_executions(&self, now: i64, limit: u64) -> Result<u64> {
        let mut state = self.state();
        let ids = state.pick(
            limit,
            |e| e.is_finished && !e.is_closed,
            |e| (e.updated_at, e.execution_id.clone()),
        );
        let count = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        for id in ids {
            let Some(e) = state.executions.get_mut(&id) else {
                continue;
            };
            e.is_closed = true;
            e.closed_at = Some(now);
            e.updated_at = now;
            let closed = e.clone();
            match &closed.parent {
                Some(parent) if parent.is_finalize => {
                    let guard = TaskExecutionGuard::id(parent.execution_id.clone())
                        .status(TaskExecutionStatus::WaitingForFinalize);
                    state.update(&guard, &super::finalize_outcome_update(&closed, now));
                }
                Some(parent) => state.record_finished_children(vec![super::finished_child_record(
                    &closed, parent, now,
                )]),
                None => {}
            }
            if closed.status != TaskExecutionStatus::Completed {
                state.cancel_active_children(&closed, now);
            }
        }
        Ok(count)
    }

    async fn cancellation_requests(&self, executor_id: &str, limit: u64) -> Result<Vec<String>> {
        Ok(self.state().pick(
            limit,
            |e| e.cancel_requested && e.executor_id.as_deref() == Some(executor_id),
            |e| (e.updated_at, e.execution_id.clone()),
        ))
    }

    async fn acknowledge_cancellation_requests(
        &self,
        executor_id: &str,
        execution_ids: &[String],
        now: i64,
    ) -> Result<u64> {
        let mut state = self.state();
        let mut cleared = 0;
        for id in execution_ids {
            if let Some(e) = state
                .executions
                .get_mut(id)
                .filter(|e| e.cancel_requested && e.executor_id.as_deref() == Some(executor_id))
            {
                e.cancel_requested = false;
                e.updated_at = now;
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    async fn prune_task_executions(
        &self,
        statuses: &[TaskExecutionStatus],
        finished_before: i64,
        limit: u64,
    ) -> Result<u64> {
        let mut state = self.state();
        let ids = state.pick(
            limit,
            |e| {
                e.is_finished
                    && e.is_closed
                    && statuses.contains(&e.status)
                    && e.finished_at.is_some_and(|at| at < finished_before)
            },
            |e| (e.finished_at, e.execution_id.clone()),
        );
        for id in &ids {
            state.executions.remove(id);
            state.finished.remove(id);
        }
        Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
    }
}
