"""Demand-driven worker groups: how many Ray worker pods each RayCluster group should have.

The broker, not the Ray autoscaler, scales the groups (the manifests set
`enableInTreeAutoscaling: false`): Ray's autoscaler would react to every resource request,
including those of jobs the broker keeps waiting on purpose (over quota, out of budget). The
rules, each a test case in tests/k8s/test_scaling.py:

1. Up only for demand the broker can act on: pending jobs that passed quota and budget and
   wait for capacity of a flavor (the service passes exactly those as `ScaleDemand`s).
2. A demand goes to the first group (in the job's pool order, then manifest order) whose pool
   it may use, whose GPU model it accepts and whose node holds at least one of its workers.
   It needs ceil(workers / workers-per-node) nodes.
3. Nodes already requested and not yet running (replicas - running pods), and running nodes
   of the group that hold no work, count against the need: a slow node is not requested twice.
4. Within the group's min/max, and at most `max_up` nodes per group per `window_s`.
5. Down only when the group has no demand: a node idle for `cooldown_s` is first drained in
   the broker (no new work lands on it), and on a later call - still idle, still drained -
   its pod is named in `scaleStrategy.workersToDelete` and replicas drop by one.
6. Never below what the pool's guarantee needs: the GPUs of the pool's remaining nodes must
   still cover `guaranteed_gpus[pool]` (the operation guarantee), nor below minReplicas.
7. Demand that comes back for a group returns its drained nodes to service.
8. Pods per approved image (a group whose Ray labels carry `broker.io/image`; each pod is a
   broker node named after the pod): a demand of that image goes only to its group and needs
   one pod per worker; a pod that ran its one attempt (spent) is named in `workersToDelete` as
   soon as it is idle, whatever the demand, and KubeRay starts a fresh one where the group's
   minimum or its demand needs it. A spent pod never counts as capacity nor returns to service.

`plan` is pure: the caller keeps the `Memory` (idle-since times, recent requests) between
calls. A broker that takes over as leader starts with an empty memory: it waits a full
cool-down before draining anything, which errs on the side of keeping capacity.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from broker.adapters.k8s.nodes import PRODUCT_LABEL, WorkerPod, gpu_model_name
from broker.ports import IMAGE_LABEL, ScaleDemand, ScaleInput

POOL_LABEL = "broker.io/pool"  # rayStartParams.labels key (the Ray adapter's)


@dataclass(frozen=True, slots=True)
class Rules:
    cooldown_s: float = 600.0
    max_up: int = 4  # nodes per group per window
    window_s: float = 60.0
    pool_node_label: str = "compute-broker/pool"
    gpu_models: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """A worker group as the planner needs it (from the RayCluster object)."""

    name: str
    index: int  # position in spec.workerGroupSpecs
    pool: str
    gpu_model: str  # "" = not pinned to one model
    gpus_per_node: int
    replicas: int
    min_replicas: int
    max_replicas: int
    workers_to_delete: tuple[str, ...] = ()
    image: str = ""  # an approved image's key: its pods take that image's jobs only, one each

    def node_of(self, pod: WorkerPod) -> str:
        """The broker's node id of one of the group's pods: the pod for an image group (a pod
        per job worker), else the Kubernetes node it runs on."""
        return pod.name if self.image else pod.node


@dataclass(frozen=True)
class Memory:
    idle_since: Mapping[str, float] = field(default_factory=dict)  # node -> when it was first seen idle
    ups: Mapping[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)  # group -> (at, nodes)
    requested: Mapping[str, tuple[float, int]] = field(default_factory=dict)  # group -> (at, nodes) outstanding


@dataclass(frozen=True)
class GroupChange:
    group: Group
    replicas: int
    delete_pods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    changes: tuple[GroupChange, ...] = ()
    notes: Mapping[str, str] = field(default_factory=dict)
    drain: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    undrain: tuple[str, ...] = ()
    memory: Memory = Memory()


def groups_of(raycluster: Mapping, rules: Rules = Rules(), pods: Sequence[WorkerPod] = (),
              node_models: Mapping[str, str] | None = None) -> list[Group]:
    """The worker groups of a RayCluster object (a dict as the API returns it). Pool: the
    template's nodeSelector pool label, else the `broker.io/pool` Ray label; GPU model: the
    nodeSelector's GFD product, else the model of the group's running nodes (`node_models`)."""
    out = []
    for i, g in enumerate(raycluster.get("spec", {}).get("workerGroupSpecs") or []):
        tpl = (g.get("template") or {}).get("spec") or {}
        selector = tpl.get("nodeSelector") or {}
        ray_labels = _ray_labels(str((g.get("rayStartParams") or {}).get("labels", "")))
        pool = selector.get(rules.pool_node_label) or ray_labels.get(POOL_LABEL, "")
        model = gpu_model_name(selector.get(PRODUCT_LABEL, ""), rules.gpu_models)
        if not model and node_models:
            models = {node_models.get(p.node, "") for p in pods if p.group == g["groupName"]} - {""}
            model = models.pop() if len(models) == 1 else ""
        out.append(Group(name=g["groupName"], index=i, pool=pool, gpu_model=model,
                         gpus_per_node=_gpus_per_node(g, tpl), replicas=int(g.get("replicas") or 0),
                         min_replicas=int(g.get("minReplicas") or 0),
                         max_replicas=int(g.get("maxReplicas") if g.get("maxReplicas") is not None else 1 << 30),
                         workers_to_delete=tuple((g.get("scaleStrategy") or {}).get("workersToDelete") or ()),
                         image=ray_labels.get(IMAGE_LABEL, "")))
    return out


def plan(groups: Sequence[Group], pods: Sequence[WorkerPod], demand: ScaleInput, memory: Memory, now: float,
         rules: Rules = Rules()) -> Plan:
    """The scaling decisions for one moment (rules 1-7 of the module doc)."""
    by_group: dict[str, list[WorkerPod]] = {g.name: [p for p in pods if p.group == g.name] for g in groups}
    group_of = {g.name: g for g in groups}
    assigned: dict[str, list[ScaleDemand]] = {g.name: [] for g in groups}
    for d in demand.demands:
        g = _group_for(d, groups)
        if g is not None:
            assigned[g.name].append(d)
    pool_gpus: dict[str, int] = {}
    for g in groups:
        pool_gpus[g.pool] = pool_gpus.get(g.pool, 0) + g.gpus_per_node * len(by_group[g.name])
    live = {group_of[p.group].node_of(p) if p.group in group_of else p.node for p in pods}
    idle_since = {n: t for n, t in memory.idle_since.items() if n in live and n not in demand.busy_nodes}
    for n in live - set(demand.busy_nodes):
        idle_since.setdefault(n, now)
    ups = {k: tuple(u for u in v if now - u[0] < rules.window_s) for k, v in memory.ups.items()}
    requested = dict(memory.requested)
    changes, notes, drain, deleted, undrain = [], {}, [], [], []
    for g0 in groups:
        mine, every = assigned[g0.name], by_group[g0.name]
        # rule 8: spent pods go as soon as they are idle; the minimum is kept with fresh pods
        spent = [p for p in every if g0.node_of(p) in demand.spent_nodes and g0.node_of(p) not in demand.busy_nodes]
        running = [p for p in every if p not in spent]
        g = replace(g0, replicas=max(g0.min_replicas, g0.replicas - len(spent))) if spent else g0
        gone = tuple(p.name for p in spent)
        deleted += [g.node_of(p) for p in spent]
        pool_gpus[g.pool] -= g.gpus_per_node * len(spent)
        replicas, delete = g.replicas, []
        in_flight = max(0, g.replicas - len(running))
        if mine:
            undrain += [g.node_of(p) for p in running if g.node_of(p) in demand.drained_nodes]
            idle = sum(1 for p in running if g.node_of(p) not in demand.busy_nodes
                       and g.node_of(p) not in demand.drained_nodes and g.node_of(p) not in demand.spent_nodes)
            need = max(0, sum(_nodes_for(d, g) for d in mine) - idle)
            recent = sum(n for _, n in ups.get(g.name, ()))
            add = max(0, min(need - in_flight, rules.max_up - recent, g.max_replicas - g.replicas))
            if add:
                replicas += add
                ups[g.name] = ups.get(g.name, ()) + ((now, add),)
                requested[g.name] = (now, in_flight + add)
            elif not in_flight:
                requested.pop(g.name, None)
            note = _note(g, requested.get(g.name), in_flight + add, need)
            for d in mine:
                notes[d.job_id] = note
        else:
            if not in_flight:
                requested.pop(g.name, None)
            for p in running:  # step 2 first: nodes drained earlier and still idle go now
                n = g.node_of(p)
                if n in demand.drained_nodes and n in idle_since and _may_remove(g, replicas, pool_gpus, demand):
                    replicas -= 1
                    pool_gpus[g.pool] -= g.gpus_per_node
                    delete.append(p.name)
                    deleted.append(n)
            for p in running:  # step 1: one more node idle past the cool-down is drained
                n = g.node_of(p)
                if n in demand.drained_nodes or n in demand.spent_nodes or n not in idle_since:
                    continue
                if now - idle_since[n] >= rules.cooldown_s and _may_remove(g, replicas, pool_gpus, demand):
                    drain.append(n)
                    break
        if replicas != g0.replicas or delete or gone:
            changes.append(GroupChange(g0, replicas, _still_there(g0, running) + gone + tuple(delete)))
    return Plan(changes=tuple(changes), notes=notes, drain=tuple(drain), deleted=tuple(deleted),
                undrain=tuple(undrain), memory=Memory(idle_since=idle_since, ups=ups, requested=requested))


def merge_patch(raycluster: Mapping, changes: Sequence[GroupChange]) -> dict:
    """The JSON merge patch (application/merge-patch+json) for `changes`. A merge patch replaces
    a list whole, so the complete `workerGroupSpecs` goes with every change; the object's
    `metadata.resourceVersion` makes the API refuse it (409) if anyone changed the RayCluster
    since it was read, so nobody's edit is lost."""
    specs = [dict(g) for g in raycluster["spec"]["workerGroupSpecs"]]
    for c in changes:
        g = dict(specs[c.group.index])
        if g["groupName"] != c.group.name:  # planned on another read of the object: refuse, replan
            raise ValueError(f"worker group {c.group.name!r} is no longer at index {c.group.index}")
        g["replicas"] = c.replicas
        g["scaleStrategy"] = {**(g.get("scaleStrategy") or {}), "workersToDelete": list(c.delete_pods)}
        specs[c.group.index] = g
    return {"metadata": {"resourceVersion": raycluster["metadata"]["resourceVersion"]},
            "spec": {"workerGroupSpecs": specs}}


