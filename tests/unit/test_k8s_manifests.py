"""The Kubernetes manifests agree with the code they deploy.

No cluster here, so these are static checks, each of a mistake that would break a deployment:
every kustomization resource exists; every overlay patch path points at an existing element;
the RayCluster worker groups carry the labels the Ray adapter reads; the broker and agent
containers' arguments are accepted by the real `broker up` and `broker-agent` parsers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agents.main import parse_args as agent_args
from broker.adapters.ray.local import GPU_MODEL_LABEL, POOL_LABEL

K8S = Path(__file__).resolve().parents[2] / "k8s"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_base_docs() -> list[dict]:
    kust = docs(K8S / "base" / "kustomization.yaml")[0]
    return [d for r in kust["resources"] for d in docs(K8S / "base" / r)]


def by_kind(kind: str) -> list[dict]:
    return [d for d in all_base_docs() if d["kind"] == kind]


@pytest.mark.parametrize("kust", sorted(K8S.rglob("kustomization.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_resources_exist(kust):
    for r in docs(kust)[0].get("resources", []):
        assert (kust.parent / r).exists(), f"{kust}: missing resource {r}"


@pytest.mark.parametrize("overlay", sorted((K8S / "overlays").iterdir()), ids=lambda p: p.name)
def test_overlay_patch_paths_exist(overlay):
    kust = docs(overlay / "kustomization.yaml")[0]
    for patch in kust.get("patches", []):
        target = next(d for d in all_base_docs() if d["kind"] == patch["target"]["kind"]
                      and d["metadata"]["name"] == patch["target"]["name"])
        for op in yaml.safe_load(patch["patch"]):
            node = target
            for part in op["path"].strip("/").split("/"):
                node = node[int(part)] if isinstance(node, list) else node[part]


def test_ray_worker_groups_carry_pool_and_model_labels():
    (rc,) = by_kind("RayCluster")
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head runs no jobs
    pools = set()
    for g in rc["spec"]["workerGroupSpecs"]:
        labels = dict(kv.split("=", 1) for kv in g["rayStartParams"]["labels"].split(","))
        assert POOL_LABEL in labels and GPU_MODEL_LABEL in labels, g["groupName"]
        assert int(g["rayStartParams"]["num-gpus"]) == g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        pools.add(labels[POOL_LABEL])
    assert pools == {"operation", "innovation"}


def test_broker_container_args_parse_with_broker_up():
    import typer.main

    from broker.cli import app

    (dep,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "broker"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["broker", "up"]
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("broker", list(args[1:]), resilient_parsing=False)
    sub = cmd.get_command(ctx, "up")
    params = sub.make_context("up", list(args[2:])).params
    assert params["demo"] is False and params["agent"] is False and params["allow_process"] is False


def test_agent_container_args_parse_with_broker_agent():
    (ds,) = by_kind("DaemonSet")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "broker-agent"
    ns = agent_args(c["args"][1:])
    assert ns.broker_url == "http://broker:8000" and ns.metrics_port == 9400
    assert any(e["name"] == "BROKER_NODE_ID" for e in c["env"])


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_ray_pods_and_the_broker_share_one_token_and_ray_admits_only_them():
    (rc,) = by_kind("RayCluster")
    groups = [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
    (broker,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "broker"]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    containers += broker["spec"]["template"]["spec"]["containers"]
    secrets = set()
    for c in containers:
        env = _env(c)
        assert env.get("RAY_AUTH_MODE") == "token", c["name"]
        ref = env["RAY_AUTH_TOKEN"]["secretKeyRef"]
        secrets.add((ref["name"], ref["key"]))
    assert len(secrets) == 1  # one cluster token for every Ray process and the broker's driver
    (policy,) = by_kind("NetworkPolicy")
    ray_selector = {"ray.io/cluster": rc["metadata"]["name"]}
    assert policy["spec"]["podSelector"]["matchLabels"] == ray_selector
    allowed = [p["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for p in rule["from"]]
    broker_labels = broker["spec"]["template"]["metadata"]["labels"]
    assert ray_selector in allowed
    assert any(sel.items() <= broker_labels.items() for sel in allowed)
    assert len(allowed) == 2  # nobody else
