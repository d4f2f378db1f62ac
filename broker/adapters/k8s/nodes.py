"""Pure decisions over Kubernetes Nodes and Pods: what the broker learns from a node, why a
node takes no work, which Ray worker pod runs on which node, and the broker's own taint.

Everything here is a function of the `kubernetes` client's model objects (V1Node, V1Pod,
V1Taint, V1Toleration) and returns plain values: no request, no clock. The I/O lives in
`broker.adapters.k8s.api`.

GPU facts come from NVIDIA GPU Feature Discovery (GFD) labels, so no worker group has to
declare a hand-written GPU model:

- `nvidia.com/gpu.product`  e.g. "NVIDIA-H100-80GB-HBM3" (with MIG "single": "...-MIG-1g.10gb")
- `nvidia.com/gpu.count`    GPUs on the node (MIG "single": MIG devices)
- `nvidia.com/gpu.memory`   MiB per GPU (MIG "single": per MIG device)
- `nvidia.com/mig.strategy` "none" | "single" | "mixed"

The count the device plugin advertises (`status.allocatable["nvidia.com/gpu"]`) wins over the
label when both are there: it is what pods can actually request. With MIG "mixed" the node
offers `nvidia.com/mig-<profile>` resources and no whole GPUs: the broker counts 0 GPUs there
and says why (`mig mixed` in the reason of an otherwise empty node).

Invariant: the broker's own taint (`BROKER_TAINT_KEY`) never makes a node unschedulable in the
broker (the broker put it there because the node already is), and `with_broker_taint` never
changes any other taint, nor `spec.unschedulable` (a human's cordon is theirs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from kubernetes.client import V1Node, V1Pod, V1Taint, V1Toleration

from broker.ports import CLUSTER_REASON as REASON_PREFIX, ClusterNode

PRODUCT_LABEL = "nvidia.com/gpu.product"
COUNT_LABEL = "nvidia.com/gpu.count"
MEMORY_LABEL = "nvidia.com/gpu.memory"
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
GPU_RESOURCE = "nvidia.com/gpu"
ZONE_LABEL = "topology.kubernetes.io/zone"
BROKER_TAINT_KEY = "broker.io/unschedulable"
BROKER_TAINT_EFFECT = "NoSchedule"
# KubeRay's pod labels
RAY_CLUSTER_LABEL = "ray.io/cluster"
RAY_GROUP_LABEL = "ray.io/group"
RAY_NODE_TYPE_LABEL = "ray.io/node-type"
# the condition / taints a cordon or NotReady already explains (reported once, as that)
_IMPLIED_TAINTS = {"node.kubernetes.io/unschedulable", "node.kubernetes.io/not-ready",
                   "node.kubernetes.io/unreachable"}


@dataclass(frozen=True, slots=True)
class NodeLabels:
    """Which node labels carry the broker's pool and rack (deployment settings)."""

    pool: str = "compute-broker/pool"
    rack: str = "topology.compute-broker.io/rack"
    default_pool: str = "innovation"
    gpu_models: Mapping[str, str] | None = None  # GFD product -> broker GPU model name


def gpu_model_name(product: str, aliases: Mapping[str, str] | None = None) -> str:
    """The broker's GPU model for a GFD product: an alias when configured, else the product
    without its vendor prefix ("NVIDIA-H100-80GB-HBM3" -> "H100-80GB-HBM3")."""
    if not product:
        return ""
    if aliases and product in aliases:
        return aliases[product]
    return product[len("NVIDIA-"):] if product.startswith("NVIDIA-") else product


def cluster_node(node: V1Node, labels: NodeLabels = NodeLabels(),
                 tolerations: Sequence[V1Toleration] = ()) -> ClusterNode:
    """What the broker learns from one Node: identity, GPU facts, pool, topology and whether it
    may take new work (with the reason). `tolerations`: what the Ray worker pods tolerate (a
    `nvidia.com/gpu:NoSchedule` taint they tolerate does not make a GPU node unschedulable)."""
    meta_labels = dict(node.metadata.labels or {})
    mig = meta_labels.get(MIG_STRATEGY_LABEL, "none")
    allocatable = (node.status.allocatable or {}) if node.status else {}
    gpus = _int(allocatable.get(GPU_RESOURCE), _int(meta_labels.get(COUNT_LABEL), 0))
    if mig == "mixed":
        gpus = 0  # only nvidia.com/mig-<profile> resources: no whole GPU to place a worker on
    state, reason = unschedulable(node, tolerations)
    taint = broker_taint(node)
    return ClusterNode(
        name=node.metadata.name, schedulable=state == "ready", reason=reason, state=state,
        pool=meta_labels.get(labels.pool, labels.default_pool),
        gpu_model=gpu_model_name(meta_labels.get(PRODUCT_LABEL, ""), labels.gpu_models),
        gpus=gpus, gpu_memory_mb=_int(meta_labels.get(MEMORY_LABEL), 0),
        zone=meta_labels.get(ZONE_LABEL, ""), rack=meta_labels.get(labels.rack, ""),
        broker_taint=None if taint is None else (taint.value or ""),
    )


