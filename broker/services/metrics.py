"""Prometheus counters and histograms: the broker's business totals and its own process figures.

Two kinds, on purpose:

- **Business totals** (`business_totals`): jobs submitted, attempts admitted and preempted,
  GPU-seconds allocated and used, energy. They are *derived from the database* (the jobs,
  attempts and ledger tables) on every refresh, so they survive restarts and a leader
  change exactly: a new leader exports the same totals the old one did. Because every broker
  would read the same numbers, only the **leader** exports them (a follower omits the
  families' samples), so `sum()` over instances is right. Allocated GPU-seconds count open
  attempts up to now, so the counter rises while jobs run. Used GPU-seconds and energy grow
  when the ledger is filled (after an attempt ends, or periodically for long-running ones).
- **Process figures** (`ProcessMetrics`): API request counts and latency, the scheduling
  tick's duration, the wait of each admitted attempt by workload class, the time of the last
  tick. They belong to this process: every broker exports its own (Prometheus adds the
  `instance` label of its scrape target; dashboards sum over it) and they reset to zero when
  the process restarts, like any process counter (`rate()` and `increase()` handle resets).
  The scheduler's figures exist only where the scheduling loop runs: on the leader.

Cost: the business totals are two aggregate queries (attempts joined to jobs; ledger by pool),
refreshed at most every 5 x `overview_max_age_s` (10 s by default), not per scrape; recording a request is one counter
increment and one histogram observation; the waits of admitted attempts are resolved at scrape
time (one query per batch of ids), never on the scheduling loop's thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import text
from sqlalchemy.engine import Engine

from scheduler.model import WorkloadClass

if TYPE_CHECKING:
    from broker.services.scheduling import TickReport

TOTALS_MAX_AGE_S = 10.0  # default age of the business totals (a scrape interval is 15-60 s)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CLASSES = tuple(c.value for c in WorkloadClass)
MAX_UNRESOLVED = 100_000  # admitted ids waiting for a scrape; beyond, the oldest are dropped


class ProcessMetrics:
    """This process's counters and histograms, in a registry of its own (one per app)."""

    def __init__(self, engine: Engine | None = None) -> None:
        """`engine`: where the waits of admitted attempts are looked up (None: not recorded)."""
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("broker_http_requests", "HTTP requests served by this broker",
                                     ["method", "route", "code"], registry=r)
        self.http_duration = Histogram("broker_http_request_duration_seconds",
                                       "HTTP request latency in this broker (to the last byte sent)",
                                       ["method", "route"], buckets=HTTP_BUCKETS, registry=r)
        self.cycle = Histogram("broker_scheduler_cycle_seconds",
                               "duration of a whole scheduling tick (sync nodes, observe, schedule, launch)",
                               buckets=CYCLE_BUCKETS, registry=r)
        self.wait = Histogram("broker_job_wait_seconds",
                              "queue wait of each admitted attempt (submit or requeue to admission)",
                              ["class"], buckets=WAIT_BUCKETS, registry=r)
        self.last_tick = Gauge("broker_scheduler_last_tick_timestamp_seconds",
                               "when this broker's scheduling loop last finished a tick (leader only)", registry=r)
        self._unresolved: deque[str] = deque(maxlen=MAX_UNRESOLVED)
        self._lock = threading.Lock()

    def on_tick(self, rep: "TickReport") -> None:
        """Called by the scheduling loop after each tick (cheap: no I/O)."""
        self.cycle.observe(rep.tick_s)
        self.last_tick.set(time.time())
        if rep.admitted:
            self._unresolved.extend(rep.admitted)

    def observe_request(self, method: str, route: str, code: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(code)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def resolve_waits(self) -> int:
        """Look up the waits of attempts admitted since the last call and observe them."""
        if self.engine is None or not self._unresolved:
            return 0
        with self._lock:
            ids = []
            while self._unresolved:
                ids.append(self._unresolved.popleft())
            waits = admitted_waits(self.engine, ids)
            for cls, w in waits:
                self.wait.labels(cls).observe(max(0.0, w))
            return len(waits)


def admitted_waits(engine: Engine, job_ids: list[str], chunk: int = 500) -> list[tuple[str, float]]:
    """(class, seconds) per job's current attempt: admission minus the submit (attempt 1) or
    minus the end of the previous attempt (a requeue). Jobs no longer admitted are skipped."""
    out: list[tuple[str, float]] = []
    for i in range(0, len(job_ids), chunk):
        part = list(dict.fromkeys(job_ids[i:i + chunk]))
        params = {f"j{k}": jid for k, jid in enumerate(part)}
        marks = ", ".join(f":{k}" for k in params)
        rows = _rows(engine, (
            "SELECT j.workload_class, a.admitted_at, j.submit_time, "
            "(SELECT MAX(p.ended_at) FROM attempts p WHERE p.job_id = j.id AND p.number < j.attempt) "
            f"FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.number = j.attempt WHERE j.id IN ({marks})"),
            params)
        for cls, admitted, submitted, prev_end in rows:
            if admitted is not None:
                out.append((cls, float(admitted) - float(prev_end if prev_end is not None else submitted)))
    return out


def business_totals(engine: Engine, now: float) -> dict[str, Any]:
    """Totals since the database began (what the `_total` counters export), and the idle
    allocations flagged now (a gauge, from the same leader-only read)."""
    by_class = _rows(engine, (
        "SELECT j.workload_class, COUNT(*), SUM(CASE WHEN a.status = 'PREEMPTED' THEN 1 ELSE 0 END) "
        "FROM attempts a JOIN jobs j ON j.id = a.job_id GROUP BY j.workload_class"), {})
    submitted = _rows(engine, "SELECT workload_class, COUNT(*) FROM jobs GROUP BY workload_class", {})
    by_pool = _rows(engine, (
        "SELECT pool, SUM(CASE WHEN ended_at IS NULL THEN gpus * (:now - started_at) ELSE allocated_gpu_s END), "
        "SUM(COALESCE(used_gpu_s, 0)), SUM(COALESCE(energy_j, 0)) FROM ledger GROUP BY pool"), {"now": now})
    idle = _rows(engine, (
        "SELECT pool, COUNT(*), SUM(CASE WHEN reclaimed_at IS NOT NULL THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN cleared_at IS NULL THEN 1 ELSE 0 END) FROM idle_allocations GROUP BY pool"), {})
    # every class and pool from zero, so a counter exists before its first event (increase()
    # then counts that first event too) and dashboards show 0 rather than "no data"
    classes = {c: 0 for c in CLASSES}
    pools = {name: 0 for (name,) in _rows(engine, "SELECT name FROM pools", {})}
    return {
        "idle_flags": {**pools, **{p: int(n) for p, n, _, _ in idle}},
        "idle_reclaims": {**pools, **{p: int(r or 0) for p, _, r, _ in idle}},
        "idle_open": {**pools, **{p: int(o or 0) for p, _, _, o in idle}},
        "submitted": {**classes, **{c: int(n) for c, n in submitted}},
        "admitted": {**classes, **{c: int(n) for c, n, _ in by_class}},
        "preempted": {**classes, **{c: int(p or 0) for c, _, p in by_class}},
        "gpu_seconds_allocated": {**pools, **{p: max(0.0, float(a or 0)) for p, a, _, _ in by_pool}},
        "gpu_seconds_used": {**pools, **{p: float(u or 0) for p, _, u, _ in by_pool}},
        "energy_joules": {**pools, **{p: float(e or 0) for p, _, _, e in by_pool}},
    }


class TotalsCache:
    """`business_totals` at most `max_age_s` old, one recomputation at a time."""

    def __init__(self, engine: Engine, *, max_age_s: float = TOTALS_MAX_AGE_S, clock=time.time,
                 monotonic=time.monotonic) -> None:
        self.engine, self.max_age_s, self.clock, self._mono = engine, max_age_s, clock, monotonic
        self._snap: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._snap is None or self._mono() - self._snap[0] >= self.max_age_s:
                started = self._mono()
                self._snap = (started, business_totals(self.engine, self.clock()))
            return self._snap[1]


def _rows(engine: Engine, sql: str, params: dict) -> list:
    with engine.connect() as c:
        return list(c.execute(text(sql), params).all())
