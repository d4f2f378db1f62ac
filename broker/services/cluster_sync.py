"""Cluster mode: the broker and the Kubernetes cluster it runs on, kept in step both ways.

One `tick(now)` (a periodic task, leader only), three steps, each DB step a short transaction
and every Kubernetes call outside one:

1. states in   a node Kubernetes says takes no work (cordoned, NotReady, tainted NoSchedule /
               NoExecute) gets that state in the broker with the reason, prefixed
               "kubernetes: "; when Kubernetes lifts it, the broker does too. A state that the
               health checks, the executor or an admin set is never overwritten (they keep
               their own prefixes), so nothing here fights another owner.
2. taints out  a node the broker drained (an admin's cordon or drain, or a fatal GPU error
               found by telemetry) carries the broker's own NoSchedule taint so Kubernetes puts
               no new pod there either; the taint goes when the broker lifts the drain. The
               broker never cordons: a human's cordon stays a human's.
3. scale       pending jobs that passed quota and budget and wait for capacity -> the adapter's
               worker-group decisions (scale up; scale down by draining here first). Each such
               job's pending reason then says e.g. "scaling up: 2 nodes requested at 10:02 UTC"
               (`note`, read by the scheduling loop when it writes reasons).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.models import HOLDING, Job, JobStatus, Node, Placement, Pool, QuotaRow
from broker.ports import (CLUSTER_REASON, HOST_LABEL, SCALE_DOWN_REASON, SPENT_REASON, Clock, Cluster, ClusterNode,
                          ScaleDemand, ScaleInput)
from broker.services import scheduling_queries as repo
from broker.services.snapshot import image_key
from broker.services.telemetry.health import PREFIX as TELEMETRY_REASON
from scheduler.model import NodeState

log = logging.getLogger("broker.cluster")
# pending codes of jobs that passed quota and budget and wait for capacity of their flavor
CAPACITY_CODES = ("NO_CAPACITY", "FRAGMENTED")
# codes given before quota is looked at (no node of the model / big enough): these count only
# for a project with a GPU quota in the pool (scale-from-zero of a group)
STATIC_CODES = ("GPU_MODEL_UNAVAILABLE", "NEVER_FITS")


class ClusterSync:
    def __init__(self, engine: Engine, cluster: Cluster, *, autoscale: bool = True, clock: Clock = time.time,
                 on_nodes_changed: Callable[[], None] | None = None, images: Mapping[str, str] | None = None) -> None:
        """`images`: approved image reference -> key (`Settings.image_keys`): a container job of
        such an image is demand for that image's worker group only."""
        self.engine, self.cluster, self.autoscale_on, self.clock = engine, cluster, autoscale, clock
        self.images = dict(images or {})
        self.on_nodes_changed = on_nodes_changed
        self._notes: Mapping[str, str] = {}

    def note(self, job_id: str) -> str | None:
        """What the cluster does for this pending job ("scaling up: ..."), if anything."""
        return self._notes.get(job_id)

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        nodes = list(self.cluster.nodes())
        self.sync_states(nodes, now)
        self.sync_taints(nodes)
        if self.autoscale_on:
            self.autoscale(now)

    # ------------------------------------------------------------------ 1. states in
    def sync_states(self, nodes: Sequence[ClusterNode], now: float) -> int:
        """Kubernetes' view of each node -> the broker's node state. Returns how many changed."""
        by_name = {n.name: n for n in nodes}
        changed = 0
        with Session(self.engine) as s:
            for row in repo.nodes(s):
                # a pod per image is a broker node of its own, on the Kubernetes node it names
                k = by_name.get(row.id) or by_name.get((row.labels or {}).get(HOST_LABEL, ""))
                if k is None:
                    continue
                ours = row.state_reason.startswith(CLUSTER_REASON) and not row.state_reason.startswith(SCALE_DOWN_REASON)
                if not k.schedulable and (row.state == NodeState.READY.value or ours):
                    new = (k.state, k.reason)
                elif k.schedulable and ours:
                    new = (NodeState.READY.value, "")
                else:
                    continue
                if (row.state, row.state_reason) != new:
                    row.state, row.state_reason, row.updated_at = new[0], new[1], now
                    s.add(row)
                    changed += 1
            s.commit()
        if changed and self.on_nodes_changed is not None:
            self.on_nodes_changed()
        return changed

    # ------------------------------------------------------------------ 2. taints out
    def sync_taints(self, nodes: Sequence[ClusterNode]) -> list[tuple[str, str | None]]:
        """Put / lift the broker's taint where the broker's drain and the node's taint differ.
        Returns the (node, value) calls made."""
        with Session(self.engine) as s:
            wanted = {n.id: drain_taint(n) for n in repo.nodes(s)}
        calls = []
        for k in nodes:
            if k.name not in wanted or wanted[k.name] == k.broker_taint:
                continue
            try:
                self.cluster.set_broker_taint(k.name, wanted[k.name])
                calls.append((k.name, wanted[k.name]))
            except Exception as e:  # one node's failure must not stop the others; next tick retries
                log.warning("taint of node %s failed: %s", k.name, e)
        return calls

    # ------------------------------------------------------------------ 3. scale
    def autoscale(self, now: float) -> None:
        demand = self.demand()
        outcome = self.cluster.autoscale(demand, now)
        self._notes = dict(outcome.notes)
        if not (outcome.drain or outcome.undrain):
            return
        with Session(self.engine) as s:
            for nid in outcome.drain:
                row = s.get(Node, nid)
                if row is not None and row.state == NodeState.READY.value and row.admin_state is None:
                    row.state, row.state_reason = NodeState.DRAINING.value, SCALE_DOWN_REASON + "idle past the cool-down"
                    row.updated_at = now
                    s.add(row)
            for nid in outcome.undrain:
                row = s.get(Node, nid)
                if row is not None and row.state_reason.startswith(SCALE_DOWN_REASON):
                    row.state, row.state_reason, row.updated_at = NodeState.READY.value, "", now
                    s.add(row)
            s.commit()
        if self.on_nodes_changed is not None:
            self.on_nodes_changed()

    def demand(self) -> ScaleInput:
        """What the scaler needs from the DB, read in one short transaction."""
        with Session(self.engine) as s:
            pending = s.execute(select(Job).where(Job.status == JobStatus.PENDING.value,
                                                  Job.pending_code.in_(CAPACITY_CODES + STATIC_CODES))
                                .order_by(Job.submit_time, Job.id)).scalars().all()
            pools = repo.pools(s)
            quotas = repo.quota_rows(s)
            busy = set(s.execute(select(Placement.node_id).join(
                Job, (Job.id == Placement.job_id) & (Job.attempt == Placement.attempt))
                .where(Job.status.in_([j.value for j in HOLDING]))).scalars().all())
            rows = repo.nodes(s)
            drained = {n.id for n in rows if n.state_reason.startswith(SCALE_DOWN_REASON)}
            spent = {n.id for n in rows if n.state_reason.startswith(SPENT_REASON)}
        entitled = {(q.owner_id, q.pool) for q in quotas
                    if q.owner_kind == "project" and q.resource == "gpus" and q.nominal > 0 and q.limit != 0}
        demands = []
        for j in pending:
            allowed = job_pools(j, pools)
            if j.pending_code in STATIC_CODES:
                allowed = tuple(p for p in allowed if (j.project_id, p) in entitled)
            if allowed:
                demands.append(ScaleDemand(job_id=j.id, pools=allowed, gpu_models=tuple(j.gpu_models or ()),
                                           gpus_per_worker=j.gpus, workers=j.workers,
                                           image=image_key(j, self.images)))
        return ScaleInput(demands=tuple(demands), busy_nodes=frozenset(busy), drained_nodes=frozenset(drained),
                          guaranteed_gpus=guaranteed_gpus(quotas), spent_nodes=frozenset(spent))


