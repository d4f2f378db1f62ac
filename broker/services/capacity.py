"""Capacity what-if: the region's own history replayed on changed hardware or quotas.

`export_trace` writes the recorded history as a canonical trace (`scheduler.sim.traces`):
one line per job submitted in the window that ran to its end (SUCCEEDED or FAILED), with its
submit time (seconds from the window's start), real duration, GPUs, workers, CPUs and memory
(totals over the gang), project, class, priority, max runtime, checkpointable, and the GPU
model it asked for (empty: any). The real duration is what its GPUs were held for: the
final attempt's ledger interval, plus the earlier attempts' for a checkpointable job (they
kept their work). Jobs cancelled before they ran, and jobs still running, are left out (their
real duration is not known).

`whatif` replays that trace twice with the simulator (`scheduler.sim`), once on the live
inventory and quota tree and once with the asked changes (`--add` / `--remove` node groups,
a quota file), and reports per department and class the wait percentiles and the
utilization before and after, plus the queue over time as an SVG (`capacity_svg`).

How the live region reaches the simulator: the inventory becomes node groups (one per pool,
GPU model and node size); the quota tree is the broker's own (`broker.services.snapshot`'s
conversion of departments, projects and quota rows), pools keep their class and lending rule,
and the policy is the broker's. Budgets are left out of the replay (they are monthly
and a replay of weeks starts with nothing spent). The simulator builds its own synthetic tree
at construction; `_replay` swaps in the live one before it runs (the same project ids: those of
the trace), which is the one place this module reaches inside `scheduler.sim`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional, Sequence

from sqlalchemy import select
from sqlmodel import Session

from broker.errors import Invalid
from broker.models import Department as DepartmentRow
from broker.models import Job, Ledger, Node as NodeRow, Pool as PoolRow, Project as ProjectRow, QuotaRow
from broker.services.snapshot import build_snapshot
from quotas.amount import UNLIMITED
from scheduler.model import Department, Policy, Pool, Project, WorkloadClass
from scheduler.sim import simulate as sim
from scheduler.sim.cluster import NodeGroup, ReplayError
from scheduler.sim.metrics import PERCENTILES, JobOutcome, percentile
from scheduler.sim.traces import TraceError, TraceJob, estimate_max_runtime, parse_lines

HEADER = ("job_id", "submit_time", "duration", "gpus", "project", "workers", "cpus", "memory_gb", "gpu_model",
          "class", "priority", "max_runtime", "checkpointable")
ENDED = ("SUCCEEDED", "FAILED")
MAX_WEEKS = 26
UNKNOWN_DEPARTMENT = "(unknown)"


@dataclass(frozen=True)
class Recorded:
    """One exported job and what really happened to it (for the fidelity comparison)."""

    job: TraceJob
    department: str
    wait_s: float  # first admission - submit


# --------------------------------------------------------------------------- export


def recorded_jobs(engine, start: float, end: float) -> list[Recorded]:
    """Jobs submitted in [start, end) that ran to their end, in submit order (see module doc)."""
    with Session(engine) as s:
        jobs = s.execute(select(Job, ProjectRow.department_id).join(ProjectRow, ProjectRow.id == Job.project_id)
                         .where(Job.submit_time >= start, Job.submit_time < end, Job.status.in_(ENDED))
                         .order_by(Job.submit_time, Job.id)).all()
        ids = [j.id for j, _ in jobs]
        ledger: dict[str, list[Ledger]] = defaultdict(list)
        for i in range(0, len(ids), 500):
            for led in s.execute(select(Ledger).where(Ledger.job_id.in_(ids[i:i + 500]))).scalars():
                ledger[led.job_id].append(led)
    out = []
    for j, dept in jobs:
        rows = sorted((r for r in ledger.get(j.id, ()) if r.ended_at is not None), key=lambda r: r.attempt)
        if not rows:
            continue  # failed before it ever held GPUs
        last = rows[-1]
        duration = sum(r.ended_at - r.started_at for r in rows) if j.checkpointable else last.ended_at - last.started_at
        gpus = j.gpus * j.workers
        if gpus < 1 or duration <= 0:
            continue  # CPU-only work: the simulator replays GPU queues
        tj = TraceJob(id=j.id, submit_time=round(j.submit_time - start, 3), duration=round(duration, 3), gpus=gpus,
                      project=j.project_id, workers=j.workers, cpus=j.cpus * j.workers,
                      memory_gb=j.memory_gb * j.workers, gpu_model=(j.gpu_models or [""])[0] if len(j.gpu_models or []) == 1 else "",
                      workload_class=WorkloadClass(j.workload_class), priority=j.priority,
                      max_runtime=j.max_runtime_s or estimate_max_runtime(duration), checkpointable=bool(j.checkpointable))
        out.append(Recorded(tj, dept, max(0.0, rows[0].started_at - j.submit_time)))
    return out


def trace_csv(jobs: Iterable[TraceJob]) -> str:
    """The canonical CSV of `jobs` (what `python -m scheduler.simulate --trace` reads)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for t in jobs:
        w.writerow([t.id, f"{t.submit_time:.3f}", f"{t.duration:.3f}", t.gpus, t.project, t.workers or "",
                    f"{t.cpus:g}", f"{t.memory_gb:g}", t.gpu_model, t.workload_class.value, t.priority,
                    f"{t.max_runtime:g}", "true" if t.checkpointable else "false"])
    return buf.getvalue()


