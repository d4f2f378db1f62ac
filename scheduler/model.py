"""The scheduler's input and output: frozen dataclasses, nothing else.

This module is the contract between the pure scheduling core and everything that calls it
(the broker's scheduling loop, the simulator, the benchmark, capacity planning). The broker
builds a `Snapshot` from its DB and the live node inventory, calls
`scheduler.run_cycle(snapshot, now, policy)`, and applies the `CycleResult`.

Conventions:
- times are float seconds on one clock chosen by the caller (epoch seconds in the broker,
  trace seconds in the simulator); the core never reads a clock.
- ids are strings; a project id and a department id never collide (the broker uses its
  database ids / slugs, the simulator uses trace names).
- resources per worker: `gpus` (whole devices), `cpus` (cores, may be fractional),
  `memory_gb`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Mapping

from quotas.amount import UNLIMITED, ZERO, Amount

RESOURCES: tuple[str, ...] = ("gpus", "cpus", "memory_gb")


class WorkloadClass(str, Enum):
    """operation = clinical production (ordered first, never preempted by innovation)."""

    OPERATION = "operation"
    INNOVATION = "innovation"

    @property
    def rank(self) -> int:
        """Sort key: operation (0) before innovation (1)."""
        return 0 if self is WorkloadClass.OPERATION else 1


class NodeState(str, Enum):
    READY = "ready"
    UNHEALTHY = "unhealthy"  # heartbeats stopped / node lost: receives nothing
    DRAINING = "draining"  # fatal GPU error or admin drain: running work may finish, no new work
    CORDONED = "cordoned"  # admin: no new work

    @property
    def schedulable(self) -> bool:
        return self is NodeState.READY


class Outcome(IntEnum):
    """Ordered fit outcomes: a better outcome compares greater."""

    NO_FIT = 0
    PREEMPT = 1
    FIT = 2


@dataclass(frozen=True, slots=True)
class Resources:
    gpus: int = 0
    cpus: float = 0.0
    memory_gb: float = 0.0

    def get(self, name: str) -> float:
        return getattr(self, name)

    def times(self, k: int) -> "Resources":
        return Resources(self.gpus * k, self.cpus * k, self.memory_gb * k)


@dataclass(frozen=True, slots=True)
class Flavor:
    """The unit quota is counted in, like Kueue's ResourceFlavor: (pool, GPU model)."""

    pool: str
    gpu_model: str


@dataclass(frozen=True, slots=True)
class Pool:
    """A named group of nodes.

    `workload_class` says whose capacity it is. An `operation` pool with
    `lend_to_innovation=True` lets innovation jobs use idle capacity, always as preemptible
    work that operation reclaims within one cycle.
    """

    name: str
    workload_class: WorkloadClass
    lend_to_innovation: bool = False


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    pool: str
    gpu_model: str  # "" for CPU-only nodes
    capacity: Resources
    state: NodeState = NodeState.READY
    state_reason: str = ""
    # "" : a general node. Otherwise the node is dedicated to the jobs of one approved image (a
    # Kubernetes pod that runs that image beside the Ray worker): it takes only jobs with the
    # same `Job.image`, and one worker at most, so two jobs never share one pod.
    image: str = ""

    @property
    def flavor(self) -> Flavor:
        return Flavor(self.pool, self.gpu_model)


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """One tree node's quota for one flavor and resource.

    Invariant (validated by quotas.tree): guaranteed <= nominal <= limit.
    A project/department with no QuotaSpec for a flavor+resource has guaranteed 0,
    nominal 0 and limit unlimited: it may only borrow idle capacity.
    """

    guaranteed: Amount = ZERO
    nominal: Amount = ZERO
    limit: Amount = UNLIMITED


