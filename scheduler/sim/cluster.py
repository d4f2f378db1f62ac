"""The simulated cluster: nodes, pools, the quota tree, and whether a trace can finish on it.

Two ways to describe the hardware:

- homogeneous (``--nodes N --gpus-per-node G``): N identical nodes, GPU models round-robin over
  those the trace names; the first ``--operation-nodes`` form an ``operation`` pool that lends
  idle capacity to innovation work, the rest the innovation pool ``sim``;
- an inventory file (``--cluster FILE``), so a region can replay its own hardware. CSV with a
  header; required columns ``pool,gpu_model,gpus_per_node,nodes``, optional ``class``
  (``operation`` or ``innovation``; default: operation for a pool named ``operation``, else
  innovation), ``cpus_per_node`` (default 8 per GPU) and ``memory_gb_per_node`` (default 64 per
  GPU). One row per node group; several rows may share a pool. Operation pools lend idle
  capacity to innovation work, as in the homogeneous case. A bad row raises `ClusterError`
  naming its file line.

`check_feasible` runs before a replay: a job that no node of its pools could ever hold would
otherwise stay pending forever (and under ``fifo`` block every job behind it), so the replay
would end with jobs unfinished and figures that look plausible. It raises `ReplayError` with the
reason instead, counted per cause.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from quotas.amount import UNLIMITED, ZERO, Amount
from scheduler.model import Department, Flavor, Node, Pool, Project, QuotaSpec, Resources, WorkloadClass
from scheduler.sim.traces import TraceJob, split_workers

SIM_POOL = "sim"
OPERATION_POOL = "operation"
SIM_DEPARTMENT = "sim"
CPUS_PER_GPU = 8.0
MEMORY_GB_PER_GPU = 64.0
CLUSTER_REQUIRED: tuple[str, ...] = ("pool", "gpu_model", "gpus_per_node", "nodes")
CLUSTER_OPTIONAL: tuple[str, ...] = ("class", "cpus_per_node", "memory_gb_per_node")


class ClusterError(ValueError):
    """An inventory file that cannot be used; the message names the line and the problem."""


class ReplayError(RuntimeError):
    """The replay cannot finish on this cluster; the message says which jobs and why."""


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """`nodes` identical nodes of one pool and GPU model (one row of an inventory file)."""

    pool: str
    gpu_model: str
    gpus_per_node: int
    nodes: int
    workload_class: WorkloadClass = WorkloadClass.INNOVATION
    cpus_per_node: float | None = None  # None: CPUS_PER_GPU per GPU
    memory_gb_per_node: float | None = None  # None: MEMORY_GB_PER_GPU per GPU


def homogeneous_nodes(nodes: int, gpus_per_node: int, gpu_models: Sequence[str], operation_nodes: int = 0,
                       cpus_per_node: float | None = None, memory_gb_per_node: float | None = None) -> list[Node]:
    """N identical nodes, GPU models round-robin: the first `operation_nodes` in the operation
    pool, the rest in the innovation pool `sim`. Node ids are ``n00000``... in that order."""
    g = gpus_per_node
    cap = Resources(gpus=g, cpus=cpus_per_node if cpus_per_node is not None else CPUS_PER_GPU * g,
                    memory_gb=memory_gb_per_node if memory_gb_per_node is not None else MEMORY_GB_PER_GPU * g)
    models = tuple(gpu_models) or ("gpu",)
    return [Node(id=f"n{i:05d}", pool=OPERATION_POOL if i < operation_nodes else SIM_POOL,
                 gpu_model=models[i % len(models)], capacity=cap) for i in range(nodes)]


def nodes_of(groups: Sequence[NodeGroup]) -> list[Node]:
    """The nodes of an inventory, in file order, ids ``n00000``..."""
    out: list[Node] = []
    for gr in groups:
        g = gr.gpus_per_node
        cap = Resources(gpus=g, cpus=gr.cpus_per_node if gr.cpus_per_node is not None else CPUS_PER_GPU * g,
                        memory_gb=gr.memory_gb_per_node if gr.memory_gb_per_node is not None else MEMORY_GB_PER_GPU * g)
        base = len(out)
        out.extend(Node(id=f"n{base + i:05d}", pool=gr.pool, gpu_model=gr.gpu_model, capacity=cap)
                   for i in range(gr.nodes))
    return out


def pools_of(nodes: Sequence[Node], classes: dict[str, WorkloadClass] | None = None) -> tuple[Pool, ...]:
    """One Pool per pool name (sorted); operation pools lend idle capacity to innovation.

    Without `classes`, the pool named ``operation`` is the operation pool (homogeneous case)."""
    classes = classes or {}
    out = []
    for name in sorted({n.pool for n in nodes}):
        klass = classes.get(name, WorkloadClass.OPERATION if name == OPERATION_POOL else WorkloadClass.INNOVATION)
        out.append(Pool(name, klass, lend_to_innovation=klass is WorkloadClass.OPERATION))
    return tuple(out)


def load_cluster(path: str) -> list[NodeGroup]:
    """Read an inventory file (see module docstring). Raises ClusterError naming the line."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ClusterError(f"{path}: cannot read cluster file: {e.strerror or e}") from None
    try:
        return parse_cluster(lines)
    except ClusterError as e:
        raise ClusterError(f"{path}: {e}") from None


