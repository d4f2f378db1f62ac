"""Every periodic task of the broker, registered in one place (APScheduler, max_instances=1).

`build_tasks(services)` lists them all:

- schedule                every `cycle_interval_s`, plus a wake-up after each submit or cancel
                          and each attempt end the executor reports (`EndNotifier`):
                          the scheduling loop's tick (observe, run the core, apply, launch);
- reconcile               every `reconcile_interval_s`: release orphaned executor attempts;
  (both only with an executor: without one there is nothing to schedule onto)
- accounting.ledger       every 60 s: accrual of running attempts (`accrual_period_s`), used GPU-seconds and
                          energy into the ledger;
- audit.seal_job_submits  every 2 s: job submits into the audit hash chain (the outbox);
- checkpoints.cleanup     every 30 s: checkpoint directories of jobs that ended for good;
- logs.retention          every hour: log folders of jobs that ended `log_retention_days` ago;
- telemetry.heartbeats    every heartbeat timeout / 6: nodes whose agent went quiet;
- telemetry.rollup        every 60 s: 1-minute and 1-hour rollups;
- telemetry.retention     every hour: raw samples and rollups past their retention;
- idle.check              every 60 s: flag idle allocations, reclaim idle innovation work;
- services.controller     every 0.25 s, with an executor: service replicas (count, probes, restarts,
                          rollouts, autoscaling; `broker.services.service_controller`);
- services.load           every 0.25 s on EVERY broker (PostgreSQL, or entry workers on): its proxy's requests in
                          flight per service, written about every second for the leader's
                          autoscaler (`broker.services.service_load`);
- dashboards.pool_rollups every 60 s: allocated / used / capacity per pool and project, per minute
                          and hour, for the dashboards (dashboards_rollup);
- notify                  every 5 s: job outcomes and unhealthy nodes into the notification
                          outbox, then deliver what is due (webhook, e-mail; backoff).

- kubernetes.sync         every `k8s_sync_interval_s`, cluster mode only: node states from
                          Kubernetes, the broker's taint, worker-group scaling (cluster_sync).

None of them makes a network call inside a DB transaction; each opens its own short ones.

Where several brokers share one PostgreSQL database, every task above runs on the leader only
(`broker.services.leadership`): each checks `leader.is_leader` when it fires, and the
scheduling loop's transactions are fenced besides. What runs on every broker is the API itself:
submits (the group-commit writer), reads, agent reports and the health checks, and
`services.load`. A broker that
becomes leader runs a scheduling tick at once.

Why a wake-up flag besides the interval: a submit should start a job in milliseconds, not at the
next interval, and an attempt's end should free its GPUs as soon as the executor knows of it, not
at the next tick. A wake-up that arrives while a tick runs is not lost: the tick runs once more.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from typing import Callable

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from broker.ports import Clock, Executor
from broker.services.accounting import run_accounting
from broker.services.admin.audit import seal_pending
from broker.services.checkpoints import remove_finished_checkpoints
from broker.services.dashboards_rollup import run_pool_rollups
from broker.services.idle import check_idle
from broker.services.notify import run_notifications
from broker.services.logs import remove_expired_logs
from broker.services.reconcile import release_orphans
from broker.services.leadership import Leadership, NotLeader, StaticLeadership
from broker.services.scheduling import SchedulingLoop
from broker.services.service_load import SAMPLE_S
from broker.services.telemetry import rollup
from broker.services.wakeup import Wakeup
from broker.services.wiring import Services

log = logging.getLogger("broker.tasks")
SERVICE_TICK_S = 0.25  # the service controller's tick; each probe keeps its own period
RETRY_S = 0.01  # a wake-up's run APScheduler refused (the last run still counted) is retried after this


def build_tasks(services: Services, clock: Clock = time.time) -> "Tasks":
    """Every periodic task of one app, not yet started (`Tasks.start` connects the wake-ups)."""
    engine, settings, tel = services.engine, services.settings, services.telemetry
    cfg = tel.config
    tasks = Tasks(services.loop, services.executor, cycle_interval_s=settings.cycle_interval_s,
                  reconcile_interval_s=settings.reconcile_interval_s, wakeup=services.wakeup,
                  leader=services.leader)
    tasks.add_interval(lambda: run_accounting(engine, clock(), period_s=settings.accrual_period_s), 60.0, "accounting.ledger")
    tasks.add_interval(lambda: seal_pending(engine), 2.0, "audit.seal_job_submits")
    tasks.add_interval(lambda: remove_finished_checkpoints(engine, settings.checkpoint_root_dir), 30.0,
                       "checkpoints.cleanup")
    tasks.add_interval(lambda: remove_expired_logs(engine, settings.log_dir, settings.log_retention_days, clock()),
                       3600.0, "logs.retention")
    tasks.add_interval(lambda: tel.check_heartbeats(clock()), max(1.0, cfg.health.heartbeat_timeout_s / 6),
                       "telemetry.heartbeats")
    tasks.add_interval(lambda: rollup.run_rollups(engine, clock(), cfg.rollup_lateness_s), 60.0, "telemetry.rollup")
    tasks.add_interval(lambda: rollup.apply_retention(engine, clock(), cfg.raw_retention_s, cfg.minute_retention_s,
                                                      cfg.hour_retention_s), 3600.0, "telemetry.retention")
    tasks.add_interval(lambda: check_idle(engine, clock(), leader=services.leader), 60.0, "idle.check")
    tasks.add_interval(lambda: run_notifications(engine, settings, clock()), 5.0, "notify")
    tasks.add_interval(lambda: run_pool_rollups(engine, clock()), 60.0, "dashboards.pool_rollups")

    if services.service_controller is not None:  # inference services: replicas, probes, rollouts
        tasks.add_interval(services.service_controller.tick, SERVICE_TICK_S, "services.controller")
    if services.service_load is not None:  # every broker: its proxy's load, for the leader's autoscaler
        tasks.add_interval(services.service_load.tick, SAMPLE_S, "services.load", every_broker=True)

    if services.cluster_sync is not None:  # cluster mode: Kubernetes node states, taints, worker groups
        tasks.add_interval(lambda: services.cluster_sync.tick(clock()), settings.k8s_sync_interval_s, "kubernetes.sync")
    return tasks


class Tasks:
    def __init__(self, loop: SchedulingLoop | None, executor: Executor | None, *, cycle_interval_s: float,
                 reconcile_interval_s: float, wakeup: Wakeup | None = None,
                 leader: Leadership | None = None) -> None:
        """Without an executor (loop None) only the tasks added with `add_interval` run; every
        task runs only while `leader` says this broker leads (default: always)."""
        self.loop = loop
        self.executor = executor
        self.wakeup = wakeup
        self.leader = leader or StaticLeadership()
        self._aps = BackgroundScheduler(timezone=dt.timezone.utc,
                                        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})
        self._dirty = threading.Event()
        self._wake_lock = threading.Lock()  # `_running` and the flag's last look, against `wake`
        self._running = False  # the scheduling job is in its loop of ticks: it will see the flag
        self._sched_job = None
        if loop is not None and executor is not None:
            self._sched_job = self._aps.add_job(self._schedule, "interval", seconds=cycle_interval_s, id="schedule")
            self._aps.add_job(self._reconcile, "interval", seconds=reconcile_interval_s, id="reconcile")
            self._aps.add_listener(self._refused, EVENT_JOB_MAX_INSTANCES)

    def add_interval(self, fn: Callable[[], object], seconds: float, id: str, *, every_broker: bool = False) -> None:
        """`every_broker`: runs on followers too (else on the leader only)."""
        self._aps.add_job(_guarded(fn, id, None if every_broker else self.leader), "interval", seconds=seconds, id=id)

    def start(self) -> None:
        """Join the leader election, then start every task; submits, cancels, quota changes and
        the executor's attempt ends now wake the scheduling tick. Raises `AnotherBroker` on a
        SQLite file another broker holds (nothing is started then)."""
        self.leader.start(on_change=self._leadership_changed)
        self._aps.start()
        if self.wakeup is not None and self.loop is not None:
            self.wakeup.connect(self.wake, self.wake, self.wake)
        self.wake()

    def stop(self) -> None:
        if self.wakeup is not None:
            self.wakeup.connect(None)
        self._aps.shutdown(wait=True)
        self.leader.stop()

    def _leadership_changed(self, leading: bool) -> None:
        if leading:
            self._dirty.clear()  # a wake-up left from follower days must not swallow this one
            self.wake()

    def wake(self) -> None:
        """Run a scheduling tick now (or right after the one running).

        Cheap when called in bursts (every submit and every attempt end calls it): while a
        wake-up is pending, the next one only finds the flag set and returns, so a burst of ends
        during a tick costs one more tick, not one per end. While the scheduling job runs, the
        flag is all it takes (the job looks at it after each tick); otherwise the job's next
        run is moved to now."""
        if self._sched_job is None or self._dirty.is_set():
            return
        with self._wake_lock:
            if self._dirty.is_set():
                return
            self._dirty.set()
            if self._running:
                return
        self._run_in(0.0)

    def _schedule(self) -> None:
        with self._wake_lock:
            self._running = True
        try:
            self._ticks()
        finally:
            # A wake-up after the last look at the flag, while APScheduler still counts this run,
            # would have its run refused: the flag says so, and the next run is due at once.
            with self._wake_lock:
                self._running = False
                again = self._dirty.is_set()
            if again and self.leader.is_leader:
                self._run_in(RETRY_S)

    def _ticks(self) -> None:
        if not self.leader.is_leader:
            self._dirty.clear()  # a follower's submits wake nothing here; the leader polls
            return
        for _ in range(10):  # bounded: a storm of wake-ups cannot starve the other tasks
            self._dirty.clear()
            try:
                self.loop.tick()
            except NotLeader:
                log.info("scheduling tick stopped: this broker is no longer the leader")
                return
            except Exception:
                log.exception("scheduling tick failed")
            if not self._dirty.is_set():
                return

    def _refused(self, event) -> None:
        """APScheduler skipped a run of the scheduling job (the previous one still counted as
        running). A wake-up that is still owed, with no run of ours to see it, tries again."""
        if event.job_id != "schedule":
            return
        with self._wake_lock:
            owed = self._dirty.is_set() and not self._running
        if owed:
            self._run_in(RETRY_S)

    def _run_in(self, delay_s: float) -> None:
        # the scheduler shutting down (its job removed, or no longer running): nothing to run
        with contextlib.suppress(JobLookupError, SchedulerNotRunningError):
            self._sched_job.modify(next_run_time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=delay_s))

    def _reconcile(self) -> None:
        if not self.leader.is_leader:
            return
        try:
            release_orphans(self.loop.engine, self.executor)
        except Exception:
            log.exception("reconcile failed")


def _guarded(fn: Callable[[], object], name: str, leader: Leadership | None) -> Callable[[], None]:
    def run() -> None:
        if leader is not None and not leader.is_leader:
            return
        try:
            fn()
        except Exception:
            log.exception("periodic task %s failed", name)
    return run
