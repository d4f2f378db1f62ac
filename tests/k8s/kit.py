"""Builders of Kubernetes objects with the `kubernetes` client's own model classes, shared by
the tests of tests/k8s (`node(...)`, `pod(...)`, `raycluster(...)`)."""

from __future__ import annotations

from kubernetes.client import (V1Container, V1Node, V1NodeCondition, V1NodeSpec, V1NodeStatus, V1ObjectMeta, V1Pod,
                               V1PodSpec, V1PodStatus, V1Taint)

H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "81559", "nvidia.com/mig.strategy": "none"}
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.count": "4",
        "nvidia.com/gpu.memory": "81920", "nvidia.com/mig.strategy": "none"}


def node(name: str, labels: dict | None = None, *, ready: str = "True", ready_reason: str | None = None,
         unschedulable: bool | None = None, taints: list[tuple[str, str | None, str]] = (),
         allocatable_gpus: str | None = None, rv: str = "1") -> V1Node:
    conditions = [] if ready is None else [V1NodeCondition(type="Ready", status=ready, reason=ready_reason,
                                                            message="kubelet stopped posting" if ready_reason else None)]
    return V1Node(
        api_version="v1", kind="Node",
        metadata=V1ObjectMeta(name=name, labels=dict(labels or {}), resource_version=rv),
        spec=V1NodeSpec(unschedulable=unschedulable,
                        taints=[V1Taint(key=k, value=v, effect=e) for k, v, e in taints] or None),
        status=V1NodeStatus(conditions=conditions,
                            allocatable={"nvidia.com/gpu": allocatable_gpus} if allocatable_gpus else None))


def pod(name: str, node_name: str | None, *, group: str = "innovation-a100", cluster: str = "compute-broker-ray",
        ip: str = "", node_type: str = "worker", phase: str = "Running", deleting: bool = False,
        namespace: str = "compute-broker", uid: str = "") -> V1Pod:
    import datetime as dt

    return V1Pod(
        api_version="v1", kind="Pod",
        metadata=V1ObjectMeta(name=name, namespace=namespace, uid=uid or f"uid-{name}", resource_version="1",
                              labels={"ray.io/cluster": cluster, "ray.io/group": group, "ray.io/node-type": node_type},
                              deletion_timestamp=dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc) if deleting else None),
        spec=V1PodSpec(node_name=node_name, containers=[V1Container(name="ray-worker", image="compute-broker:0.1.0")]),
        status=V1PodStatus(phase=phase, pod_ip=ip or None))


def group(name: str, *, pool: str, replicas: int, min_r: int = 0, max_r: int = 8, gpus: int = 4,
          product: str | None = None, to_delete: list[str] | None = None) -> dict:
    selector = {"compute-broker/pool": pool}
    if product:
        selector["nvidia.com/gpu.product"] = product
    g = {"groupName": name, "replicas": replicas, "minReplicas": min_r, "maxReplicas": max_r,
         "rayStartParams": {"num-gpus": str(gpus)},
         "template": {"spec": {"nodeSelector": selector,
                               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                               "containers": [{"name": "ray-worker", "image": "compute-broker:0.1.0",
                                               "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}
    if to_delete is not None:
        g["scaleStrategy"] = {"workersToDelete": list(to_delete)}
    return g


def raycluster(*groups: dict, rv: str = "100", name: str = "compute-broker-ray") -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": name, "namespace": "compute-broker", "resourceVersion": rv},
            "spec": {"rayVersion": "2.60.0", "enableInTreeAutoscaling": False,
                     "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                         {"name": "ray-head", "image": "compute-broker:0.1.0"}]}}},
                     "workerGroupSpecs": list(groups)}}