def read_trace(text: str) -> list[TraceJob]:
    try:
        return parse_lines(text.splitlines())
    except TraceError as e:
        raise Invalid(f"trace: {e}", code="BAD_TRACE") from None


# --------------------------------------------------------------------------- the live region


def parse_group(spec: str) -> NodeGroup:
    """'pool=innovation,model=H100,gpus_per_node=8,nodes=2' -> a node group (class from the
    pool, or `class=`)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise Invalid(f"expected key=value pairs, got {part!r} in {spec!r}", code="BAD_NODE_GROUP")
        fields[k.strip()] = v.strip()
    unknown = set(fields) - {"pool", "model", "gpu_model", "gpus_per_node", "nodes", "class", "cpus_per_node",
                             "memory_gb_per_node"}
    if unknown or "pool" not in fields or "nodes" not in fields:
        raise Invalid(f"{spec!r}: needs pool= and nodes= (and model=, gpus_per_node=); unknown: "
                      f"{', '.join(sorted(unknown)) or 'none'}", code="BAD_NODE_GROUP")
    try:
        nodes, gpn = int(fields["nodes"]), int(fields.get("gpus_per_node", "8"))
        cpus = float(fields["cpus_per_node"]) if "cpus_per_node" in fields else None
        mem = float(fields["memory_gb_per_node"]) if "memory_gb_per_node" in fields else None
        klass = WorkloadClass(fields["class"]) if "class" in fields else None
    except ValueError as e:
        raise Invalid(f"{spec!r}: {e}", code="BAD_NODE_GROUP") from None
    if not (1 <= nodes <= 10_000 and 1 <= gpn <= 64):
        raise Invalid(f"{spec!r}: nodes must be 1..10000 and gpus_per_node 1..64", code="BAD_NODE_GROUP")
    return NodeGroup(pool=fields["pool"], gpu_model=fields.get("model") or fields.get("gpu_model") or "gpu",
                     gpus_per_node=gpn, nodes=nodes, workload_class=klass or WorkloadClass.INNOVATION,
                     cpus_per_node=cpus, memory_gb_per_node=mem)


@dataclass(frozen=True)
class Region:
    """The live inventory and quota tree, as the simulator takes them."""

    groups: tuple[NodeGroup, ...]
    pools: dict[str, PoolRow]
    departments: tuple[DepartmentRow, ...]
    projects: tuple[ProjectRow, ...]
    quotas: tuple[QuotaRow, ...]


def live_region(engine) -> Region:
    with Session(engine) as s:
        nodes = s.execute(select(NodeRow)).scalars().all()
        pools = {p.name: p for p in s.execute(select(PoolRow)).scalars().all()}
        deps = tuple(s.execute(select(DepartmentRow)).scalars().all())
        projs = tuple(s.execute(select(ProjectRow)).scalars().all())
        quotas = tuple(s.execute(select(QuotaRow)).scalars().all())
        for x in (*pools.values(), *deps, *projs, *quotas):
            s.expunge(x)
    count: dict[tuple, int] = defaultdict(int)
    for n in nodes:
        if n.gpus > 0:
            count[(n.pool, n.gpu_model or "gpu", n.gpus, n.cpus, n.memory_gb)] += 1
    groups = tuple(NodeGroup(pool=p, gpu_model=m, gpus_per_node=g, nodes=k, workload_class=_klass(pools, p),
                             cpus_per_node=c, memory_gb_per_node=mem)
                   for (p, m, g, c, mem), k in sorted(count.items()))
    return Region(groups, pools, deps, projs, quotas)


def _klass(pools: dict[str, PoolRow], name: str) -> WorkloadClass:
    row = pools.get(name)
    return WorkloadClass(row.workload_class) if row else WorkloadClass.INNOVATION


def changed(region: Region, add: Sequence[NodeGroup] = (), remove: Sequence[NodeGroup] = (),
            quota_rows: Sequence[dict] = ()) -> Region:
    """The region with node groups added / removed and quota rows replaced (same owner, pool,
    model and resource) or added."""
    groups = list(region.groups)
    for r in remove:
        left = r.nodes
        for i, g in enumerate(groups):
            if left and g.pool == r.pool and g.gpu_model == r.gpu_model and g.gpus_per_node == r.gpus_per_node:
                k = min(left, g.nodes)
                groups[i], left = replace(g, nodes=g.nodes - k), left - k
        if left:
            raise Invalid(f"cannot remove {r.nodes} node(s) of pool={r.pool},model={r.gpu_model},gpus_per_node="
                          f"{r.gpus_per_node}: the region has {r.nodes - left}", code="BAD_NODE_GROUP")
    for a in add:
        groups.append(replace(a, workload_class=_klass(region.pools, a.pool)) if a.pool in region.pools else a)
    groups = [g for g in groups if g.nodes > 0]
    if not groups:
        raise Invalid("the changed region has no GPU nodes", code="BAD_NODE_GROUP")
    quotas = {(q.owner_kind, q.owner_id, q.pool, q.gpu_model, q.resource): q for q in region.quotas}
    for i, r in enumerate(quota_rows):
        try:
            q = QuotaRow(owner_kind=r["owner_kind"], owner_id=r["owner_id"], pool=r["pool"],
                         gpu_model=r.get("gpu_model", ""), resource=r.get("resource", "gpus"),
                         guaranteed=float(r.get("guaranteed", 0.0)), nominal=float(r.get("nominal", 0.0)),
                         limit=None if r.get("limit") is None else float(r["limit"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise Invalid(f"quota file entry {i + 1}: {e!r} (needs owner_kind, owner_id, pool, nominal)",
                          code="BAD_QUOTA_FILE") from None
        quotas[(q.owner_kind, q.owner_id, q.pool, q.gpu_model, q.resource)] = q
    return replace(region, groups=tuple(groups), quotas=tuple(quotas.values()))


def parse_quota_file(text: str) -> list[dict]:
    """A quota file: JSON or YAML, a list of quota rows (or {"quotas": [...]})."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise Invalid(f"quota file: {e}", code="BAD_QUOTA_FILE") from None
    if isinstance(data, dict):
        data = data.get("quotas")
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise Invalid("quota file must be a list of quota rows (owner_kind, owner_id, pool, gpu_model, resource, "
                      "guaranteed, nominal, limit)", code="BAD_QUOTA_FILE")
    return data


