"""`CapacityService`: the capacity routes' use cases; a what-if runs as a background task.

A what-if replays weeks of history twice (seconds to minutes), so `POST /api/v1/capacity/whatif`
answers 202 at once with a run id, and the replay runs in a thread of this broker; `GET
.../whatif/{id}` shows its phase (export, before, after, done) and progress (0..1), then its
result. Runs live in this process's memory (the last `KEEP` of them; one at a time: a second
start while one runs is 409): a what-if is an analysis, not state, and a restart only loses
results that can be recomputed.

Who: platform-admins and global ops-viewers (the trace and the figures name every project of
the region); anyone else 403.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Callable, Optional

from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz
from broker.auth.policy import Resource
from broker.errors import Conflict, Forbidden, Invalid, NotFound
from broker.ports import Clock
from broker.services import capacity as cap
from broker.services.reports import parse_time
from scheduler.model import Policy

KEEP = 20
WEEK = 7 * 86400.0


class CapacityService:
    def __init__(self, engine, authz: Authz, policy: Callable[[], Policy], *, clock: Clock = time.time) -> None:
        """`policy`: the broker's scheduling policy, read when a run starts."""
        self.engine, self.authz, self.policy, self.clock = engine, authz, policy, clock
        self._runs: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def _require(self, p: AuthPrincipal) -> None:
        if not self.authz.scope(p, Resource.PROJECT).all:
            raise Forbidden("capacity planning is for platform-admins and ops-viewers (it names every project)",
                            code="FORBIDDEN", details={"action": "capacity"})

    def trace(self, p: AuthPrincipal, *, start: Optional[str], end: Optional[str]) -> str:
        """The recorded history of [start, end) as canonical trace CSV (default: the last 4 weeks)."""
        self._require(p)
        now = self.clock()
        a, b = parse_time(start, now - 4 * WEEK, "from"), parse_time(end, now, "to")
        if not b > a:
            raise Invalid("'to' must be after 'from'", code="BAD_TIME_RANGE")
        return cap.trace_csv(r.job for r in cap.recorded_jobs(self.engine, a, b))

    def start_whatif(self, p: AuthPrincipal, *, weeks: float, add: list[str], remove: list[str],
                     quota_file: Optional[str]) -> dict:
        self._require(p)
        if not 0 < weeks <= cap.MAX_WEEKS:
            raise Invalid(f"weeks must be in (0, {cap.MAX_WEEKS}]", code="BAD_WEEKS")
        for spec in [*add, *remove]:
            cap.parse_group(spec)  # a bad change is a 422 now, not a failed run later
        if quota_file:
            cap.parse_quota_file(quota_file)
        now = self.clock()
        run = {"id": uuid.uuid4().hex[:12], "status": "running", "phase": "queued", "progress": 0.0,
               "started_at": now, "finished_at": None, "weeks": weeks, "add": add, "remove": remove,
               "result": None, "error": None}
        with self._lock:
            if any(r["status"] == "running" for r in self._runs.values()):
                raise Conflict("a what-if is already running; wait for it", code="WHATIF_RUNNING")
            self._runs[run["id"]] = run
            while len(self._runs) > KEEP:
                self._runs.popitem(last=False)
        threading.Thread(target=self._run, args=(run, now - weeks * WEEK, now, quota_file), daemon=True,
                         name=f"whatif-{run['id']}").start()
        return self._public(run)

    def get_whatif(self, p: AuthPrincipal, run_id: str) -> dict:
        self._require(p)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise NotFound(f"what-if {run_id!r} not found", code="WHATIF_NOT_FOUND")
            return self._public(run)

    def list_whatifs(self, p: AuthPrincipal) -> list[dict]:
        self._require(p)
        with self._lock:
            return [{k: v for k, v in r.items() if k != "result"} for r in self._runs.values()]

    def _run(self, run: dict, start: float, end: float, quota_file: Optional[str]) -> None:
        def progress(phase: str, x: float) -> None:
            run["phase"], run["progress"] = phase, round(x, 3)

        try:
            result = cap.whatif(self.engine, self.policy(), start=start, end=end, add=run["add"], remove=run["remove"],
                                quota_text=quota_file, on_progress=progress)
            run.update(result=result, status="done", phase="done", progress=1.0)
        except Invalid as e:
            run.update(status="failed", error={"code": e.code, "message": e.message})
        except Exception as e:  # the run's failure is its result; the broker goes on
            run.update(status="failed", error={"code": "WHATIF_FAILED", "message": f"{type(e).__name__}: {e}"[:300]})
        run["finished_at"] = self.clock()

    @staticmethod
    def _public(run: dict) -> dict:
        return dict(run)
