"""The proxy's routing table: ready replicas per service, load balancing, requests in flight,
and the per-service request metrics exported on /metrics.

In-process and lock-protected: the controller (leader) pushes each change at once
(`set_endpoints`, `remove`), and any broker refreshes from the database (`ServiceReplica.ready`)
at most every `refresh_s`, so a follower's proxy routes too. The proxy runs that refresh in a
worker thread beside the requests (`refresh_due` / `refresh`): picking a replica never reads
the database, and a read that started before a push never overwrites it. Balancing: the ready replica with
the fewest requests in flight, ties broken round-robin, so a slow replica gets less.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from broker.services.metrics import HTTP_BUCKETS

SERVICE_BUCKETS = (0.0005, 0.001, 0.002) + HTTP_BUCKETS


@dataclass(frozen=True, slots=True)
class Sample:
    """One series value of a service metric, as it crosses a process boundary."""

    name: str  # the sample's name (`..._total`, `..._bucket`, `..._sum`, `..._count`, the gauge's)
    labels: tuple[tuple[str, str], ...]
    value: float
    cumulative: bool  # True: counts up for the life of the process (added across restarts)


_SUFFIX_ORDER = {"_bucket": 0, "_count": 1, "_sum": 2}


def _own_samples(registry: CollectorRegistry) -> Iterable[tuple[Any, Sample]]:
    """(family, sample) of a registry, without the `_created` timestamps (not additive)."""
    for fam in registry.collect():
        cumulative = fam.type != "gauge"
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            yield fam, Sample(s.name, tuple(sorted(s.labels.items())), s.value, cumulative)


def merge_samples(samples: Iterable[Sample]) -> dict[tuple[str, tuple], float]:
    """Sum samples of the same name and labels."""
    out: dict[tuple[str, tuple], float] = {}
    for s in samples:
        key = (s.name, s.labels)
        out[key] = out.get(key, 0.0) + s.value
    return out


class _Merged:
    """The router's four metric families as one collector: this process's values plus
    `router.extra_samples()` (other processes'), summed per name and labels. Families keep
    their names, types and help; a label set only another process has seen appears too."""

    def __init__(self, router: "ServiceRouter", own: CollectorRegistry) -> None:
        self._router, self._own = router, own

    def describe(self):
        return [Metric(f.name, f.documentation, f.type) for f in self._own.collect()]

    def collect(self):
        extra = self._router.extra_samples
        others = merge_samples(extra()) if extra is not None else {}
        fams = {}
        sums: dict[str, dict[tuple[str, tuple], float]] = {}
        for fam, s in _own_samples(self._own):
            fams.setdefault(fam.name, fam)
            sums.setdefault(fam.name, {})[(s.name, s.labels)] = s.value
        for fam in self._own.collect():
            fams.setdefault(fam.name, fam)
            sums.setdefault(fam.name, {})
        family_of = {fname + suffix: fname for fname in fams for suffix in ("", "_total", "_bucket", "_count", "_sum")}
        for (name, labels), v in others.items():
            fname = family_of.get(name)
            if fname is not None:  # (a sample of no family of ours is dropped)
                d = sums[fname]
                d[(name, labels)] = d.get((name, labels), 0.0) + v
        for fname, fam in fams.items():
            m = Metric(fam.name, fam.documentation, fam.type)

            def order(item, _base=fam.name):
                (name, labels), _ = item
                rest = tuple(kv for kv in labels if kv[0] != "le")
                le = dict(labels).get("le")
                return (rest, _SUFFIX_ORDER.get(name[len(_base):], 0), float(le) if le is not None else 0.0)
            for (name, labels), v in sorted(sums[fname].items(), key=order):
                m.add_sample(name, dict(labels), v)
            yield m


@dataclass(frozen=True, slots=True)
class Endpoint:
    job_id: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ServiceRouter:
    def __init__(self, registry: CollectorRegistry | None = None, *,
                 load: Callable[[], Iterable[tuple[str, str, str, int]]] | None = None,
                 refresh_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        """`load`: (service id, job id, host, port) of every ready replica (the database)."""
        self._lock = threading.Lock()
        self._eps: dict[str, tuple[Endpoint, ...]] = {}
        self._down: dict[str, float] = {}  # job id -> until (passive: a refused connection)
        self._inflight: dict[str, int] = {}  # job id -> requests in flight
        self._svc_inflight: dict[str, int] = {}
        self._rr = itertools.count()
        self._load, self._refresh_s, self._clock = load, refresh_s, clock
        self._loaded_at = float("-inf")
        self._pushed_at = float("-inf")
        self._loading = False
        self._metrics: dict[tuple[str, str], ServiceMetrics] = {}
        # Other processes' samples to add on /metrics (the entry point's workers,
        # `broker.entry.EntryWorkers.samples`); None: this process's own only.
        self.extra_samples: Callable[[], Iterable[Sample]] | None = None
        r = CollectorRegistry()  # ours; `registry` gets them through `_Merged` (ours + extra)
        if registry is not None:
            registry.register(_Merged(self, r))
        self.requests = Counter("broker_service_requests", "requests proxied to a service",
                                ["project", "service", "code"], registry=r)
        self.errors = Counter("broker_service_errors", "proxied requests that failed (5xx, no replica, timeout)",
                              ["project", "service", "reason"], registry=r)
        self.latency = Histogram("broker_service_request_duration_seconds",
                                 "latency of proxied requests (to the response headers)",
                                 ["project", "service"], buckets=SERVICE_BUCKETS, registry=r)
        self.inflight_gauge = Gauge("broker_service_requests_in_flight", "requests in flight per service",
                                    ["project", "service"], registry=r)
        self._own = r

    def export_samples(self) -> list[Sample]:
        """This process's samples of the four service metrics, for another process to add
        (`Sample.cumulative`: counters and histogram series; in-flight gauges are not)."""
        return [s for _, s in _own_samples(self._own)]

    def metrics_for(self, project: str, service: str) -> "ServiceMetrics":
        """The labelled metrics of one service, built once (a labels() lookup per request costs)."""
        key = (project, service)
        m = self._metrics.get(key)
        if m is None:
            m = self._metrics[key] = ServiceMetrics(self, project, service)
        return m

    # ------------------------------------------------------------------ table
    def set_endpoints(self, service_id: str, eps: Iterable[Endpoint]) -> None:
        with self._lock:
            self._eps[service_id] = tuple(eps)
            self._pushed_at = self._clock()

    def remove(self, job_id: str) -> None:
        """Out of rotation now (draining, failed probe, stopped)."""
        with self._lock:
            self._pushed_at = self._clock()
            for sid, eps in self._eps.items():
                if any(e.job_id == job_id for e in eps):
                    self._eps[sid] = tuple(e for e in eps if e.job_id != job_id)

    def mark_down(self, job_id: str, for_s: float = 2.0) -> None:
        """Passive health: a replica that refused a connection gets no requests for a while
        (until the controller's probe decides)."""
        with self._lock:
            self._down[job_id] = self._clock() + for_s

    def endpoints(self, service_id: str) -> tuple[Endpoint, ...]:
        self._maybe_refresh()
        with self._lock:
            return self._eps.get(service_id, ())

    def pick(self, service_id: str, exclude: frozenset[str] = frozenset()) -> Endpoint | None:
        """The ready replica with the fewest requests in flight (round-robin among equals). Never
        reads the database: the proxy refreshes the table beside the requests (`refresh`)."""
        now = self._clock()
        with self._lock:
            eps = [e for e in self._eps.get(service_id, ()) if e.job_id not in exclude
                   and self._down.get(e.job_id, 0.0) <= now]
            if not eps:
                return None
            start = next(self._rr) % len(eps)
            order = eps[start:] + eps[:start]
            return min(order, key=lambda e: self._inflight.get(e.job_id, 0))

    # ------------------------------------------------------------------ in flight
    def begin(self, service_id: str, job_id: str) -> None:
        with self._lock:
            self._inflight[job_id] = self._inflight.get(job_id, 0) + 1
            self._svc_inflight[service_id] = self._svc_inflight.get(service_id, 0) + 1

    def end(self, service_id: str, job_id: str) -> None:
        with self._lock:
            self._inflight[job_id] = max(0, self._inflight.get(job_id, 0) - 1)
            self._svc_inflight[service_id] = max(0, self._svc_inflight.get(service_id, 0) - 1)

    def inflight(self, job_id: str) -> int:
        with self._lock:
            return self._inflight.get(job_id, 0)

    def service_inflight(self, service_id: str) -> int:
        with self._lock:
            return self._svc_inflight.get(service_id, 0)

    def service_counts(self) -> dict[str, int]:
        """Requests in flight per service now (services with none may be left out)."""
        with self._lock:
            return {sid: n for sid, n in self._svc_inflight.items() if n}

    # ------------------------------------------------------------------ refresh
    def refresh_due(self) -> bool:
        """The table is older than `refresh_s` (and no refresh is running): call `refresh()`."""
        return (self._load is not None and not self._loading
                and self._clock() - self._loaded_at >= self._refresh_s)

    def loaded(self) -> bool:
        """The table was read (or pushed) at least once."""
        return self._loaded_at > float("-inf")

    def refresh(self) -> None:
        """Read every ready replica from the database (blocking: the proxy calls it in a worker
        thread, never on the event loop). A database hiccup keeps the table as it is."""
        if self._load is None:
            return
        with self._lock:
            if self._loading:
                return
            self._loading = True
        try:
            started = self._clock()
            try:
                rows = list(self._load())
            except Exception:  # a database hiccup: keep routing to what is known
                self._loaded_at = started
                return
            table: dict[str, list[Endpoint]] = {}
            for sid, jid, host, port in rows:
                if host and port:
                    table.setdefault(sid, []).append(Endpoint(jid, host, int(port)))
            with self._lock:
                if self._pushed_at <= started:  # a push by the controller meanwhile is newer: keep it
                    self._eps = {sid: tuple(v) for sid, v in table.items()}
                self._loaded_at = started
        finally:
            self._loading = False

    def _maybe_refresh(self) -> None:
        if self.refresh_due():
            self.refresh()

    def refreshed(self) -> None:
        """The controller just pushed the whole table: no database read for a while."""
        self._loaded_at = self._pushed_at = self._clock()


class ServiceMetrics:
    """One service's children of the router's metrics."""

    def __init__(self, rt: ServiceRouter, project: str, service: str) -> None:
        self._rt, self._labels = rt, (project, service)
        self.latency = rt.latency.labels(project, service)
        self.inflight = rt.inflight_gauge.labels(project, service)
        self._codes: dict[int, Any] = {}

    def code(self, status: int) -> None:
        c = self._codes.get(status)
        if c is None:
            c = self._codes[status] = self._rt.requests.labels(*self._labels, str(status))
        c.inc()

    def error(self, reason: str) -> None:
        self._rt.errors.labels(*self._labels, reason).inc()
