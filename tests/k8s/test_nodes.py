"""The adapter's node decisions, as tables of named cases over the client's model classes:
what the broker learns from a Node (GFD labels, pool, topology), why a node takes no work,
the broker's own taint, and which Ray worker pod runs on which node."""

from __future__ import annotations

import pytest
from kubernetes.client import V1Taint, V1Toleration

from broker.adapters.k8s import nodes as kn
from tests.k8s.kit import A100, H100, node, pod

GPU_TOLERATION = V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
LABELS = kn.NodeLabels(pool="compute-broker/pool", rack="topology.compute-broker.io/rack")

FACTS = [
    ("gfd h100, pool and topology",
     node("gpu-1", {**H100, "compute-broker/pool": "operation", "topology.kubernetes.io/zone": "odense-a",
                    "topology.compute-broker.io/rack": "r12"}),
     dict(pool="operation", gpu_model="H100-80GB-HBM3", gpus=8, gpu_memory_mb=81559, zone="odense-a", rack="r12")),
    ("no pool label: the default pool", node("gpu-2", A100),
     dict(pool="innovation", gpu_model="A100-SXM4-80GB", gpus=4, gpu_memory_mb=81920, zone="", rack="")),
    ("the device plugin's allocatable count wins over the label (one GPU held back)",
     node("gpu-3", A100, allocatable_gpus="3"), dict(gpus=3)),
    ("mig single: MIG devices are the GPUs, the product names the profile",
     node("gpu-4", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "nvidia.com/gpu.count": "14",
                    "nvidia.com/gpu.memory": "4864", "nvidia.com/mig.strategy": "single"}),
     dict(gpu_model="A100-SXM4-40GB-MIG-1g.5gb", gpus=14, gpu_memory_mb=4864)),
    ("mig mixed: no whole GPU to place a worker on",
     node("gpu-5", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "nvidia.com/gpu.count": "1",
                    "nvidia.com/mig.strategy": "mixed"}), dict(gpus=0)),
    ("a node without GPUs", node("cpu-1", {}), dict(gpus=0, gpu_model="", gpu_memory_mb=0)),
]


@pytest.mark.parametrize("name,n,want", FACTS, ids=[c[0] for c in FACTS])
def test_node_facts_come_from_gfd_labels(name, n, want):
    got = kn.cluster_node(n, LABELS)
    assert {k: getattr(got, k) for k in want} == want
    assert got.name == n.metadata.name


def test_gpu_model_aliases_name_the_broker_flavor():
    n = node("gpu-1", H100)
    got = kn.cluster_node(n, kn.NodeLabels(gpu_models={"NVIDIA-H100-80GB-HBM3": "H100"}))
    assert got.gpu_model == "H100"


STATES = [
    ("ready", node("n", H100), "ready", ""),
    ("cordoned by a human", node("n", H100, unschedulable=True), "cordoned", "kubernetes: cordoned"),
    ("NotReady", node("n", H100, ready="Unknown", ready_reason="NodeStatusUnknown"), "unhealthy",
     "kubernetes: NotReady: Ready=Unknown (NodeStatusUnknown: kubelet stopped posting)"),
    ("no Ready condition at all", node("n", H100, ready=None), "unhealthy", "kubernetes: NotReady: no Ready condition"),
    ("NotReady wins over a cordon", node("n", H100, ready="False", unschedulable=True), "unhealthy", None),
    ("NoSchedule taint", node("n", H100, taints=[("maintenance", "bios", "NoSchedule")]), "cordoned",
     "kubernetes: tainted maintenance=bios:NoSchedule"),
    ("NoExecute taint: pods are evicted", node("n", H100, taints=[("gpu-broken", None, "NoExecute")]), "unhealthy",
     "kubernetes: tainted gpu-broken:NoExecute"),
    ("NoExecute wins over a cordon", node("n", H100, unschedulable=True, taints=[("x", None, "NoExecute")]),
     "unhealthy", "kubernetes: tainted x:NoExecute"),
    ("PreferNoSchedule is no reason", node("n", H100, taints=[("soft", None, "PreferNoSchedule")]), "ready", ""),
    ("the GPU taint the Ray workers tolerate is no reason",
     node("n", H100, taints=[("nvidia.com/gpu", "present", "NoSchedule")]), "ready", ""),
    ("the broker's own taint is no reason (it is there because the broker drained the node)",
     node("n", H100, taints=[(kn.BROKER_TAINT_KEY, "admin-draining", "NoSchedule")]), "ready", ""),
    ("the cordon's own taint is reported once, as the cordon",
     node("n", H100, unschedulable=True, taints=[("node.kubernetes.io/unschedulable", None, "NoSchedule")]),
     "cordoned", "kubernetes: cordoned"),
]


@pytest.mark.parametrize("name,n,state,reason", STATES, ids=[c[0] for c in STATES])
def test_unschedulable_nodes_get_a_state_and_a_reason(name, n, state, reason):
    got = kn.cluster_node(n, LABELS, [GPU_TOLERATION])
    assert got.state == state and got.schedulable is (state == "ready")
    if reason is not None:
        assert got.reason == reason