# --------------------------------------------------------------------------- replay


def tree(region: Region, trace: Sequence[TraceJob]) -> tuple[tuple[Department, ...], dict[str, Project]]:
    """The broker's own conversion of the live quota tree, for the node groups of `region`;
    budgets unlimited; a trace project no longer in the region gets no quota (it only borrows)."""
    fake_nodes = [NodeRow(id=f"g{i}", hostname="", pool=g.pool, gpu_model=g.gpu_model, gpus=g.gpus_per_node)
                  for i, g in enumerate(region.groups)]
    snap = build_snapshot(now=0.0, half_life_s=1.0, departments=region.departments, projects=region.projects,
                          pools=[], nodes=fake_nodes, quotas=region.quotas, holding=[], placements={}, pending=[],
                          ledger=[])
    deps = {d.id: replace(d, budget_gpu_hours=UNLIMITED, spent_gpu_hours=0.0) for d in snap.departments}
    projects = {p.id: replace(p, budget_gpu_hours=UNLIMITED, spent_gpu_hours=0.0) for p in snap.projects}
    for t in trace:
        if t.project not in projects:
            deps.setdefault(UNKNOWN_DEPARTMENT, Department(id=UNKNOWN_DEPARTMENT, name=UNKNOWN_DEPARTMENT))
            projects[t.project] = Project(id=t.project, department=UNKNOWN_DEPARTMENT)
    return tuple(deps.values()), projects


