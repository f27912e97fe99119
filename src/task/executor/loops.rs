//! The executor's loops: claim, and the background loops (parents, close, expire, cancel,
//! prune, schedules, sample), each named by a [`Loop`] that carries what wakes it and how often
//! it polls; and the clock-skew measurement the expire loop does on the side.
//!
//! Every iteration is one bounded step (a batch of rows, one statement for a chore), so no loop
//! holds up another's work: pruning a large backlog runs in its own loop, a batch at a time,
//! while the expire loop goes on recovering leases.

use super::*;
use crate::unwind::caught;

/// The background loops (the claim loop, which waits for free capacity too, is apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loop {
    /// Moves on parents whose children all finished.
    Parents,
    /// Propagates finished executions to their parents.
    Close,
    /// Recovers executions of dead executors, times out sleepers, and does the periodic chores.
    Expire,
    /// Deletes what [`ExecutorOptions::retention`] no longer keeps, a batch per age at a time;
    /// spawned only with a retention.
    Prune,
    /// Stops local runs of cancelled executions.
    Cancel,
    /// Enqueues the due ticks of periodic schedules.
    Schedules,
    /// Samples the gauges of the whole table (queue depth, oldest ready execution per task)
    /// every [`ExecutorOptions::queue_depth_interval`]; spawned only with one. Apart from the
    /// expire loop, so that aggregates over a large backlog never delay lease recovery.
    Sample,
}

/// What one iteration of the claim loop found.
enum Claimed {
    /// A full batch: more may be waiting.
    Full,
    /// Less than a full batch.
    Less,
    /// No free capacity to claim with.
    NoCapacity,
}

/// How an idle loop waits before its next iteration.
pub(super) enum Idle<'a> {
    /// The poll interval, or less when this in-process signal fires.
    Woken(&'a Notify),
    /// This interval (with jitter); nothing in the process wakes it early.
    Every(Duration),
}

impl Loop {
    /// Every background loop, in the order [`Executor::start`] spawns them.
    pub(super) const ALL: [Loop; 7] = [
        Loop::Parents,
        Loop::Close,
        Loop::Expire,
        Loop::Prune,
        Loop::Cancel,
        Loop::Schedules,
        Loop::Sample,
    ];

    /// The loop's name in logs and metrics.
    pub(super) fn name(self) -> &'static str {
        match self {
            Loop::Parents => "parents",
            Loop::Close => "close",
            Loop::Expire => "expire",
            Loop::Prune => "prune",
            Loop::Cancel => "cancel",
            Loop::Schedules => "schedules",
            Loop::Sample => "sample",
        }
    }

    /// How the loop waits when an iteration found less than a full batch: the parents loop is
    /// woken by finished children and the close loop by written results; the others poll.
    fn idle(self, inner: &Inner) -> Idle<'_> {
        match self {
            Loop::Parents => Idle::Woken(&inner.wake_parents),
            Loop::Close => Idle::Woken(&inner.wake_close),
            Loop::Expire => Idle::Every(inner.options.expire_interval),
            Loop::Prune => Idle::Every(
                inner
                    .options
                    .retention
                    .as_ref()
                    .map_or(inner.options.expire_interval, |r| r.interval),
            ),
            Loop::Cancel | Loop::Schedules => Idle::Every(inner.options.poll_interval),
            Loop::Sample => Idle::Every(
                inner
                    .options
                    .queue_depth_interval
                    .unwrap_or(inner.options.expire_interval),
            ),
        }
    }

    /// One iteration; `Ok(true)` when it handled a full batch (more may be waiting).
    async fn iterate(self, inner: Arc<Inner>) -> Result<bool> {
        match self {
            Loop::Parents => inner.process_parents().await,
            Loop::Close => inner.close_finished().await,
            Loop::Expire => inner.expire().await,
            Loop::Prune => match &inner.options.retention {
                Some(retention) => inner.prune_step(retention).await.map(|(_, full)| full),
                None => Ok(false),
            },
            Loop::Cancel => inner.take_cancellations().await,
            Loop::Schedules => inner.fire_schedules().await,
            Loop::Sample => inner.sample().await.map(|()| false),
        }
    }
}

/// [`Inner::clock_skew_ms`] before a measurement.
pub(super) const NO_SKEW: i64 = i64::MIN;

/// How often the expire loop measures the clock skew.
pub(super) const SKEW_INTERVAL: Duration = Duration::from_secs(60);

/// Most ticks the schedules loop enqueues in one iteration (over all the schedules it fires).
pub(super) const MAX_TICKS_PER_ITERATION: usize = 1000;

/// Most series of each table gauge (queue depth by queue and status, oldest ready execution by
/// task and queue) one sample sets.
pub(super) const SAMPLE_SERIES: u64 = 1000;

