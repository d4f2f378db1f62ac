"""Build the scheduler's `Snapshot` from DB rows.

Why a separate module: the conversion from rows to the core's frozen dataclasses is the one
place where broker vocabulary (tables, JSON columns, "" meaning "any model") meets the pure
core's, and it is tested on its own. Nothing here opens a session or reads a clock: callers
pass rows and `now`.

Choices where the issues are silent:
- a quota row with gpu_model "" applies to every GPU model present in its pool (the same
  figures for each flavor), so a region with one model per pool configures quotas per pool;
- budget periods are calendar months (UTC); `spent` counts the part of each ledger row inside
  the current month, running attempts up to `now`;
- decayed usage (fair share) integrates every ledger row with the policy's half-life, looking
  back at most eight half-lives (older use weighs < 0.4 %);
- a project's runtime ratio (real / requested runtime, for backfill reservations and estimated
  starts, never budgets) is `runtime_ratio` of its recent finished attempts; the last checkpoint
  of a running checkpointable job is what the caller found in its checkpoint directory.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from typing import Callable, Iterable, Mapping, Sequence

from broker.models import Department as DepartmentRow
from broker.models import Job as JobRow
from broker.models import JobStatus, Ledger
from broker.models import Node as NodeRow
from broker.models import Placement as PlacementRow
from broker.models import Pool as PoolRow
from broker.models import Project as ProjectRow
from broker.models import QuotaRow
from broker.ports import IMAGE_LABEL
from quotas.amount import UNLIMITED, Amount
from quotas.fairshare import accumulate, decay
from scheduler.model import (
    Department, Flavor, Job, Node, NodeState, Placement, Pool, Project, QuotaSpec, Resources,
    Running, Snapshot, WorkloadClass,
)

_PENDING = JobStatus.PENDING.value  # (an enum member's .value is a slow descriptor in a per-job loop)

LOOKBACK_HALF_LIVES = 8
# Runtime ratio: the median over a project's last RATIO_WINDOW finished attempts, known once it
# has RATIO_MIN_SAMPLES of them (1.0 before: plan with the full request), clamped so that a
# project of quick exits is never planned as taking no time at all.
RATIO_WINDOW, RATIO_MIN_SAMPLES, RATIO_FLOOR = 100, 5, 0.05


def month_start(now: float) -> float:
    """Start of the current budget period (calendar month, UTC) as epoch seconds."""
    d = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc)
    return dt.datetime(d.year, d.month, 1, tzinfo=dt.timezone.utc).timestamp()


def lookback_start(now: float, half_life_s: float) -> float:
    return min(month_start(now), now - LOOKBACK_HALF_LIVES * half_life_s)


# A service replica runs until its service changes; budgets reserve one accrual period of it
# ahead (rolling), not its 30-day runner bound: see `replica_horizon`.
SERVICE_BUDGET_HORIZON_S = 3600.0


def replica_horizon(row: JobRow, now: float | None) -> float:
    """The runtime the core plans a job with: its max_runtime_s, except for a service replica:
    what it has run so far plus one accrual period (budget reservations, backfill and ETAs)."""
    if getattr(row, "service_id", None) is None or now is None:
        return row.max_runtime_s
    start = row.started_at or row.admitted_at
    ran = max(0.0, now - start) if start is not None and row.status != JobStatus.PENDING.value else 0.0
    return min(row.max_runtime_s, ran + SERVICE_BUDGET_HORIZON_S)


def to_job(row: JobRow, pool_nodes: Mapping[str, Sequence[str]] | None = None, preemptions: int = 0,
           now: float | None = None, images: Mapping[str, str] | None = None) -> Job:
    """`images`: approved image reference -> its key: a container job of such an image runs
    only on the nodes dedicated to it (`Node.image`), any other job only on general nodes."""
    image = image_key(row, images)
    return Job(
        id=row.id, project=row.project_id, workload_class=WorkloadClass(row.workload_class),
        priority=row.priority, submit_time=row.submit_time, workers=row.workers,
        per_worker=Resources(row.gpus, row.cpus, row.memory_gb), gpu_models=tuple(row.gpu_models or ()),
        pool=row.pool, max_runtime_s=replica_horizon(row, now),
        # a pod per image has no checkpoint directory (yet): a preemption there loses everything
        checkpointable=bool(row.checkpointable) and not image,
        nodes=data_nodes(row.mounts, pool_nodes or {}) if getattr(row, "mounts", None) else frozenset(),
        preemptions=preemptions, preemptible=getattr(row, "preemptible", True) is not False,
        # an operation service's min replicas (the only rows marked not preemptible) never wait for budget
        budget_exempt=getattr(row, "preemptible", True) is False and row.workload_class == WorkloadClass.OPERATION.value,
        service=getattr(row, "service_id", None) is not None,
        image=image,
    )


def image_key(row: JobRow, images: Mapping[str, str] | None) -> str:
    """The key of the approved image a job runs in (its pods per image), "" for any other job."""
    return images.get(row.image, "") if images and row.runtime == "container" else ""


def data_nodes(mounts: Sequence[Mapping], pool_nodes: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """The nodes that hold every dataset a job mounts (named nodes, or the nodes of named pools;
    a shared dataset is everywhere). When none does, the names of where the data lives stand in
    (they match no node, so the job waits with DATA_UNAVAILABLE naming them)."""
    allowed: frozenset[str] | None = None
    where: list[str] = []
    for m in mounts:
        names, pools = list(m.get("nodes") or ()), list(m.get("pools") or ())
        if not names and not pools:
            continue  # shared: on every node
        here = frozenset(names) | frozenset(n for p in pools for n in pool_nodes.get(p, ()))
        where += names + [f"pool {p}" for p in pools]
        allowed = here if allowed is None else allowed & here
    if allowed is None:
        return frozenset()
    return allowed or frozenset(where)


def runtime_ratio(samples: Iterable[tuple[float, float]]) -> float:
    """Real / requested runtime of one project from (runtime_s, max_runtime_s) of its finished
    attempts, newest first: the median of the newest RATIO_WINDOW, in [RATIO_FLOOR, 1]; 1.0 with
    fewer than RATIO_MIN_SAMPLES. The median: one job killed at its limit or one that failed at
    once must not move the plan of a project that usually runs a third of its request."""
    ratios = [min(1.0, max(0.0, ran) / req) for ran, req in samples if req > 0][:RATIO_WINDOW]
    if len(ratios) < RATIO_MIN_SAMPLES:
        return 1.0
    return max(RATIO_FLOOR, min(1.0, statistics.median(ratios)))


def to_node(row: NodeRow) -> Node:
    raw, reason = row.effective_state()
    try:
        state = NodeState(raw)
    except ValueError:
        state = NodeState.UNHEALTHY
    return Node(id=row.id, pool=row.pool, gpu_model=row.gpu_model,
                capacity=Resources(row.gpus, row.cpus, row.memory_gb), state=state, state_reason=reason,
                image=(row.labels or {}).get(IMAGE_LABEL, ""))


def _quotas(rows: Sequence[QuotaRow], models_by_pool: Mapping[str, Sequence[str]]
            ) -> dict[tuple[str, str], dict[tuple[Flavor, str], QuotaSpec]]:
    out: dict[tuple[str, str], dict[tuple[Flavor, str], QuotaSpec]] = defaultdict(dict)
    for q in rows:
        spec = QuotaSpec(Amount.of(q.guaranteed), Amount.of(q.nominal),
                         UNLIMITED if q.limit is None else Amount.of(q.limit))
        models = [q.gpu_model] if q.gpu_model else list(models_by_pool.get(q.pool, ())) or [""]
        for m in models:
            out[(q.owner_kind, q.owner_id)][(Flavor(q.pool, m), q.resource)] = spec
    return out


def usage_from_ledger(rows: Sequence[Ledger], now: float, half_life_s: float
                      ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(spent GPU-hours this month per project, per department, decayed GPU-seconds per project)."""
    period = month_start(now)
    spent_p: dict[str, float] = defaultdict(float)
    spent_d: dict[str, float] = defaultdict(float)
    decayed: dict[str, float] = defaultdict(float)
    for r in rows:
        end = now if r.ended_at is None else min(r.ended_at, now)
        if end <= r.started_at or r.gpus <= 0:
            continue
        in_period, acc = row_usage(r.gpus, r.started_at, end, period, half_life_s)
        spent_p[r.project_id] += in_period
        spent_d[r.department_id] += in_period
        decayed[r.project_id] += decay(acc, now - end, half_life_s)
    return dict(spent_p), dict(spent_d), dict(decayed)


