"""Every periodic task of the broker, registered in one place (APScheduler, max_instances=1).

- schedule   every `cycle_interval_s`, plus a wake-up after each submit or cancel: the
             scheduling loop's tick (observe, run the core, apply, launch).
- reconcile  every `reconcile_interval_s`: release orphaned executor attempts.
- extra      other modules (telemetry rollups, node health) register through `add_interval`.

Why a wake-up flag besides the interval: a submit should start a job in milliseconds, not at the
next interval. A wake-up that arrives while a tick runs is not lost: the tick runs once more.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from broker.ports import Executor
from broker.services.reconcile import release_orphans
from broker.services.scheduling import SchedulingLoop

log = logging.getLogger("broker.tasks")


class Tasks:
    def __init__(self, loop: SchedulingLoop | None, executor: Executor | None, *, cycle_interval_s: float,
                 reconcile_interval_s: float) -> None:
        """Without an executor (loop None) only the tasks added with `add_interval` run."""
        self.loop = loop
        self.executor = executor
        self._aps = BackgroundScheduler(timezone=dt.timezone.utc,
                                        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})
        self._dirty = threading.Event()
        self._sched_job = None
        if loop is not None and executor is not None:
            self._sched_job = self._aps.add_job(self._schedule, "interval", seconds=cycle_interval_s, id="schedule")
            self._aps.add_job(self._reconcile, "interval", seconds=reconcile_interval_s, id="reconcile")

    def add_interval(self, fn: Callable[[], object], seconds: float, id: str) -> None:
        self._aps.add_job(_guarded(fn, id), "interval", seconds=seconds, id=id)

    def start(self) -> None:
        self._aps.start()
        self.wake()

    def stop(self) -> None:
        self._aps.shutdown(wait=True)

    def wake(self) -> None:
        """Run a scheduling tick now (or right after the one running).

        Cheap when called in bursts (every submit calls it): while a wake-up is pending, the
        next one only finds the flag set and returns."""
        if self._sched_job is None or self._dirty.is_set():
            return
        self._dirty.set()
        try:
            self._sched_job.modify(next_run_time=dt.datetime.now(dt.timezone.utc))
        except Exception:  # scheduler shutting down
            pass

    def _schedule(self) -> None:
        for _ in range(10):  # bounded: a storm of wake-ups cannot starve the other tasks
            self._dirty.clear()
            try:
                self.loop.tick()
            except Exception:
                log.exception("scheduling tick failed")
            if not self._dirty.is_set():
                return

    def _reconcile(self) -> None:
        try:
            release_orphans(self.loop.engine, self.executor)
        except Exception:
            log.exception("reconcile failed")


def _guarded(fn: Callable[[], object], name: str) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("periodic task %s failed", name)
    return run
