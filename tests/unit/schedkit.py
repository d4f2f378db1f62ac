"""Small builders for scheduler tests: `job(gpus=2, project="ouh-liver")`, `node("n1", gpus=8)`.

Defaults describe one innovation pool of A100 nodes with 8 GPUs, 64 cpus and 512 GB each,
department "ouh", and jobs of 1 cpu and 4 GB per worker.
"""

from __future__ import annotations

from quotas.amount import UNLIMITED, Amount
from scheduler.model import (
    Department, Flavor, Job, Node, NodeState, Placement, Pool, Project, QuotaSpec, Resources, Running,
    Snapshot, WorkloadClass,
)

OP, INNO = WorkloadClass.OPERATION, WorkloadClass.INNOVATION
POOLS = (Pool("innovation", INNO), Pool("operation", OP, lend_to_innovation=True))


def node(id: str, gpus: int = 8, pool: str = "innovation", model: str = "A100", state: NodeState = NodeState.READY,
         cpus: float = 64.0, mem: float = 512.0) -> Node:
    return Node(id, pool, model, Resources(gpus, cpus, mem), state)


def job(id: str = "j", gpus: int = 1, project: str = "ouh-liver", workers: int = 1, cls: WorkloadClass = INNO,
        priority: int = 0, submit: float = 0.0, models: tuple[str, ...] = (), pool: str | None = None,
        runtime: float = 3600.0, cpus: float = 1.0, mem: float = 4.0) -> Job:
    return Job(id, project, cls, priority, submit, workers, Resources(gpus, cpus, mem), models, pool, runtime)


def running(j: Job, *on: tuple[str, tuple[int, ...]], start: float = 0.0, borrowing: bool = False,
            flavor: Flavor | None = None) -> Running:
    """`on`: one (node id, gpu indices) per worker."""
    if flavor is None:
        flavor = Flavor(j.pool or "innovation", j.gpu_models[0] if j.gpu_models else "A100")
    return Running(j, tuple(Placement(k, n, ids) for k, (n, ids) in enumerate(on)), start, flavor, borrowing)


def q(nominal: float | None = 0, guaranteed: float = 0, limit: float | None = None) -> QuotaSpec:
    return QuotaSpec(Amount.of(guaranteed), Amount.of(nominal), UNLIMITED if limit is None else Amount.of(limit))


def project(id: str, dept: str = "ouh", nominal: float | None = None, guaranteed: float = 0,
            limit: float | None = None, flavor: tuple[str, str] = ("innovation", "A100"), budget: float | None = None,
            spent: float = 0.0, weight: float = 1.0, decayed: float = 0.0, quotas: dict | None = None) -> Project:
    specs = dict(quotas or {})
    if nominal is not None or guaranteed or limit is not None:
        specs[(Flavor(*flavor), "gpus")] = q(nominal or 0, guaranteed, limit)
    return Project(id, dept, weight, Amount.of(budget), spent, decayed, specs)


def dept(id: str = "ouh", budget: float | None = None, spent: float = 0.0, quotas: dict | None = None,
         weight: float = 1.0) -> Department:
    return Department(id, id.upper(), weight, Amount.of(budget), spent, dict(quotas or {}))


def snapshot(nodes, pending=(), running=(), projects=None, departments=None, pools=POOLS) -> Snapshot:
    pending, running = tuple(pending), tuple(running)
    if projects is None:
        ids = sorted({j.project for j in pending} | {r.job.project for r in running})
        projects = [project(p) for p in ids]
    projects = tuple(projects)
    if departments is None:
        departments = [dept(d) for d in sorted({p.department for p in projects})]
    return Snapshot(tuple(nodes), tuple(pools), tuple(departments), projects, running, pending)
