"""`KubeRayExecutor`: the Ray executor with what Kubernetes knows about each node.

KubeRay runs one Ray worker pod per GPU node. Ray sees the pod (its address is the pod IP);
Kubernetes sees the node: GPU Feature Discovery labels, the pool label, zone and rack. This
wrapper joins the two in `nodes()`: each Ray node's pod (by IP) -> its Kubernetes node -> the
broker's pool and GPU model from the node, plus topology labels. Everything else is the Ray
executor's, unchanged.

Node names: the manifests label every Ray worker with `broker.io/node=$(K8S_NODE_NAME)` (the
downward API), so the broker's node id is the Kubernetes node name, which is what the agent
DaemonSet reports (`BROKER_NODE_ID` = `spec.nodeName`): telemetry joins placements by name.
A Ray node that carries no such label keeps the Ray adapter's id, and gains a
`kubernetes.io/hostname` label naming its node. A pod of an approved image's worker group is a
broker node of its own (`broker.io/node=$(POD_NAME)`, one job worker per pod): its
`broker.io/host` label names the Kubernetes node, for cordon sync and telemetry.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from broker.adapters.k8s.nodes import ZONE_LABEL, node_of_address
from broker.ports import HOST_LABEL, Executor, NodeObservation

HOSTNAME_LABEL = "kubernetes.io/hostname"
RACK_LABEL = "broker.io/rack"
GPU_MEMORY_LABEL = "broker.io/gpu-memory-mib"


class KubeRayExecutor:
    def __init__(self, inner: Executor, cluster) -> None:
        self.inner, self.cluster = inner, cluster

    def nodes(self) -> Sequence[NodeObservation]:
        facts = {n.name: n for n in self.cluster.nodes()}
        pods = self.cluster.worker_pods()
        return [enrich(o, facts, pods) for o in self.inner.nodes()]

    def __getattr__(self, name: str) -> Any:  # launch, status, stop, release, ...: Ray's
        return getattr(self.inner, name)


def enrich(obs: NodeObservation, facts, pods) -> NodeObservation:
    """`obs` with pool, GPU model and topology from its Kubernetes node (unchanged when the
    Ray node runs in no pod the cluster knows: a head, a node outside Kubernetes)."""
    name = node_of_address(pods, obs.address) or (obs.id if obs.id in facts else None)
    node = facts.get(name) if name else None
    if node is None:
        return obs
    labels = {**obs.labels, HOSTNAME_LABEL: node.name, HOST_LABEL: node.name}
    for key, value in ((ZONE_LABEL, node.zone), (RACK_LABEL, node.rack),
                       (GPU_MEMORY_LABEL, str(node.gpu_memory_mb) if node.gpu_memory_mb else "")):
        if value:
            labels[key] = value
    return replace(obs, pool=node.pool or obs.pool, gpu_model=node.gpu_model or obs.gpu_model, labels=labels)