/// Whether `interval` has passed since `last` (or nothing happened yet); if so, records now.
pub(super) fn due(last: &Mutex<Option<std::time::Instant>>, interval: Duration) -> bool {
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < interval) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

impl Inner {
    /// Sleeps the poll interval, or less when woken or shut down.
    pub(super) async fn idle(&self, wake: &Notify) {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(jitter(self.options.poll_interval)) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    pub(super) async fn backoff(&self, errors: u32) {
        tokio::select! {
            () = tokio::time::sleep(Backoff::RUNNER.delay(errors)) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    /// The parameters of a claim by this executor: only tasks registered here, only its
    /// queues. `failed` is the id of the previous claim when it failed (its reply may have been
    /// lost after it committed): the claim resumes it, taking back what it took.
    pub(super) fn claim_params(&self, limit: u64, failed: Option<String>) -> ClaimParams {
        let resume = failed.is_some();
        let task_ids = self.task_ids();
        ClaimParams {
            executor_id: self.id.clone(),
            now: self.now(),
            limit,
            lease_margin: self.options.lease_margin,
            task_ids: Some(task_ids),
            queues: self.options.queues.clone(),
            claim_id: Some(failed.unwrap_or_else(|| new_id("cl_"))),
            resume,
        }
    }

    pub(super) async fn claim_loop(self: Arc<Self>) {
        let mut errors = 0;
        // The claim id of a claim that failed, resumed by the next attempt.
        let mut failed_claim: Option<String> = None;
        while !self.shutdown.is_cancelled() {
            match caught(self.claim_once(&mut failed_claim)).await {
                Ok(Ok(Claimed::Full)) => errors = 0,
                Ok(Ok(Claimed::Less)) => {
                    errors = 0;
                    self.idle(&self.wake_claim).await;
                }
                // A finishing run wakes the claim loop.
                Ok(Ok(Claimed::NoCapacity)) => self.idle(&self.wake_claim).await,
                Ok(Err(err)) => {
                    errors += 1;
                    self.metrics.loop_error("claim");
                    tracing::warn!(error = %err, errors, "claiming task executions failed");
                    self.backoff(errors).await;
                }
                Err(panic) => {
                    // The claim may have panicked between the two counts of its epoch: an odd
                    // epoch would read as a claim in flight for ever.
                    let epoch = self.claim_epoch.load(Ordering::SeqCst);
                    if !epoch.is_multiple_of(2) {
                        self.claim_epoch.fetch_add(1, Ordering::SeqCst);
                    }
                    errors += 1;
                    self.loop_panicked("claim", &panic);
                    self.backoff(errors).await;
                }
            }
        }
    }

    /// One claim up to the free capacity, and a run spawned for each claimed execution.
    /// `failed_claim` holds the claim id until the claim answers, so that one that failed or
    /// panicked (possibly after it committed) is resumed by the next.
    async fn claim_once(self: &Arc<Self>, failed_claim: &mut Option<String>) -> Result<Claimed> {
        let free = self.permits.available_permits();
        if free == 0 {
            return Ok(Claimed::NoCapacity);
        }
        let limit = self
            .options
            .claim_batch_size
            .min(u64::try_from(free).unwrap_or(u64::MAX));
        let Ok(mut permits) = Arc::clone(&self.permits)
            .try_acquire_many_owned(u32::try_from(limit).unwrap_or(u32::MAX))
        else {
            return Ok(Claimed::NoCapacity);
        };
        let params = self.claim_params(limit, failed_claim.take());
        failed_claim.clone_from(&params.claim_id);
        self.claim_epoch.fetch_add(1, Ordering::SeqCst);
        let claimed = self.storage.claim_task_executions(&params).await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(err) => {
                self.claim_epoch.fetch_add(1, Ordering::SeqCst);
                return Err(err);
            }
        };
        *failed_claim = None;
        let full = u64::try_from(claimed.len()).unwrap_or(u64::MAX) >= limit;
        for execution in claimed {
            let Some(permit) = permits.split(1) else {
                break;
            };
            self.spawn_run(execution, permit);
        }
        self.claim_epoch.fetch_add(1, Ordering::SeqCst);
        drop(permits);
        Ok(if full { Claimed::Full } else { Claimed::Less })
    }

    /// Logs and counts a panic caught in one iteration of the loop `name`; the loop goes on
    /// after its error backoff.
    pub(super) fn loop_panicked(&self, name: &'static str, panic: &str) {
        self.metrics.loop_panics(name).increment(1);
        tracing::error!(
            loop_name = name,
            panic,
            "executor loop panicked; it goes on after a backoff"
        );
    }

    /// Runs the background loop `which` until shutdown: again at once while an iteration
    /// reports a full batch, after the loop's idle wait (see [`Loop::idle`]) when not, with
    /// backoff on errors.
    pub(super) async fn background_loop(self: Arc<Self>, which: Loop) {
        let mut errors = 0;
        while !self.shutdown.is_cancelled() {
            match caught(which.iterate(Arc::clone(&self))).await {
                Ok(Ok(true)) => errors = 0,
                Ok(Ok(false)) => {
                    errors = 0;
                    match which.idle(&self) {
                        Idle::Woken(wake) => self.idle(wake).await,
                        Idle::Every(interval) => {
                            tokio::select! {
                                () = tokio::time::sleep(jitter(interval)) => {}
                                () = self.shutdown.cancelled() => {}
                            }
                        }
                    }
                }
                Ok(Err(err)) => {
                    errors += 1;
                    self.metrics.loop_error(which.name());
                    tracing::warn!(loop_name = which.name(), error = %err, errors, "executor loop failed");
                    self.backoff(errors).await;
                }
                Err(panic) => {
                    errors += 1;
                    self.loop_panicked(which.name(), &panic);
                    self.backoff(errors).await;
                }
            }
        }
    }

    /// One iteration of the schedules loop: fires the due schedules of the tasks registered
    /// here; true when the batch was full.
    pub(super) async fn fire_schedules(self: Arc<Self>) -> Result<bool> {
        let limit = self.options.background_batch_size;
        let now = self.now();
        let task_ids = self.task_ids();
        let due = self
            .storage
            .due_task_schedules(now, Some(&task_ids), limit)
            .await?;
        let (mut ticks, mut bounded) = (0, false);
        for schedule in &due {
            if ticks >= MAX_TICKS_PER_ITERATION {
                // Bounded: the schedules left are still due, and fired next iteration, at once.
                bounded = true;
                break;
            }
            // One schedule that cannot fire must not hold up the others.
            match self.fire_schedule(schedule, now).await {
                Ok(enqueued) => ticks += enqueued,
                Err(err) => {
                    tracing::warn!(schedule_id = %schedule.schedule_id, error = %err, "firing a schedule failed");
                }
            }
        }
        if ticks > 0 {
            self.wake_claim.notify_one();
        }
        Ok(bounded || u64::try_from(due.len()).unwrap_or(u64::MAX) >= limit)
    }

    /// Enqueues the due ticks of `schedule` if no other executor did first; returns how many
    /// ticks this one enqueued (0 when another executor was first).
    #[tracing::instrument(skip_all, fields(schedule_id = %schedule.schedule_id))]
    pub(super) async fn fire_schedule(&self, schedule: &TaskSchedule, now: i64) -> Result<usize> {
        let Some(spec) = self.task(&schedule.task_id) else {
            return Ok(0);
        };
        // An ended schedule is never due; one read as due is left alone.
        let Some(expected) = schedule.next_tick_at else {
            return Ok(0);
        };
        let ticks = Ticks::parse(&schedule.spec)?;
        let (due, next) = ticks.due(expected, now, schedule.missed_ticks)?;
        let Some(&last) = due.last() else {
            return Ok(0);
        };
        let count = due.len();
        let executions = due
            .iter()
            .map(|tick| NewTaskExecution {
                execution_id: tick_execution_id(&schedule.schedule_id, *tick),
                ..new_execution(&spec, schedule.input.clone(), None, None)
            })
            .collect();
        let mut fire = ScheduleFire {
            schedule_id: schedule.schedule_id.clone(),
            expected_next_tick_at: expected,
            new_next_tick_at: next,
            last_tick_at: last,
            executions,
            now,
        };
        let won = match self.storage.fire_task_schedule(&fire).await {
            Err(Error::Conflict { .. }) => {
                // Some of these ticks were enqueued already (the schedule was deleted and saved
                // again): enqueue the others, and move on.
                let ids = fire
                    .executions
                    .iter()
                    .map(|e| e.execution_id.clone())
                    .collect();
                let existing: Vec<String> = self
                    .storage
                    .get_task_executions(&TaskExecutionFilter {
                        execution_ids: Some(ids),
                        ..TaskExecutionFilter::default()
                    })
                    .await?
                    .into_iter()
                    .map(|e| e.execution_id)
                    .collect();
                fire.executions
                    .retain(|e| !existing.contains(&e.execution_id));
                self.storage.fire_task_schedule(&fire).await
            }
            other => other,
        }?;
        Ok(if won { count } else { 0 })
    }

    /// One iteration of the close loop.
    pub(super) async fn close_finished(self: Arc<Self>) -> Result<bool> {
        let limit = self.options.background_batch_size;
        let closed = self
            .storage
            .close_finished_task_executions(self.now(), limit)
            .await?;
        if closed > 0 {
            self.wake_parents.notify_one();
            // Closing can finish parents (through their finalize) and cancel children.
            self.wake_close.notify_one();
        }
        Ok(closed >= limit)
    }

    /// Measures this executor's clock against the storage's when due ([`SKEW_INTERVAL`]),
    /// and warns when they are further apart than a quarter of the lease margin.
    pub(super) async fn measure_clock_skew(&self) -> Result<()> {
        if !due(&self.skew_measured, SKEW_INTERVAL) {
            return Ok(());
        }
        let before = self.now();
        let Some(database) = self.storage.database_time_ms().await? else {
            return Ok(());
        };
        let after = self.now();
        // The server read its clock somewhere in the round trip: compare with the middle.
        let local = before.saturating_add(after.saturating_sub(before) / 2);
        let skew = local.saturating_sub(database);
        self.clock_skew_ms.store(skew, Ordering::SeqCst);
        let tolerance = millis(self.options.lease_margin) / 4;
        if skew.saturating_abs() > tolerance {
            tracing::warn!(
                skew_ms = skew,
                tolerance_ms = tolerance,
                "this executor's clock is far from the database's; leases of executions may lapse early or late"
            );
        }
        Ok(())
    }

    /// Deletes what `retention` no longer keeps, step by step until a step is short; see
    /// [`Executor::prune`].
    pub(super) async fn prune(&self, retention: &Retention) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let (n, full) = self.prune_step(retention).await?;
            deleted += n;
            if !full || self.shutdown.is_cancelled() {
                break;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "pruned finished executions");
        }
        Ok(deleted)
    }