def row_usage(gpus: int, start: float, end: float, period: float, half_life_s: float) -> tuple[float, float]:
    """One ledger row held from `start` to `end` (end > start): (GPU-hours inside the budget
    period that starts at `period`, decayed GPU-seconds as of `end`). The one formula both
    `usage_from_ledger` and the loop's running sums (`ledger_usage`) use."""
    return max(0.0, end - max(start, period)) * gpus / 3600.0, accumulate(0.0, gpus, end - start, half_life_s)


def build_snapshot(
    *, now: float, half_life_s: float, departments: Sequence[DepartmentRow], projects: Sequence[ProjectRow],
    pools: Sequence[PoolRow], nodes: Sequence[NodeRow], quotas: Sequence[QuotaRow],
    holding: Sequence[JobRow], placements: Mapping[tuple[str, int], Sequence[PlacementRow]],
    pending: Sequence[JobRow], ledger: Sequence[Ledger],
    runtime_ratios: Mapping[str, float] | None = None, checkpoints: Mapping[str, float] | None = None,
    preemptions: Mapping[str, int] | None = None,
    cached: Callable[[JobRow, Callable[[JobRow], Job]], Job] | None = None,
    usage: tuple[Mapping[str, float], Mapping[str, float], Mapping[str, float]] | None = None,
    images: Mapping[str, str] | None = None,
) -> Snapshot:
    """Rows in, Snapshot out. Jobs that hold resources become `Running` with their placements;
    a holding job without placements (should not happen) is skipped rather than guessed.
    `runtime_ratios`: per project (default 1.0); `checkpoints`: job id -> time of its newest
    checkpoint (only read for checkpointable jobs); `preemptions`: job id -> its preempted
    attempts (running jobs; spares a job preempted often from innovation reclaims);
    `cached(row, convert)`: the pending rows' conversion kept between ticks (not used for a job
    that mounts data: where the data is depends on the nodes of the moment); `usage`: what
    `usage_from_ledger(ledger, now, half_life_s)` says, when the caller keeps it (the loop's
    `ledger_usage.LedgerUsage`; `ledger` is not read then); `images`: approved image reference
    -> key (`to_job`)."""
    runtime_ratios, checkpoints, preemptions = runtime_ratios or {}, checkpoints or {}, preemptions or {}
    models_by_pool: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        if n.gpu_model and n.gpu_model not in models_by_pool[n.pool]:
            models_by_pool[n.pool].append(n.gpu_model)
    quota = _quotas(quotas, models_by_pool)
    pool_nodes: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        pool_nodes[n.pool].append(n.id)
    spent_p, spent_d, decayed = usage if usage is not None else usage_from_ledger(ledger, now, half_life_s)

    deps = tuple(
        Department(id=d.id, name=d.name, weight=d.weight,
                   budget_gpu_hours=Amount.of(d.budget_gpu_hours), spent_gpu_hours=spent_d.get(d.id, 0.0),
                   quotas=quota.get(("department", d.id), {}))
        for d in departments
    )
    projs = tuple(
        Project(id=p.id, department=p.department_id, weight=p.weight,
                budget_gpu_hours=Amount.of(p.budget_gpu_hours), spent_gpu_hours=spent_p.get(p.id, 0.0),
                decayed_usage_gpu_s=decayed.get(p.id, 0.0), quotas=quota.get(("project", p.id), {}),
                runtime_ratio=runtime_ratios.get(p.id, 1.0))
        for p in projects
    )
    def pending_job(j: JobRow) -> Job:
        return to_job(j, pool_nodes, now=now, images=images)

    def convert(j: JobRow) -> Job:
        return pending_job(j) if cached is None or getattr(j, "mounts", None) else cached(j, pending_job)

    running = []
    for j in holding:
        pls = placements.get((j.id, j.attempt), ())
        if not pls:
            continue
        start = j.started_at or j.admitted_at or now
        running.append(Running(
            job=to_job(j, pool_nodes, preemptions.get(j.id, 0), now, images), placements=tuple(Placement(p.rank, p.node_id, tuple(p.gpu_indices or ())) for p in pls),
            start_time=start, flavor=Flavor(j.flavor_pool or "", j.flavor_gpu_model or ""), borrowing=j.borrowing,
            checkpoint_time=checkpoints.get(j.id) if j.checkpointable else None,
        ))
    return Snapshot(
        nodes=tuple(to_node(n) for n in nodes),
        pools=tuple(Pool(p.name, WorkloadClass(p.workload_class), p.lend_to_innovation) for p in pools),
        departments=deps, projects=projs, running=tuple(running),
        pending=tuple(convert(j) for j in pending if j.status == _PENDING),
    )
