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

An executor may also tell the broker when an attempt ended (`EndNotifier`, optional): the
scheduling loop otherwise sees an end only at its next tick, and the attempt's GPUs stay
allocated (and charged) until then.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

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
    # a service replica's port: (host port, container port) published on the node's address so
    # the broker's proxy reaches a container in its own network (ignored for processes)
    publish: tuple[tuple[int, int], ...] = ()


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
    """Runs gangs of workers. Ray in production; a fake for unit and load tests. May also be an
    `EndNotifier` (the wiring connects it to the scheduling loop's wake-up when it is)."""

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


OnEnd = Callable[[str, int], None]  # (job_id, attempt) of an attempt that ended


class EndNotifier(Protocol):
    """Optional for an `Executor`: one that knows when its workers end says so at once.

    Invariants: `on_end(job_id, attempt)` is called at least once after a worker of that
    attempt exited or was lost (more often, or for an attempt already released, is harmless: it
    only asks the broker to look); never with a lock held that `status()` needs, and it must
    return quickly (the broker's side only sets a flag). The call is a hint: the broker still
    reads the end itself through `status()`, and still polls on its interval, so an executor
    without this hook (or a missed call) is only slower, never wrong."""

    def set_on_end(self, on_end: OnEnd | None) -> None:
        """Call `on_end` from now on (None: stop calling)."""
        ...


class Clock(Protocol):
    """Seconds as a float, read by calling it: `time.time` where the value is stored or compared
    with stored times (epoch), `time.monotonic` for intervals and cache expiry. Tests pass a
    lambda that returns the `now` they need, so no test sleeps to move time."""

    def __call__(self) -> float: ...


# --------------------------------------------------------------------------- cluster (Kubernetes)
# The cluster the broker runs on, when it runs on one (settings.k8s_enabled). The adapter
# (broker/adapters/k8s) is the only importer of `kubernetes`; services see these types only.

CLUSTER_REASON = "kubernetes: "  # prefix of node states Kubernetes set (the cluster sync may lift them)
SCALE_DOWN_REASON = CLUSTER_REASON + "scale-down: "  # drained by the broker before its pod is removed
# A node dedicated to one approved image (a pod of that image's worker group: docs/KUBERNETES.md)
# carries IMAGE_LABEL=<the image's key> and HOST_LABEL=<the Kubernetes node it runs on>. It runs
# one attempt in its life: the admission that places a worker there drains it with SPENT_REASON
# (no second tenant ever runs in a pod another ran in), and the scaler replaces it once idle.
IMAGE_LABEL = "broker.io/image"
HOST_LABEL = "broker.io/host"
SPENT_REASON = "spent: "


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A node as Kubernetes sees it. `name` is the Kubernetes node name, which is also the
    broker's node id on KubeRay (the worker pods label their Ray node with it)."""

    name: str
    schedulable: bool = True
    reason: str = ""  # why not: "cordoned", "NotReady (KubeletNotReady: ...)", "taint x=y:NoSchedule"
    state: str = "ready"  # scheduler.model.NodeState value the reason maps to
    pool: str = ""
    gpu_model: str = ""
    gpus: int = 0
    gpu_memory_mb: int = 0
    zone: str = ""
    rack: str = ""
    broker_taint: str | None = None  # value of the broker's own taint; None: absent


@dataclass(frozen=True, slots=True)
class ScaleDemand:
    """One pending job that passed quota and budget and waits for capacity."""

    job_id: str
    pools: tuple[str, ...]  # pools it may use
    gpu_models: tuple[str, ...]  # () = any
    gpus_per_worker: int
    workers: int
    image: str = ""  # an approved image's key: only that image's worker group serves it ("" : general groups)


@dataclass(frozen=True, slots=True)
class ScaleInput:
    demands: tuple[ScaleDemand, ...] = ()
    busy_nodes: frozenset[str] = frozenset()  # nodes holding work (placements of holding jobs)
    drained_nodes: frozenset[str] = frozenset()  # nodes the broker drained for a scale-down
    guaranteed_gpus: Mapping[str, float] = field(default_factory=dict)  # per pool: never scale below
    spent_nodes: frozenset[str] = frozenset()  # pods that ran their one attempt (SPENT_REASON): replaced once idle


@dataclass(frozen=True, slots=True)
class ScaleOutcome:
    notes: Mapping[str, str] = field(default_factory=dict)  # job id -> "scaling up: 2 nodes requested at 10:02"
    drain: tuple[str, ...] = ()  # nodes to drain in the broker now (step 1 of a scale-down)
    deleted: tuple[str, ...] = ()  # nodes whose worker pods were named in workersToDelete (step 2)
    undrain: tuple[str, ...] = ()  # drained for a scale-down, but demand came back: return them


@dataclass(frozen=True, slots=True)
class ClusterIdentity:
    """A workload identity Kubernetes vouched for (TokenReview), bound to the pod's node."""

    namespace: str
    service_account: str
    pod: str
    node: str
    expires_at: float | None = None


class Cluster(Protocol):
    """Kubernetes as the broker uses it. Every method may do network I/O: never call one inside
    a DB transaction. `nodes()` reads the watch cache (no request)."""

    def nodes(self) -> Sequence[ClusterNode]: ...

    def set_broker_taint(self, node: str, value: str | None) -> None:
        """Put the broker's own NoSchedule taint on `node` with `value`, or remove it (None).
        Never touches a cordon or another taint. Idempotent."""
        ...

    def autoscale(self, demand: ScaleInput, now: float) -> ScaleOutcome:
        """Scale the RayCluster's worker groups for `demand` (see the adapter's scaling rules)."""
        ...

    def review_token(self, token: str) -> ClusterIdentity | None:
        """TokenReview: the identity of a ServiceAccount token, or None when Kubernetes refuses it."""
        ...