    /// One bounded step of pruning: at most one batch of `retention.batch_size` executions per
    /// kept age. Returns how many it deleted, and whether a batch was full (more may be left).
    pub(super) async fn prune_step(&self, retention: &Retention) -> Result<(u64, bool)> {
        let batch = retention.batch_size.max(1);
        let (mut deleted, mut full) = (0, false);
        for (age, statuses) in retention.ages() {
            let Some(age) = age else { continue };
            let before = self.now().saturating_sub(millis(age));
            let n = self
                .storage
                .prune_task_executions(statuses, before, batch)
                .await?;
            deleted += n;
            full |= n >= batch;
        }
        if deleted > 0 {
            tracing::debug!(deleted, "pruned finished executions");
        }
        Ok((deleted, full))
    }

    /// One iteration of the sample loop: sets the queue-depth gauges from one count of the
    /// unfinished executions, and the oldest-ready gauges from one aggregate of the due ready
    /// ones. Each gauge is set even when the other's query failed.
    pub(super) async fn sample(&self) -> Result<()> {
        let depth = self
            .storage
            .count_task_executions(&TaskExecutionStatus::ACTIVE, SAMPLE_SERIES)
            .await
            .map(|counts| self.metrics.queue_depth(&counts));
        let now = self.now();
        let ready = self
            .storage
            .ready_task_executions(now, SAMPLE_SERIES)
            .await
            .map(|ready| self.metrics.oldest_ready(&ready, now));
        depth.and(ready)
    }

