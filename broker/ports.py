"""Ports: the Protocols through which broker services reach the outside world.

Services depend on these Protocols only; `broker/adapters/` implements them (Ray, podman,
Kubernetes) and `create_app()` wires one implementation in. Fakes live in
`broker/adapters/fake.py` and serve unit tests and load tests; integration tests use the
real adapters.

Invariants every Executor implementation keeps:
- `launch` is idempotent per (job_id, attempt): launching an attempt that already exists is
  a no-op, so a restarted broker or a retried cycle never starts a gang twice.
- workers are named after (job_id, attempt, rank), so a restarted broker re-adopts them
  through `attempts()` and `status()`.
- no method is called inside a DB transaction (they do network I/O).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from scheduler.model import Resources


@dataclass(frozen=True, slots=True)
class NodeObservation:
    """A node as the executor sees it now."""

    id: str  # stable node name used in placements
    hostname: str
    address: str
    pool: str
    gpu_model: str
    capacity: Resources
    alive: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    rank: int
    node: str  # NodeObservation.id the scheduler chose
    gpus: int
    cpus: float
    memory_gb: float
    gpu_indices: tuple[int, ...] = ()  # the scheduler's bookkeeping; the executor reports the real ones


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    job_id: str
    attempt: int
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    runtime: str  # "container" | "process"
    workers: tuple[WorkerLaunch, ...]
    max_runtime_s: float
    grace_s: float = 30.0
    project: str = ""
    # checkpointable jobs: the directory (as the node sees it) that survives attempts; "" = none
    checkpoint_dir: str = ""
    # the cap of each worker's log file in bytes (head and tail kept, see the runner); 0 = none
    log_max_bytes: int = 0
    # project secrets the job named: name -> value, written by the runner to tmpfs files at
    # /run/secrets/NAME (never env, never logged: repr=False keeps them out of any repr)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # datasets: (host path, path in the container, "ro" | "rw"); a process job gets env instead
    mounts: tuple[tuple[str, str, str], ...] = ()
    no_egress: bool = False  # the pool is air-gapped: no network beyond the gang itself
    scratch_dir: str = ""  # per attempt, removed when it ends ("" = none)
    results_dir: str = ""  # per project, survives the job ("" = none)


class WorkerState(str, enum.Enum):
    STARTING = "starting"  # reserved, process not yet running
    RUNNING = "running"
    EXITED = "exited"  # exit_code set
    LOST = "lost"  # the worker (actor / node) vanished without an exit code


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    rank: int
    state: WorkerState
    node: str = ""
    exit_code: int | None = None
    started_at: float | None = None  # epoch seconds the process started
    ended_at: float | None = None
    cuda_visible_devices: str = ""
    message: str = ""  # e.g. "killed after max_runtime", "stopped by cancel"


@dataclass(frozen=True, slots=True)
class AttemptStatus:
    job_id: str
    attempt: int
    workers: tuple[WorkerStatus, ...]
    exists: bool = True  # False: the executor knows nothing of this attempt


class Executor(Protocol):
    """Runs gangs of workers. Ray in production; a fake for unit and load tests."""

    def nodes(self) -> Sequence[NodeObservation]: ...

    def launch(self, spec: LaunchSpec) -> None: ...

    def status(self, job_id: str, attempt: int) -> AttemptStatus: ...

    def stop(self, job_id: str, attempt: int, grace_s: float, message: str = "",
             reason: str = "stopped") -> None:
        """Ask every worker to stop: the notice (reason, message, deadline) first, then SIGTERM,
        then SIGKILL after grace_s. Returns at once. The first call's notice is the one kept."""
        ...

    def release(self, job_id: str, attempt: int) -> None:
        """Free what the attempt holds (runner actors, placement group). Idempotent."""
        ...

    def attempts(self) -> Sequence[tuple[str, int]]:
        """(job_id, attempt) of every attempt the executor holds now."""
        ...

    def read_log(self, job_id: str, attempt: int, rank: int, offset: int = 0, max_bytes: int = 1 << 20) -> bytes: ...

    def log_info(self, job_id: str, attempt: int, rank: int) -> Mapping[str, Any] | None:
        """A capped or failed log's stats (bytes, dropped, truncated, max_bytes, error); None
        when the log was neither (or nothing is known)."""
        ...

    def shutdown(self) -> None: ...


class Clock(Protocol):
    """Seconds as a float, read by calling it: `time.time` where the value is stored or compared
    with stored times (epoch), `time.monotonic` for intervals and cache expiry. Tests pass a
    lambda that returns the `now` they need, so no test sleeps to move time."""

    def __call__(self) -> float: ...