def parse_cluster(lines: Sequence[str]) -> list[NodeGroup]:
    """Parse inventory CSV lines (header first); blank lines are skipped, line numbers stay file lines."""
    numbered = [(i + 1, s) for i, s in enumerate(lines) if s.strip()]
    rows = [(n, [c.strip() for c in cells]) for (n, _), cells in zip(numbered, csv.reader(s for _, s in numbered))]
    if not rows:
        raise ClusterError("line 1: empty cluster file: expected a header line")
    hline, header = rows[0]
    missing = [c for c in CLUSTER_REQUIRED if c not in header]
    unknown = [c for c in header if c not in CLUSTER_REQUIRED + CLUSTER_OPTIONAL]
    if missing or unknown:
        raise ClusterError(f"line {hline}: header needs {', '.join(CLUSTER_REQUIRED)} (optional: "
                           f"{', '.join(CLUSTER_OPTIONAL)}); got {', '.join(header)}")
    groups: list[NodeGroup] = []
    for lineno, cells in rows[1:]:
        if len(cells) != len(header):
            raise ClusterError(f"line {lineno}: expected {len(header)} fields, found {len(cells)}")
        r = dict(zip(header, cells))
        if not r["pool"]:
            raise ClusterError(f"line {lineno}: pool is empty")
        klass = r.get("class") or (OPERATION_POOL if r["pool"] == OPERATION_POOL else "innovation")
        try:
            wclass = WorkloadClass(klass)
        except ValueError:
            raise ClusterError(f"line {lineno}: class must be operation or innovation, got {klass!r}") from None
        groups.append(NodeGroup(
            pool=r["pool"], gpu_model=r["gpu_model"] or "gpu",
            gpus_per_node=_whole(lineno, "gpus_per_node", r["gpus_per_node"], 1),
            nodes=_whole(lineno, "nodes", r["nodes"], 0), workload_class=wclass,
            cpus_per_node=_positive(lineno, "cpus_per_node", r.get("cpus_per_node") or ""),
            memory_gb_per_node=_positive(lineno, "memory_gb_per_node", r.get("memory_gb_per_node") or ""),
        ))
    classes: dict[str, WorkloadClass] = {}
    for (lineno, _), gr in zip(rows[1:], groups):
        if classes.setdefault(gr.pool, gr.workload_class) is not gr.workload_class:
            raise ClusterError(f"line {lineno}: pool {gr.pool!r} is given two classes")
    if not any(gr.nodes for gr in groups):
        raise ClusterError(f"line {hline}: the cluster has no nodes")
    return groups


def _whole(lineno: int, name: str, text: str, minimum: int) -> int:
    try:
        x = int(text)
    except ValueError:
        raise ClusterError(f"line {lineno}: {name} must be a whole number, got {text!r}") from None
    if x < minimum:
        raise ClusterError(f"line {lineno}: {name} must be >= {minimum}, got {text!r}")
    return x


def _positive(lineno: int, name: str, text: str) -> float | None:
    if not text:
        return None
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise ClusterError(f"line {lineno}: {name} must be a number > 0, got {text!r}")
    return x


def project_shares(jobs: Sequence[TraceJob], mode: str) -> dict[str, float]:
    """Each project's fraction of the cluster (sums to 1): equal, or by GPU-seconds demanded."""
    if mode == "equal":
        names = sorted({j.project for j in jobs})
        return {p: 1.0 / len(names) for p in names}
    if mode == "demand":
        demand: Counter[str] = Counter()
        for j in jobs:
            demand[j.project] += j.gpu_seconds
        total = sum(demand.values())
        return {p: demand[p] / total for p in sorted(demand)}
    raise ValueError(f"unknown shares mode {mode!r} (equal or demand)")