TOLERATIONS = [
    ("Exists on the key, any value", V1Toleration(key="a", operator="Exists"), V1Taint(key="a", value="x", effect="NoSchedule"), True),
    ("Exists with no key matches every taint", V1Toleration(operator="Exists"), V1Taint(key="b", effect="NoExecute"), True),
    ("Equal needs the value", V1Toleration(key="a", value="x"), V1Taint(key="a", value="y", effect="NoSchedule"), False),
    ("Equal with the value", V1Toleration(key="a", operator="Equal", value="x"), V1Taint(key="a", value="x", effect="NoSchedule"), True),
    ("another effect", V1Toleration(key="a", operator="Exists", effect="NoSchedule"), V1Taint(key="a", effect="NoExecute"), False),
    ("another key", V1Toleration(key="a", operator="Exists"), V1Taint(key="b", effect="NoSchedule"), False),
]


@pytest.mark.parametrize("name,tol,taint,want", TOLERATIONS, ids=[c[0] for c in TOLERATIONS])
def test_toleration_semantics_are_kubernetes(name, tol, taint, want):
    assert kn.tolerates(tol, taint) is want


OTHERS = [("maintenance", "bios", "NoSchedule"), ("nvidia.com/gpu", "present", "NoSchedule")]
TAINTS = [
    ("drain: the broker's taint is added after the others", node("n", taints=OTHERS), "admin-draining",
     [*OTHERS, (kn.BROKER_TAINT_KEY, "admin-draining", "NoSchedule")]),
    ("drain twice: nothing to send", node("n", taints=[*OTHERS, (kn.BROKER_TAINT_KEY, "admin-draining", "NoSchedule")]),
     "admin-draining", None),
    ("another reason: the value changes in place of the old taint",
     node("n", taints=[(kn.BROKER_TAINT_KEY, "admin-cordoned", "NoSchedule"), *OTHERS]), "gpu-fault",
     [*OTHERS, (kn.BROKER_TAINT_KEY, "gpu-fault", "NoSchedule")]),
    ("lift: only the broker's taint goes",
     node("n", taints=[OTHERS[0], (kn.BROKER_TAINT_KEY, "gpu-fault", "NoSchedule"), OTHERS[1]]), None, OTHERS),
    ("lift with no taint: nothing to send", node("n", taints=OTHERS), None, None),
    ("a human's cordon is left alone", node("n", unschedulable=True), "admin-draining",
     [(kn.BROKER_TAINT_KEY, "admin-draining", "NoSchedule")]),
]


@pytest.mark.parametrize("name,n,value,want", TAINTS, ids=[c[0] for c in TAINTS])
def test_broker_drain_is_its_own_taint_never_a_cordon(name, n, value, want):
    got = kn.with_broker_taint(n, value)
    assert (None if got is None else [(t.key, t.value, t.effect) for t in got]) == want
    if got is not None:
        body = kn.taints_body(got, "42")
        assert set(body) == {"metadata", "spec"} and set(body["spec"]) == {"taints"}  # never spec.unschedulable
        assert body["metadata"] == {"resourceVersion": "42"}


@pytest.mark.parametrize("text,want", [("admin: GPU 3 fan!", "admin-GPU-3-fan"), ("x" * 80, "x" * 63),
                                       ("--", "drained"), ("gpu-fault", "gpu-fault")])
def test_taint_values_are_label_values(text, want):
    assert kn.taint_value(text) == want


def test_worker_pods_map_to_their_nodes_and_skip_the_rest():
    pods = [pod("w-1", "gpu-1", ip="10.0.0.5"), pod("w-2", "gpu-2", ip="10.0.0.6", group="operation-h100"),
            pod("head", "cpu-1", node_type="head", ip="10.0.0.2"),
            pod("pending", None),  # not scheduled yet: no node
            pod("leaving", "gpu-3", deleting=True),
            pod("done", "gpu-4", phase="Failed"),
            pod("other", "gpu-5", cluster="someone-elses")]
    got = kn.worker_pods(pods, "compute-broker-ray")
    assert [(w.name, w.group, w.node) for w in got] == [("w-1", "innovation-a100", "gpu-1"),
                                                       ("w-2", "operation-h100", "gpu-2")]
    assert kn.node_of_address(got, "10.0.0.6") == "gpu-2"
    assert kn.node_of_address(got, "10.0.0.2") is None  # the head is no worker


def test_a_ray_node_takes_pool_model_and_topology_from_its_kubernetes_node():
    from dataclasses import replace

    from broker.adapters.k8s.executor import enrich
    from broker.ports import NodeObservation
    from scheduler.model import Resources

    facts = {"gpu-1": kn.cluster_node(node("gpu-1", {**H100, "compute-broker/pool": "operation",
                                                     "topology.kubernetes.io/zone": "odense-a"}), LABELS)}
    pods = kn.worker_pods([pod("w-1", "gpu-1", ip="10.0.0.5")], "compute-broker-ray")
    ray_node = NodeObservation(id="3f9a...", hostname="w-1", address="10.0.0.5", pool="innovation", gpu_model="generic",
                               capacity=Resources(gpus=8, cpus=32, memory_gb=256))
    got = enrich(ray_node, facts, pods)
    assert (got.id, got.pool, got.gpu_model) == ("3f9a...", "operation", "H100-80GB-HBM3")
    assert got.labels == {"kubernetes.io/hostname": "gpu-1", "broker.io/host": "gpu-1",
                          "topology.kubernetes.io/zone": "odense-a", "broker.io/gpu-memory-mib": "81559"}
    assert enrich(replace(ray_node, address="10.9.9.9"), facts, pods) == replace(ray_node, address="10.9.9.9")