def replay(region: Region, trace: Sequence[TraceJob], policy: Policy, *, cycle_interval: float = 0.0,
           on_progress: Optional[Callable[[float], None]] = None) -> sim.SimResult:
    """Replay `trace` on `region` with the broker's policy and quota tree (event-exact cycles by
    default, as the broker cycles on every submit and every end it sees)."""
    if not trace:
        raise Invalid("no recorded jobs in this window: nothing to replay", code="EMPTY_TRACE")
    deps, projects = tree(region, trace)
    cfg = sim.SimConfig(nodes=0, gpus_per_node=max(g.gpus_per_node for g in region.groups), policy=policy,
                        cycle_interval=cycle_interval, cluster=region.groups, queue_depth=0)
    first, last = min(t.submit_time for t in trace), max(t.submit_time for t in trace)
    base = sim.default_cycle()

    def cycle(snap, now, pol):
        if on_progress is not None and last > first:
            on_progress(min(1.0, max(0.0, (now - first) / (last - first))))
        return base(snap, now, pol)

    s = sim._Sim(trace, cfg, cycle)
    s.departments = deps
    for pid in s.projects:  # the same keys: the trace's projects
        s.projects[pid] = projects[pid]
    s.project_tuple = tuple(s.projects.values())
    s.nominal = {pid: _nominal_gpus(p) for pid, p in s.projects.items()}
    s.pools = tuple(Pool(p.name, p.workload_class, region.pools[p.name].lend_to_innovation)
                    if p.name in region.pools else p for p in s.pools)
    try:
        return s.run()
    except ReplayError as e:
        raise Invalid(f"the replay cannot finish on this region: {e}", code="REPLAY_IMPOSSIBLE") from None


def _nominal_gpus(p: Project) -> float:
    total = 0.0
    for (flavor, res), spec in p.quotas.items():
        if res == "gpus" and not spec.nominal.unlimited:
            total += spec.nominal.value
    return total


# --------------------------------------------------------------------------- figures