def drain_taint(n: Node) -> str | None:
    """The value of the broker's taint a node should carry: an admin's cordon/drain, or a fatal
    GPU fault telemetry found; None: no taint (states Kubernetes itself set are not echoed)."""
    if n.admin_state in ("cordoned", "draining"):
        return f"admin-{n.admin_state}"
    if n.state == NodeState.DRAINING.value and n.state_reason.startswith(TELEMETRY_REASON):
        return "gpu-fault"
    return None


def job_pools(job: Job, pools: Sequence[Pool]) -> tuple[str, ...]:
    """The pools a pending job may run in, its own class first (the scheduler's rule)."""
    if job.pool is not None:
        return (job.pool,)
    op = job.workload_class == "operation"
    own = [p.name for p in pools if (p.workload_class == "operation") == op]
    lent = [] if op else [p.name for p in pools if p.workload_class == "operation" and p.lend_to_innovation]
    return tuple(own + lent)


def guaranteed_gpus(quotas: Sequence[QuotaRow]) -> dict[str, float]:
    """Per pool, the GPUs guaranteed to its owners (departments' or, where larger, their
    projects' sum): a scale-down never leaves the pool with fewer."""
    by_kind: dict[tuple[str, str], float] = {}
    for q in quotas:
        if q.resource == "gpus":
            by_kind[(q.owner_kind, q.pool)] = by_kind.get((q.owner_kind, q.pool), 0.0) + q.guaranteed
    out: dict[str, float] = {}
    for (_, pool), v in by_kind.items():
        out[pool] = max(out.get(pool, 0.0), v)
    return out
