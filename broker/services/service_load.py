"""Every broker's requests in flight per service, for the leader's autoscaler.

Each broker's proxy counts its own requests in flight (`ServiceRouter`); the autoscaler runs on
the leader only. So that a follower's load counts too, every broker samples its router's counts
about four times a second and writes their mean per service at most every `period_s` (one row
per broker and service, `service_loads`; an idle broker writes nothing once its rows are gone).
The leader adds the rows of the other brokers that are fresh (written within `FRESH_S`) to its
own count: a broker that died or lost the database stops counting within that time.

Invariants: a broker writes only its own rows; a row older than FRESH_S never counts; rows
older than FORGET_S are deleted by the leader.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

from sqlmodel import Session

from broker.services import service_queries as repo
from broker.services.service_router import ServiceRouter

log = logging.getLogger("broker.service_load")

SAMPLE_S = 0.25  # how often a broker samples its proxy's counts (its periodic task)
PUBLISH_S = 1.0  # how often it writes them
FRESH_S = 5.0  # a broker's row counts this long after it was written
FORGET_S = 60.0  # and is deleted after this


def new_broker_id() -> str:
    """This process among the brokers on one database (host, pid, and a random part)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LoadPublisher:
    """Runs on every broker (not only the leader): `tick()` every SAMPLE_S."""

    def __init__(self, engine, router: ServiceRouter, broker_id: str, *, clock: Callable[[], float] = time.time,
                 period_s: float = PUBLISH_S) -> None:
        self.engine, self.router, self.broker_id, self.clock, self.period_s = engine, router, broker_id, clock, period_s
        self._sums: dict[str, float] = {}
        self._n = 0
        self._written: set[str] = set()  # services with a row of this broker
        self._last = float("-inf")
        self._lock = threading.Lock()

    def tick(self) -> bool:
        """Sample; write when `period_s` has passed. True when it wrote."""
        with self._lock:
            counts = self.router.service_counts()
            for sid, n in counts.items():
                self._sums[sid] = self._sums.get(sid, 0.0) + n
            self._n += 1
            now = self.clock()
            if now - self._last < self.period_s:
                return False
            means = {sid: round(total / self._n, 3) for sid, total in self._sums.items()}
            loads = {sid: n for sid, n in means.items() if n > 0 or sid in self._written}
            loads.update({sid: 0.0 for sid in self._written if sid not in loads})
            self._sums, self._n, self._last = {}, 0, now
            if not loads:
                return False
            with Session(self.engine) as s:
                repo.publish_loads(s, self.broker_id, loads, now)
                s.commit()
            self._written = {sid for sid, n in loads.items() if n > 0}
            return True


class RemoteLoad:
    """The leader's view of the other brokers' loads (one query per call)."""

    def __init__(self, engine, broker_id: str, *, fresh_s: float = FRESH_S, forget_s: float = FORGET_S) -> None:
        self.engine, self.broker_id, self.fresh_s, self.forget_s = engine, broker_id, fresh_s, forget_s
        self._forgot_at = float("-inf")

    def __call__(self, now: float) -> dict[str, float]:
        with Session(self.engine) as s:
            loads = repo.other_loads(s, self.broker_id, now - self.fresh_s)
            if now - self._forgot_at >= self.forget_s:
                self._forgot_at = now
                repo.forget_loads(s, now - self.forget_s)
                s.commit()
        return loads
