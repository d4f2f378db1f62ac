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
- `set_on_end(on_end)` (`broker.ports.EndNotifier`): `finish`, `lose` and `stop` call it at once;
  a scripted end (`run_s`) calls it when its time passes, from one timer thread (a heap of end
  times, started with the first such launch, stopped by `shutdown`), but only when the clock is
  the real `time.time`: an injected clock does not move by itself, so with one nothing is
  called behind the test's back and the workers end only when the test looks.

Invariants (same as the real adapter): launch is idempotent per (job_id, attempt); status of an
unknown attempt has exists=False; read_log never raises for a known attempt.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from broker.ports import AttemptStatus, Clock, LaunchSpec, NodeObservation, OnEnd, WorkerState, WorkerStatus
from scheduler.model import Resources

log = logging.getLogger("broker.adapters.fake")


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
        self._on_end: OnEnd | None = None
        self._ends = _EndTimer(self._due)  # scripted ends on the real clock

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
            timed = self.clock is time.time and out.run_s is not None
        if timed:
            self._ends.add(now + out.start_s + out.run_s, key)

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
            ended = False
            for w in self._attempts.get((job_id, attempt), []):
                if self._worker_status(w, now).state is not WorkerState.EXITED:
                    w.forced, w.exit_code, w.ended_at, w.message = WorkerState.EXITED, 143, now, message or "stopped"
                    ended = True
        if ended:
            self._ended(job_id, attempt)

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
        self._ends.stop()
        with self._lock:
            self._attempts.clear()

    # -- EndNotifier -------------------------------------------------------------------------
    def set_on_end(self, on_end: OnEnd | None) -> None:
        self._on_end = on_end

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
        if state is not WorkerState.RUNNING:
            self._ended(job_id, attempt)

    def _ended(self, job_id: str, attempt: int) -> None:
        """Tell the broker; outside the lock (the hook may look at the executor)."""
        on_end = self._on_end
        if on_end is None:
            return
        try:
            on_end(job_id, attempt)
        except Exception:  # the broker's side failing must not break a test control or the timer
            log.exception("on_end(%s, %s) failed", job_id, attempt)

    def _due(self, key: tuple[str, int]) -> None:
        """The timer's call: a scripted end passed. An attempt released (or forced to an end,
        which told already) in the meantime is not told again."""
        with self._lock:
            ws = self._attempts.get(key)
            if ws is None or all(w.forced is not None for w in ws):
                return
        self._ended(*key)

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


class _EndTimer:
    """One daemon thread that calls `due(key)` when each added end time (epoch, `time.time`)
    has passed, in time order. Started by the first `add`, stopped (and joined) by `stop`; an
    `add` after `stop` starts a new one. Keys due together are called one after another: the
    broker's wake-up coalesces them."""

    def __init__(self, due: Callable[[tuple[str, int]], None]) -> None:
        self._due = due
        self._heap: list[tuple[float, tuple[str, int]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._generation = 0  # a thread runs while this is the value it was started with

    def add(self, at: float, key: tuple[str, int]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (at, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(self._generation,),
                                                name="fake-executor-ends", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == key:  # a new earliest end: the sleeper must wake sooner
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            thread, self._thread = self._thread, None
            self._generation += 1
            self._heap.clear()
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self, generation: int) -> None:
        while True:
            with self._cond:
                while generation == self._generation and (not self._heap or self._heap[0][0] > time.time()):
                    self._cond.wait(self._heap[0][0] - time.time() if self._heap else None)
                if generation != self._generation:
                    return
                now, keys = time.time(), []
                while self._heap and self._heap[0][0] <= now:
                    keys.append(heapq.heappop(self._heap)[1])
            for key in keys:  # outside the condition: `due` takes the executor's lock
                self._due(key)