@dataclass(frozen=True, slots=True)
class Department:
    id: str
    name: str = ""
    weight: float = 1.0
    budget_gpu_hours: Amount = UNLIMITED  # per period
    spent_gpu_hours: float = 0.0  # finished + elapsed part of running, this period
    # quotas[(flavor, resource)] -> QuotaSpec
    quotas: Mapping[tuple[Flavor, str], QuotaSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    department: str
    weight: float = 1.0
    budget_gpu_hours: Amount = UNLIMITED
    spent_gpu_hours: float = 0.0
    # Decayed past GPU usage (GPU-seconds, already decayed to the snapshot time by the
    # caller with quotas.fairshare.decay); feeds fair-share ordering.
    decayed_usage_gpu_s: float = 0.0
    quotas: Mapping[tuple[Flavor, str], QuotaSpec] = field(default_factory=dict)
    # Real / requested runtime of the project's finished attempts (the broker learns it from the
    # ledger; 1.0 when unknown). Backfill reservations and estimated starts use
    # max_runtime_s x this ratio; budget reservations never do (budgets must not be overrun).
    runtime_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the scheduler sees it (pending or running)."""

    id: str
    project: str
    workload_class: WorkloadClass = WorkloadClass.INNOVATION
    priority: int = 0
    submit_time: float = 0.0  # original submit; a preempted job keeps it
    workers: int = 1
    per_worker: Resources = Resources(gpus=1)
    gpu_models: tuple[str, ...] = ()  # empty: any model
    pool: str | None = None  # pin to one pool; None: any pool its class may use
    max_runtime_s: float = 3600.0
    # Saves its state and resumes from it: a preemption costs it only the work since its last
    # checkpoint (`Running.checkpoint_time`), so it is the cheaper victim.
    checkpointable: bool = False
    # Only these nodes hold the data the job mounts (datasets on named nodes); empty: any node.
    nodes: frozenset[str] = frozenset()
    # The approved image whose dedicated nodes run this job (`Node.image`); "" : general nodes
    # only. A job never lands on a node dedicated to another image, nor an image job on a
    # general node.
    image: str = ""
    # How often this job was preempted before (the broker counts its preempted attempts): once
    # it reaches `Policy.reclaim_exempt_after`, reclaim between innovation projects leaves it
    # alone, so one job is not thrown back and forth (operation reclaim still may take it).
    preemptions: int = 0
    # False: never a preemption victim, whatever the kind (an operation service's first `min`
    # replicas: production inference must never starve).
    preemptible: bool = True
    # True: admitted whatever the budget says (an operation service's `min` replicas are never
    # stopped nor kept waiting for budget; the GPU-hours still count, so the overrun shows in
    # the ledger, the reports and the budget alerts).
    budget_exempt: bool = False
    # A service replica (runs until its service changes, not to an end): never overflows into
    # another class's pools (`Policy.operation_overflow`).
    service: bool = False

    @property
    def total(self) -> Resources:
        return self.per_worker.times(self.workers)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one worker of a gang runs."""

    rank: int
    node: str
    gpu_indices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Running:
    """A job that holds resources now (admitted, starting or running)."""

    job: Job
    placements: tuple[Placement, ...]
    start_time: float
    flavor: Flavor
    # True when admitted on borrowed / lent capacity (above the project's nominal, or
    # innovation work on an operation pool): such work may be preempted to reclaim it.
    borrowing: bool = False
    # The last checkpoint the broker knows of for this attempt (None: none since start_time).
    # Only read for checkpointable jobs: what a preemption would throw away starts there.
    checkpoint_time: float | None = None

    def work_at_risk_s(self, now: float) -> float:
        """Seconds of this attempt's work that a preemption at `now` would throw away."""
        since = self.start_time
        if self.job.checkpointable and self.checkpoint_time is not None and self.checkpoint_time > since:
            since = self.checkpoint_time
        return max(0.0, now - since)


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: tuple[Node, ...]
    pools: tuple[Pool, ...]
    departments: tuple[Department, ...]
    projects: tuple[Project, ...]
    running: tuple[Running, ...] = ()
    pending: tuple[Job, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """What a cycle may do. Presets in `POLICIES`; the field defaults are the default
    preset's (`Policy()` behaves as `POLICIES["fair-backfill-preempt"]`)."""

    name: str = "fair-backfill-preempt"
    strict_fifo: bool = False  # arrival order, head-of-line blocking, no quota/backfill/preemption
    fair_share: bool = True
    backfill: bool = True
    preemption: bool = True
    priority_preemption: bool = False  # within a project, higher priority preempts lower
    fair_share_half_life_s: float = 7 * 24 * 3600.0
    max_admissions: int | None = None  # cap per cycle (None: unbounded)
    # explain=False skips messages, details and estimated starts for jobs that stay pending
    # (their code is still set): the simulator and benchmarks at scale use it.
    explain: bool = True
    # -- work-aware preemption between innovation projects (operation reclaim ignores these) --
    # Hysteresis: an innovation job takes back its project's nominal from other innovation
    # projects only once it has waited this long (a brief demand peak waits for capacity to
    # free instead of throwing running work away).
    reclaim_after_s: float = 3600.0
    # Minimum runtime: an innovation job is no victim of an innovation reclaim before it has
    # run this long (each attempt makes progress; no thrashing).
    min_runtime_s: float = 900.0
    # A victim of an innovation reclaim never loses more work (seconds since its start or last
    # checkpoint) than the preemptor has waited: a preemption must not cost more than it saves.
    # The same bound in GPU-seconds on the resource the preemptor needs: the victim's work at
    # risk x its GPUs never exceeds the preemptor's wait x its GPUs (one 1-GPU job that waited
    # a day must not throw away a day of a 32-GPU gang).
    lost_work_bounded_by_wait: bool = True
    # A job already preempted this many times is no victim of an innovation reclaim (each
    # restart loses work; without it two projects hand the same capacity back and forth and one
    # job restarts dozens of times). 0: no exemption.
    reclaim_exempt_after: int = 2
    loss_gpu_weighted: bool = True
    # ... and never more than the preemptor would still wait for the flavor's running jobs to
    # free its GPUs at their expected ends (a preemption must not cost more than it saves).
    loss_bounded_by_release: bool = True
    # Lent operation-pool capacity goes only to innovation work that loses little when
    # operation reclaims it: checkpointable jobs, or jobs expected to use at most this many
    # GPU-hours (GPUs x max_runtime_s x the project's runtime ratio: a day of one GPU, three
    # hours of an 8-GPU node). inf: lend to any job. Why 24 and not more or less: measured
    # flat between 16 and 48 on 27 traces (docs/scheduling-policy.md); without a limit, long
    # jobs on lent capacity were reclaimed again and again on small clusters with much
    # operation work (up to 7 % of the GPU-seconds thrown away).
    lend_max_gpu_hours: float = 24.0
    # -- no starvation --
    # Backfill reserves capacity only for a job that has waited at least this long (0: the
    # first capacity-blocked job of each pool, classic EASY; inf: never). A reservation holds
    # GPUs idle on padded runtime requests, so reserving for every head costs the many small
    # jobs more than it gives; reserving for jobs that have waited long bounds the tail.
    reserve_after_s: float = float("inf")
    # The longest-waiting job(s), once past this wait, are ordered by submit time ahead of the
    # fair-share order (within class and priority), so each becomes its pool's backfill head
    # and holds a reservation in turn: waits are bounded whatever the project's share.
    aging_after_s: float = float("inf")
    aged_jobs: int = 1  # at most this many (the longest-waiting) are aged at once
    # Starvation bound relative to the load: a job is aged only once its wait also exceeds this
    # factor x the backlog's drain time (the GPU-seconds of the visible queue and of what runs,
    # at expected runtimes, over the cluster's ready GPUs: how long strict arrival order would
    # need to start everything waiting now). 0: the fixed `aging_after_s` alone.
    aging_backlog_factor: float = 0.0
    # Aged jobs hold their pool's backfill reservation whatever `reserve_after_s` says.
    reserve_aged: bool = False
    # -- operation bursts --
    # An operation job that finds its operation pools full of operation work (or whose reclaim
    # of lent capacity would throw away more work than it will use) may start on idle capacity
    # of innovation pools instead of waiting. It is never a victim of innovation work there, so
    # innovation lends to operation as operation lends to innovation: only short work (expected
    # GPU-hours within `lend_max_gpu_hours`), never a service replica (it runs for months).
    operation_overflow: bool = True


_INF = float("inf")
POLICIES: Mapping[str, Policy] = {
    # The baselines keep their semantics: no operation overflow, lending to any job.
    "fifo": Policy(name="fifo", strict_fifo=True, fair_share=False, backfill=False, preemption=False,
                   operation_overflow=False, lend_max_gpu_hours=_INF),
    "fair": Policy(name="fair", backfill=False, preemption=False, operation_overflow=False, lend_max_gpu_hours=_INF),
    "fair-backfill": Policy(name="fair-backfill", preemption=False, reserve_after_s=0.0, operation_overflow=False,
                            lend_max_gpu_hours=_INF),
    # Reservations and aging are off in the default: both were measured to cost the average
    # wait far more than they gain on the maximum (docs/scheduling-policy.md).
    "fair-backfill-preempt": Policy(name="fair-backfill-preempt"),
    # The default plus a starvation bound relative to the load: a job that has waited past 6 h
    # and past the backlog's drain time goes first (by submit time) and holds its pool's
    # reservation. Bounds the maximum wait near fifo's at a cost in the average wait
    # (measured in docs/scheduling-policy.md), so not the default.
    "fair-backfill-preempt-bounded": Policy(name="fair-backfill-preempt-bounded", aging_after_s=6 * 3600.0,
                                            aging_backlog_factor=1.0, aged_jobs=1 << 30, reserve_aged=True),
}


class ReasonCode(str, Enum):
    QUOTA_LIMIT = "QUOTA_LIMIT"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    NO_CAPACITY = "NO_CAPACITY"
    FRAGMENTED = "FRAGMENTED"
    GPU_MODEL_UNAVAILABLE = "GPU_MODEL_UNAVAILABLE"
    WAITING_FOR_HIGHER_PRIORITY = "WAITING_FOR_HIGHER_PRIORITY"
    BACKFILL_RESERVATION = "BACKFILL_RESERVATION"
    PREEMPTING = "PREEMPTING"  # victims were chosen; starts once they have stopped
    NEVER_FITS = "NEVER_FITS"  # no node of its pools could ever hold one worker
    DATA_UNAVAILABLE = "DATA_UNAVAILABLE"  # no ready node of its pools holds the data it mounts


@dataclass(frozen=True, slots=True)
class PendingReason:
    code: ReasonCode
    message: str  # one sentence a clinician-researcher understands
    details: Mapping[str, object] = field(default_factory=dict)  # requested, free, limit, ...
    queue_position: int | None = None  # 1-based within the cycle's order
    estimated_start: float | None = None  # on the caller's clock


@dataclass(frozen=True, slots=True)
class Admission:
    job_id: str
    flavor: Flavor
    placements: tuple[Placement, ...]
    borrowing: bool = False


@dataclass(frozen=True, slots=True)
class Preemption:
    job_id: str  # the victim
    for_job_id: str  # the job it makes room for
    code: str  # RECLAIM_OPERATION | RECLAIM_NOMINAL | PRIORITY
    message: str


@dataclass(frozen=True, slots=True)
class CycleStats:
    pending_considered: int = 0
    admitted: int = 0
    preempted: int = 0
    still_pending: int = 0


@dataclass(frozen=True, slots=True)
class CycleResult:
    admissions: tuple[Admission, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
    pending: Mapping[str, PendingReason] = field(default_factory=dict)
    stats: CycleStats = CycleStats()
