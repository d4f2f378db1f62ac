"""The Kubernetes adapter: the only package that imports `kubernetes` (an import-linter
contract says so). `nodes` and `scaling` decide (pure functions over the client's model
objects), `api.KubeCluster` does the I/O, `executor.KubeRayExecutor` joins Ray's nodes to
Kubernetes nodes. `connect(settings)` builds the lot for `broker up` in cluster mode."""

from __future__ import annotations

from typing import Any


def connect(settings: Any, start: bool = True):
    """A `KubeCluster` for `settings` (k8s_* fields): in-cluster credentials (the pod's
    ServiceAccount) unless `k8s_api_url` names an API server (then `k8s_token_file`, if set,
    holds the bearer token). `start`: list nodes and pods and keep watching them."""
    from kubernetes import client, config

    from broker.adapters.k8s.api import KubeCluster
    from broker.adapters.k8s.nodes import NodeLabels
    from broker.adapters.k8s.scaling import Rules

    if settings.k8s_api_url:
        cfg = client.Configuration(host=settings.k8s_api_url)
        if settings.k8s_token_file:
            with open(settings.k8s_token_file) as f:
                cfg.api_key = {"authorization": "Bearer " + f.read().strip()}
    else:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
    labels = NodeLabels(pool=settings.k8s_pool_label, rack=settings.k8s_rack_label,
                        gpu_models=dict(settings.k8s_gpu_models))
    rules = Rules(cooldown_s=settings.k8s_scale_cooldown_s, max_up=settings.k8s_scale_up_max,
                  window_s=settings.k8s_scale_up_window_s, pool_node_label=settings.k8s_pool_label,
                  gpu_models=dict(settings.k8s_gpu_models))
    cluster = KubeCluster(client.ApiClient(cfg), namespace=settings.k8s_namespace, raycluster=settings.k8s_raycluster,
                          labels=labels, rules=rules, audience=settings.k8s_agent_audience)
    if start:
        cluster.start()
    return cluster