def unschedulable(node: V1Node, tolerations: Sequence[V1Toleration] = ()) -> tuple[str, str]:
    """(state, reason): ("ready", "") or the first of, in this order, NotReady -> unhealthy,
    a NoExecute taint -> unhealthy (its pods are evicted), a cordon -> cordoned, a NoSchedule
    taint -> cordoned. Tolerated taints, PreferNoSchedule and the broker's own taint count
    for nothing."""
    ready = next((c for c in (node.status.conditions or []) if c.type == "Ready"), None) if node.status else None
    if ready is None or ready.status != "True":
        why = "no Ready condition" if ready is None else \
            (f"Ready={ready.status}" + (f" ({ready.reason}: {ready.message})" if ready.reason else ""))
        return "unhealthy", f"{REASON_PREFIX}NotReady: {why}"[:500]
    taints = [t for t in (node.spec.taints or []) if t.key != BROKER_TAINT_KEY and t.key not in _IMPLIED_TAINTS
              and not any(tolerates(tol, t) for tol in tolerations)] if node.spec else []
    for t in taints:
        if t.effect == "NoExecute":
            return "unhealthy", f"{REASON_PREFIX}tainted {_taint_text(t)}"
    if node.spec is not None and node.spec.unschedulable:
        return "cordoned", f"{REASON_PREFIX}cordoned"
    for t in taints:
        if t.effect == "NoSchedule":
            return "cordoned", f"{REASON_PREFIX}tainted {_taint_text(t)}"
    return "ready", ""


def tolerates(tol: V1Toleration, taint: V1Taint) -> bool:
    """Kubernetes' toleration semantics (operator Exists / Equal; empty key with Exists
    matches every taint; empty effect matches every effect)."""
    if tol.effect and tol.effect != taint.effect:
        return False
    if (tol.operator or "Equal") == "Exists":
        return not tol.key or tol.key == taint.key
    return tol.key == taint.key and (tol.value or "") == (taint.value or "")


def broker_taint(node: V1Node) -> V1Taint | None:
    return next((t for t in (node.spec.taints or []) if t.key == BROKER_TAINT_KEY), None) if node.spec else None


def with_broker_taint(node: V1Node, value: str | None) -> list[V1Taint] | None:
    """The node's complete taint list with the broker's taint set to `value` (None: removed),
    or None when nothing changes. Other taints are kept as they are, in their order."""
    current = list(node.spec.taints or []) if node.spec else []
    mine = broker_taint(node)
    if value is None:
        return None if mine is None else [t for t in current if t.key != BROKER_TAINT_KEY]
    value = taint_value(value)
    if mine is not None and (mine.value or "") == value and mine.effect == BROKER_TAINT_EFFECT:
        return None
    return [t for t in current if t.key != BROKER_TAINT_KEY] + \
        [V1Taint(key=BROKER_TAINT_KEY, value=value, effect=BROKER_TAINT_EFFECT)]


def taint_value(text: str) -> str:
    """A taint value (label-value syntax: 63 characters of [A-Za-z0-9._-], alphanumeric at both
    ends) made from free text: "admin: GPU 3 fan" -> "admin-GPU-3-fan"."""
    out = "".join(c if c.isalnum() or c in "._-" else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out[:63].strip("-._") or "drained"


def taints_body(taints: Iterable[V1Taint], resource_version: str | None) -> dict:
    """The strategic-merge patch that replaces `spec.taints` (the list has no merge key, so the
    whole list is sent) guarded by `metadata.resourceVersion`: a concurrent change of the node
    makes the PATCH fail with 409 instead of dropping someone else's taint."""
    body: dict = {"spec": {"taints": [{k: v for k, v in (("key", t.key), ("value", t.value), ("effect", t.effect),
                                                         ("timeAdded", t.time_added)) if v is not None}
                                      for t in taints]}}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    return body


# --------------------------------------------------------------------------- Ray worker pods


@dataclass(frozen=True, slots=True)
class WorkerPod:
    """A running Ray worker pod of the broker's RayCluster and the Kubernetes node it is on."""

    name: str
    group: str
    node: str
    ip: str


def worker_pods(pods: Iterable[V1Pod], cluster: str) -> list[WorkerPod]:
    """Ray worker pods of `cluster` that are scheduled to a node and not being deleted (a pod
    being deleted is on its way out: its node is not the group's any more)."""
    out = []
    for p in pods:
        lab = p.metadata.labels or {}
        if lab.get(RAY_CLUSTER_LABEL) != cluster or lab.get(RAY_NODE_TYPE_LABEL) != "worker":
            continue
        if p.metadata.deletion_timestamp is not None or not (p.spec and p.spec.node_name):
            continue
        if p.status is not None and p.status.phase in ("Succeeded", "Failed"):
            continue
        out.append(WorkerPod(name=p.metadata.name, group=lab.get(RAY_GROUP_LABEL, ""), node=p.spec.node_name,
                             ip=(p.status.pod_ip or "") if p.status else ""))
    return sorted(out, key=lambda w: w.name)


def node_of_address(pods: Sequence[WorkerPod], address: str) -> str | None:
    """The Kubernetes node of the Ray node at `address` (a Ray worker's address is its pod IP)."""
    return next((w.node for w in pods if w.ip and w.ip == address), None)


def _taint_text(t: V1Taint) -> str:
    return f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}"


def _int(v, default: int) -> int:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return default