def quota_tree(nodes: Sequence[Node], shares: dict[str, float]) -> tuple[tuple[Department, ...], dict[str, Project], dict[str, float]]:
    """Department with the whole cluster as nominal; projects with nominal = share; guaranteed 0."""
    cap: dict[tuple[Flavor, str], float] = {}
    for n in nodes:
        for r in ("gpus", "cpus", "memory_gb"):
            cap[(n.flavor, r)] = cap.get((n.flavor, r), 0.0) + n.capacity.get(r)
    dept = Department(id=SIM_DEPARTMENT, name="simulated department",
                      quotas={k: QuotaSpec(ZERO, Amount.of(v), UNLIMITED) for k, v in cap.items()})
    projects = {
        p: Project(id=p, department=SIM_DEPARTMENT, weight=s,
                   quotas={k: QuotaSpec(ZERO, Amount.of(v * s), UNLIMITED) for k, v in cap.items()})
        for p, s in shares.items()
    }
    total_gpus = sum(n.capacity.gpus for n in nodes)
    nominal_gpus = {p: s * total_gpus for p, s in shares.items()}
    return (dept,), projects, nominal_gpus


def check_feasible(trace: Sequence[TraceJob], nodes: Sequence[Node], pools: Sequence[Pool], gpus_per_node: int) -> None:
    """Raise ReplayError when some job could never start on `nodes`, counted per cause.

    A job may use the pools of its class (operation: operation pools; innovation: innovation
    pools and operation pools that lend); it needs nodes of its GPU model (if it names one)
    that can each hold one worker, and enough of them in one flavor (pool and GPU model: the
    cycle places a gang in one flavor) for the whole gang."""
    klass = {p.name: p.workload_class for p in pools}
    lends = {p.name for p in pools if p.lend_to_innovation}
    op_pools = sorted(p.name for p in pools if p.workload_class is WorkloadClass.OPERATION)
    usable = {op: [n for n in nodes if (klass[n.pool] is WorkloadClass.OPERATION) == op or (not op and n.pool in lends)]
              for op in (True, False)}
    causes: Counter[str] = Counter()
    first: dict[str, str] = {}
    verdict: dict[tuple, str] = {}  # jobs of one shape share the verdict ("" = feasible)
    for t in trace:
        op = t.workload_class is WorkloadClass.OPERATION
        workers, per = split_workers(t.gpus, gpus_per_node, t.workers)
        key = (op, t.gpu_model, workers, per, t.cpus / workers, t.memory_gb / workers)
        cause = verdict.get(key)
        if cause is None:
            cause = verdict[key] = _cause(t, usable[op], workers, per, op_pools)
        if cause:
            causes[cause] += 1
            first.setdefault(cause, t.id)
    if causes:
        parts = [f"{n:,} {cause} (first: job {first[cause]})" for cause, n in causes.most_common()]
        raise ReplayError("the replay cannot finish: " + "; ".join(parts))


def _cause(t: TraceJob, usable: Sequence[Node], workers: int, per: int, op_pools: Sequence[str]) -> str:
    """Why no node of `usable` could ever hold job `t` ("" when some could)."""
    klass = t.workload_class.value
    if not usable:
        if t.workload_class is WorkloadClass.OPERATION:
            return f"operation jobs need pool {' or '.join(op_pools) or OPERATION_POOL}, which has no nodes"
        return "innovation jobs need an innovation pool (or an operation pool that lends), which has no nodes"
    if t.gpu_model and not any(n.gpu_model == t.gpu_model for n in usable):
        return f"{klass} jobs need GPU model {t.gpu_model}, which no node of their pools has"
    fit = [n for n in usable if (not t.gpu_model or n.gpu_model == t.gpu_model) and n.capacity.gpus >= per
           and n.capacity.cpus >= t.cpus / workers - 1e-9 and n.capacity.memory_gb >= t.memory_gb / workers - 1e-9]
    slots: Counter[tuple[str, str]] = Counter()  # a gang runs in one flavor (pool, GPU model)
    for n in fit:
        slots[(n.pool, n.gpu_model)] += n.capacity.gpus // per
    if any(k >= workers for k in slots.values()):
        return ""
    model = f" of model {t.gpu_model}" if t.gpu_model else ""
    return f"{klass} jobs need {workers} worker(s) of {per} GPUs{model}, more than the nodes of any one pool and GPU model can hold"