def _group_for(d: ScaleDemand, groups: Sequence[Group]) -> Group | None:
    for pool in d.pools:
        for g in groups:
            if g.pool == pool and g.image == d.image and (not d.gpu_models or g.gpu_model in d.gpu_models) \
                    and g.gpus_per_node >= d.gpus_per_worker and g.max_replicas > 0:
                return g
    return None


def _nodes_for(d: ScaleDemand, g: Group) -> int:
    if g.image:  # a pod per job worker
        return d.workers
    per_node = g.gpus_per_node // d.gpus_per_worker if d.gpus_per_worker else d.workers
    return math.ceil(d.workers / max(1, per_node))


def _may_remove(g: Group, replicas: int, pool_gpus: Mapping[str, int], demand: ScaleInput) -> bool:
    return replicas - 1 >= g.min_replicas and \
        pool_gpus.get(g.pool, 0) - g.gpus_per_node >= demand.guaranteed_gpus.get(g.pool, 0.0)


def _still_there(g: Group, running: Sequence[WorkerPod]) -> tuple[str, ...]:
    """Earlier workersToDelete entries whose pods still exist (KubeRay may not have acted yet);
    names of pods already gone are dropped so the list does not grow forever."""
    names = {p.name for p in running}
    return tuple(n for n in g.workers_to_delete if n in names)


def _note(g: Group, request: tuple[float, int] | None, outstanding: int, need: int) -> str:
    if request is not None and outstanding > 0:
        at = dt.datetime.fromtimestamp(request[0], dt.timezone.utc).strftime("%H:%M")
        return f"scaling up: {request[1]} node{'s' if request[1] != 1 else ''} requested at {at} UTC"
    if outstanding > 0:  # requested before this broker led (or by someone else): starting
        return f"scaling up: {outstanding} node{'s' if outstanding != 1 else ''} starting in worker group {g.name}"
    if g.replicas >= g.max_replicas:
        return f"worker group {g.name} is at its maximum of {g.max_replicas} nodes"
    return f"scaling up: waiting for the rate limit (worker group {g.name}, {need} more nodes wanted)"


def _gpus_per_node(g: Mapping, tpl: Mapping) -> int:
    rsp = g.get("rayStartParams") or {}
    if "num-gpus" in rsp:
        return int(rsp["num-gpus"])
    for c in tpl.get("containers") or []:
        lim = (c.get("resources") or {}).get("limits") or {}
        if "nvidia.com/gpu" in lim:
            return int(lim["nvidia.com/gpu"])
    return 0


def _ray_labels(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)
