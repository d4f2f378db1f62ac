"""FakeExecutor: an in-memory `broker.ports.Executor` for unit and load tests.

Why: services and the scheduling loop are tested without Ray; load tests push thousands of
jobs through without processes. The node inventory is scripted; each worker's life is driven
by a clock (`clock()`, injectable) and a per-job outcome:

- `Outcome(start_s, run_s, exit_code, log)`: the worker is STARTING for start_s, RUNNING for
  run_s, then EXITED with exit_code; `log` bytes are readable from launch on.
- `outcome_for(spec) -> Outcome` (constructor argument) picks the outcome per launch; the
  default runs forever (run_s=None), so tests decide the end explicitly with `finish()`.
- `finish`, `lose`, `start` force a state; `stop` records the request and ends the workers
  with exit code 143 (SIGTERM) at once, message "stopped".

Invariants (same as the real adapter): launch is idempotent per (job_id, attempt); status of an
unknown attempt has exists=False; read_log never raises for a known attempt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from broker.ports import AttemptStatus, Clock, LaunchSpec, NodeObservation, WorkerState, WorkerStatus
from scheduler.model import Resources


@dataclass(frozen=True, slots=True)
class Outcome:
    start_s: float = 0.0
    run_s: float | None = None  # None: runs until finish()/stop()
    exit_code: int = 0
    log: bytes = b""


@dataclass
class _Worker:
    rank: int
    node: str
    launched_at: float
    outcome: Outcome
    forced: WorkerState | None = None
    exit_code: int | None = None
    ended_at: float | None = None
    message: str = ""
    log: bytearray = field(default_factory=bytearray)
    cuda: str = ""


def node(id: str, *, pool: str = "innovation", gpus: int = 4, cpus: float = 32, memory_gb: float = 256,
         gpu_model: str = "A100", alive: bool = True) -> NodeObservation:
    """Builder for scripted inventory."""
    return NodeObservation(id=id, hostname=id, address="127.0.0.1", pool=pool, gpu_model=gpu_model,
                           capacity=Resources(gpus, cpus, memory_gb), alive=alive,
                           labels={"pool": pool, "gpu_model": gpu_model})


class FakeExecutor:
    def __init__(self, nodes: Sequence[NodeObservation] = (), *, clock: Clock = time.time,
                 outcome_for: Callable[[LaunchSpec], Outcome] | None = None) -> None:
        self._nodes = list(nodes)
        self.clock = clock
        self._outcome_for = outcome_for or (lambda spec: Outcome())
        self._attempts: dict[tuple[str, int], list[_Worker]] = {}
        self.specs: dict[tuple[str, int], LaunchSpec] = {}
        self.launches: list[tuple[str, int]] = []  # every launch call, duplicates included
        self.stops: list[tuple[str, int, float, str, str]] = []  # (job, attempt, grace, message, reason)
        self.releases: list[tuple[str, int]] = []
        self._log_info: dict[tuple[str, int, int], dict | None] = {}
        self._lock = threading.Lock()

    # -- inventory -------------------------------------------------------------------------
    def set_nodes(self, nodes: Sequence[NodeObservation]) -> None:
        with self._lock:
            self._nodes = list(nodes)

    def nodes(self) -> Sequence[NodeObservation]:
        with self._lock:
            return list(self._nodes)

    # -- Executor ----------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> None:
        key = (spec.job_id, spec.attempt)
        with self._lock:
            self.launches.append(key)
            if key in self._attempts:
                return
            out = self._outcome_for(spec)
            now = self.clock()
            ws = []
            for w in spec.workers:
                wk = _Worker(rank=w.rank, node=w.node, launched_at=now, outcome=out,
                             cuda=",".join(str(i) for i in w.gpu_indices))
                wk.log += out.log
                ws.append(wk)
            self._attempts[key] = ws
            self.specs[key] = spec

    def status(self, job_id: str, attempt: int) -> AttemptStatus:
        with self._lock:
            ws = self._attempts.get((job_id, attempt))
            if ws is None:
                return AttemptStatus(job_id, attempt, (), exists=False)
            now = self.clock()
            return AttemptStatus(job_id, attempt, tuple(self._worker_status(w, now) for w in ws))

    def stop(self, job_id: str, attempt: int, grace_s: float, message: str = "",
             reason: str = "stopped") -> None:
        with self._lock:
            self.stops.append((job_id, attempt, grace_s, message, reason))
            now = self.clock()
            for w in self._attempts.get((job_id, attempt), []):
                if self._worker_status(w, now).state is not WorkerState.EXITED:
                    w.forced, w.exit_code, w.ended_at, w.message = WorkerState.EXITED, 143, now, message or "stopped"

    def release(self, job_id: str, attempt: int) -> None:
        with self._lock:
            self.releases.append((job_id, attempt))
            self._attempts.pop((job_id, attempt), None)

    def attempts(self) -> Sequence[tuple[str, int]]:
        with self._lock:
            return list(self._attempts)

    def read_log(self, job_id: str, attempt: int, rank: int, offset: int = 0, max_bytes: int = 1 << 20) -> bytes:
        with self._lock:
            for w in self._attempts.get((job_id, attempt), []):
                if w.rank == rank:
                    return bytes(w.log[offset:offset + max_bytes])
            return b""

    def log_info(self, job_id: str, attempt: int, rank: int) -> dict | None:
        with self._lock:
            return self._log_info.get((job_id, attempt, rank))

    def shutdown(self) -> None:
        with self._lock:
            self._attempts.clear()

    # -- test controls -----------------------------------------------------------------------
    def set_log_info(self, job_id: str, attempt: int, rank: int, info: dict | None) -> None:
        with self._lock:
            self._log_info[(job_id, attempt, rank)] = info

    def write_log(self, job_id: str, attempt: int, rank: int, data: bytes) -> None:
        with self._lock:
            for w in self._attempts[(job_id, attempt)]:
                if w.rank == rank:
                    w.log += data

    def start(self, job_id: str, attempt: int) -> None:
        self._force(job_id, attempt, WorkerState.RUNNING)

    def finish(self, job_id: str, attempt: int, exit_code: int = 0, rank: int | None = None, message: str = "") -> None:
        self._force(job_id, attempt, WorkerState.EXITED, exit_code=exit_code, rank=rank, message=message)

    def lose(self, job_id: str, attempt: int, rank: int | None = None) -> None:
        self._force(job_id, attempt, WorkerState.LOST, rank=rank, message="worker lost")

    def _force(self, job_id, attempt, state, *, exit_code=None, rank=None, message="") -> None:
        with self._lock:
            now = self.clock()
            for w in self._attempts[(job_id, attempt)]:
                if rank is None or w.rank == rank:
                    w.forced, w.message = state, message
                    if state is WorkerState.EXITED:
                        w.exit_code, w.ended_at = exit_code, now

    @staticmethod
    def _worker_status(w: _Worker, now: float) -> WorkerStatus:
        o = w.outcome
        started = w.launched_at + o.start_s
        base = WorkerStatus(rank=w.rank, state=WorkerState.STARTING, node=w.node, cuda_visible_devices=w.cuda,
                            message=w.message)
        if w.forced is WorkerState.EXITED:
            return replace(base, state=WorkerState.EXITED, exit_code=w.exit_code, started_at=min(started, w.ended_at),
                           ended_at=w.ended_at)
        if w.forced is WorkerState.LOST:
            return replace(base, state=WorkerState.LOST)
        if w.forced is WorkerState.RUNNING or now >= started:
            if o.run_s is not None and now >= started + o.run_s and w.forced is None:
                return replace(base, state=WorkerState.EXITED, exit_code=o.exit_code, started_at=started,
                               ended_at=started + o.run_s)
            return replace(base, state=WorkerState.RUNNING, started_at=min(started, now))
        return base