    /// One iteration of the expire loop.
    pub(super) async fn expire(self: Arc<Self>) -> Result<bool> {
        if let Err(err) = self.measure_clock_skew().await {
            tracing::debug!(error = %err, "measuring the clock skew failed");
        }
        let limit = self.options.background_batch_size;
        let expired = self
            .storage
            .expire_task_executions(self.now(), limit)
            .await?;
        if expired > 0 {
            self.metrics.expired(expired);
            tracing::warn!(expired, "recovered executions whose lease lapsed");
            self.wake_claim.notify_one();
        }
        Ok(expired >= limit)
    }

    /// One iteration of the cancel loop: stops the local runs of cancelled executions, then
    /// acknowledges the requests it acted on. A request for an execution whose run is not
    /// registered yet (its claim's reply still on the way) is left for the next iteration; one
    /// for an execution no longer running here is acknowledged as stale.
    pub(super) async fn take_cancellations(self: Arc<Self>) -> Result<bool> {
        if self.running().is_empty() {
            return Ok(false);
        }
        let limit = self.options.background_batch_size;
        let epoch = self.claim_epoch.load(Ordering::SeqCst);
        let ids = self.storage.cancellation_requests(&self.id, limit).await?;
        if ids.is_empty() {
            return Ok(false);
        }
        let full = u64::try_from(ids.len()).unwrap_or(u64::MAX) >= limit;
        let mut acted = Vec::with_capacity(ids.len());
        {
            let running = self.running();
            let claims_settled =
                epoch.is_multiple_of(2) && self.claim_epoch.load(Ordering::SeqCst) == epoch;
            for id in ids {
                if let Some((_, token)) = running.get(&id) {
                    tracing::info!(execution_id = %id, "cancelling a running execution");
                    token.cancel();
                    acted.push(id);
                } else if claims_settled {
                    acted.push(id);
                }
            }
        }
        self.storage
            .acknowledge_cancellation_requests(&self.id, &acted, self.now())
            .await?;
        Ok(full && !acted.is_empty())
    }
}