def figures(outcomes: Sequence[JobOutcome], department_of: dict[str, str], capacity_gpus: int) -> dict:
    """Wait avg / p50 / p95 / p99 per department and class, and utilization (work / capacity x
    span from the first submit to the last end)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    done = [o for o in outcomes if o.end is not None and o.first_start is not None]
    for o in done:
        groups[(department_of.get(o.project, UNKNOWN_DEPARTMENT), o.workload_class)].append(o.wait)
    rows = []
    for (dep, klass), waits in sorted(groups.items()):
        rows.append({"department": dep, "class": klass, "jobs": len(waits),
                     "avg_wait_s": round(sum(waits) / len(waits), 1),
                     **{f"p{q}_wait_s": round(percentile(waits, q), 1) for q in PERCENTILES}})
    waits = [o.wait for o in done]
    span = (max(o.end for o in done) - min(o.submit for o in done)) if done else 0.0
    work = sum(o.duration * o.gpus for o in done)
    return {"per_department_class": rows, "jobs": len(done),
            "avg_wait_s": round(sum(waits) / len(waits), 1) if waits else 0.0,
            "p95_wait_s": round(percentile(waits, 95), 1), "gpus": capacity_gpus,
            "utilization": round(work / (capacity_gpus * span), 4) if span > 0 and capacity_gpus else 0.0}


def queue_series(outcomes: Sequence[JobOutcome], points: int = 200) -> list[tuple[float, int]]:
    """Jobs waiting (submitted, not yet started) at `points` evenly spaced instants."""
    spans = [(o.submit, o.first_start if o.first_start is not None else float("inf")) for o in outcomes]
    if not spans:
        return []
    t0 = min(a for a, _ in spans)
    t1 = max(max((b for _, b in spans if b != float("inf")), default=t0), max(a for a, _ in spans))
    step = (t1 - t0) / max(1, points - 1)
    return [(t0 + i * step, sum(1 for a, b in spans if a <= t0 + i * step < b)) for i in range(points)]


def whatif(engine, policy: Policy, *, start: float, end: float, add: Sequence[str] = (), remove: Sequence[str] = (),
           quota_text: Optional[str] = None, on_progress: Optional[Callable[[str, float], None]] = None) -> dict:
    """Replay [start, end)'s history before and after the changes; figures, the queue and an SVG."""
    from broker.services.capacity_svg import queue_svg

    progress = on_progress or (lambda phase, x: None)
    add_g, remove_g = [parse_group(a) for a in add], [parse_group(r) for r in remove]
    quota_rows = parse_quota_file(quota_text) if quota_text else []
    progress("export", 0.0)
    recorded = recorded_jobs(engine, start, end)
    trace = [r.job for r in recorded]
    region = live_region(engine)
    after_region = changed(region, add_g, remove_g, quota_rows)
    dept = {p.id: p.department_id for p in region.projects}
    out: dict = {"window": {"from": start, "to": end}, "jobs": len(trace),
                 "changes": {"add": list(add), "remove": list(remove), "quota_rows": len(quota_rows)},
                 "recorded": _recorded_figures(recorded)}
    series = {}
    for name, reg, lo, hi in (("before", region, 0.05, 0.5), ("after", after_region, 0.5, 0.95)):
        progress(name, lo)
        res = replay(reg, trace, policy, on_progress=lambda x, lo=lo, hi=hi, name=name: progress(name, lo + (hi - lo) * x))
        cap = sum(g.nodes * g.gpus_per_node for g in reg.groups)
        out[name] = {**figures(res.outcomes, dept, cap), "inventory": [_group_public(g) for g in reg.groups],
                     "preemptions": res.metrics.get("preemptions", 0)}
        series[name] = queue_series(res.outcomes)
    # the replay's clock starts at the window's start (the trace's submit times are relative)
    out["queue"] = {k: [[round(t, 1), n] for t, n in v] for k, v in series.items()}
    out["svg"] = queue_svg(series, title=f"Jobs waiting, {len(trace)} recorded jobs replayed")
    progress("done", 1.0)
    return out


def _recorded_figures(recorded: Sequence[Recorded]) -> dict:
    waits = [r.wait_s for r in recorded]
    return {"jobs": len(waits), "avg_wait_s": round(sum(waits) / len(waits), 1) if waits else 0.0,
            "p95_wait_s": round(percentile(waits, 95), 1)}


def _group_public(g: NodeGroup) -> dict:
    return {"pool": g.pool, "gpu_model": g.gpu_model, "gpus_per_node": g.gpus_per_node, "nodes": g.nodes,
            "class": g.workload_class.value}


def dumps(obj) -> str:
    return json.dumps(obj, indent=2)
