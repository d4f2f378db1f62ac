"""The adapter's I/O against a local server that answers like the Kubernetes API
(tests/k8s/fake_api.py): the exact requests (paths, label selectors, watch resumption with
resourceVersion, PATCH bodies and content types) and what the adapter makes of the answers
(410 Gone -> list again, 409 -> read again and retry, TokenReview -> node-bound identity)."""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes.client import V1Node

from broker.adapters.k8s import connect
from broker.adapters.k8s.nodes import BROKER_TAINT_KEY
from broker.ports import ScaleDemand, ScaleInput
from broker.settings import Settings
from tests.k8s.fake_api import FakeKube, bookmark, event, gone, to_json
from tests.k8s.kit import A100, H100, group, node, pod, raycluster


@pytest.fixture
def fake():
    f = FakeKube()
    server = f.serve()
    f.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield f
    server.shutdown()
    server.server_close()


def settings_for(fake, **kw) -> Settings:
    return Settings(k8s_enabled=True, k8s_api_url=fake.url, k8s_namespace="compute-broker",
                    k8s_raycluster="compute-broker-ray", **kw)


@pytest.fixture
def kube(fake):
    fake.raycluster = raycluster(group("innovation-a100", pool="innovation", replicas=1, max_r=4, gpus=4))
    return connect(settings_for(fake), start=False)


def test_informer_lists_then_watches_from_the_lists_version_and_resumes(fake, kube):
    fake.add_node(node("gpu-1", {**A100, "compute-broker/pool": "innovation"}, rv="90"))
    inf = kube.node_informer
    inf.step()
    assert [r.query for r in fake.of("GET", "/api/v1/nodes")] == [{}]  # a plain LIST first
    assert inf.resource_version == "100"
    fake.watch_scripts["nodes"] = [
        [event("ADDED", node("gpu-2", H100, rv="101")), event("MODIFIED", node("gpu-1", A100, unschedulable=True, rv="102")),
         bookmark("105")],
        [event("DELETED", node("gpu-2", H100, rv="106"))],
    ]
    inf.step(timeout_s=7)
    inf.step(timeout_s=7)
    watches = [r.query for r in fake.of("GET", "/api/v1/nodes")[1:]]
    assert watches == [{"watch": "True", "resourceVersion": "100", "timeoutSeconds": "7", "allowWatchBookmarks": "True"},
                       {"watch": "True", "resourceVersion": "105", "timeoutSeconds": "7", "allowWatchBookmarks": "True"}]
    assert inf.resource_version == "106" and inf.relists == 1
    (gpu1,) = kube.nodes()
    assert gpu1.name == "gpu-1" and gpu1.state == "cordoned" and gpu1.reason == "kubernetes: cordoned"


@pytest.mark.parametrize("how", ["ERROR event in the stream", "HTTP 410 on the watch"])
def test_410_gone_lists_again_and_forgets_what_it_had(fake, kube, how):
    fake.add_node(node("gpu-1", A100))
    fake.add_node(node("gpu-2", A100))
    inf = kube.node_informer
    inf.step()
    del fake.nodes["gpu-2"]  # deleted while the watch was away: only a new LIST can tell
    fake.resource_version = 200
    fake.watch_scripts["nodes"] = [[gone()] if how.startswith("ERROR") else 410]
    inf.step()
    lists = [r for r in fake.of("GET", "/api/v1/nodes") if "watch" not in r.query]
    assert len(lists) == 2 and inf.relists == 2
    assert inf.resource_version == "200"
    assert [n.name for n in kube.nodes()] == ["gpu-1"]


def test_pods_are_watched_in_the_namespace_by_the_ray_cluster_label(fake, kube):
    fake.add_pod(pod("w-1", "gpu-1", ip="10.0.0.5"))
    fake.add_pod(pod("x-1", "gpu-1", cluster="another"))
    kube.pod_informer.step()
    (req,) = fake.of("GET", "/api/v1/namespaces/compute-broker/pods")
    assert req.query == {"labelSelector": "ray.io/cluster=compute-broker-ray"}
    assert [(w.name, w.node) for w in kube.worker_pods()] == [("w-1", "gpu-1")]


def test_broker_taint_is_a_strategic_merge_patch_guarded_by_resource_version(fake, kube):
    fake.add_node(node("gpu-1", A100, taints=[("nvidia.com/gpu", "present", "NoSchedule")], rv="7"))
    kube.set_broker_taint("gpu-1", "admin-draining")
    (patch,) = fake.of("PATCH")
    assert patch.path == "/api/v1/nodes/gpu-1"
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body == {"metadata": {"resourceVersion": "7"},
                          "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                                              {"key": BROKER_TAINT_KEY, "value": "admin-draining",
                                               "effect": "NoSchedule"}]}}
    assert "unschedulable" not in fake.nodes["gpu-1"]["spec"]  # never a cordon
    kube.set_broker_taint("gpu-1", "admin-draining")  # already there: a GET, no PATCH
    assert len(fake.of("PATCH")) == 1
    kube.set_broker_taint("gpu-1", None)
    assert fake.of("PATCH")[-1].body["spec"] == {"taints": [{"key": "nvidia.com/gpu", "value": "present",
                                                             "effect": "NoSchedule"}]}
    assert fake.nodes["gpu-1"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present",
                                                      "effect": "NoSchedule"}]


def test_a_concurrent_node_change_409_is_read_again_and_retried(fake, kube):
    fake.add_node(node("gpu-1", A100, rv="7"))
    fake.conflicts = 1
    kube.set_broker_taint("gpu-1", "gpu-fault")
    assert [r.method for r in fake.requests] == ["GET", "PATCH", "GET", "PATCH"]
    assert fake.nodes["gpu-1"]["spec"]["taints"][0]["value"] == "gpu-fault"


def test_autoscale_patches_the_raycluster_with_a_merge_patch(fake, kube):
    fake.add_node(node("gpu-1", {**A100, "compute-broker/pool": "innovation"}))
    fake.add_pod(pod("w-1", "gpu-1", ip="10.0.0.5"))
    kube.node_informer.step()
    kube.pod_informer.step()
    out = kube.autoscale(ScaleInput(demands=(ScaleDemand("j1", ("innovation",), (), 4, 2),),
                                    busy_nodes=frozenset({"gpu-1"})), now=1796378520.0)
    (patch,) = fake.of("PATCH")
    assert patch.path == "/apis/ray.io/v1/namespaces/compute-broker/rayclusters/compute-broker-ray"
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["metadata"] == {"resourceVersion": "100"}
    (g,) = patch.body["spec"]["workerGroupSpecs"]
    assert g["replicas"] == 3 and g["scaleStrategy"] == {"workersToDelete": []}
    assert out.notes == {"j1": "scaling up: 2 nodes requested at 10:02 UTC"}
    assert fake.raycluster["spec"]["workerGroupSpecs"][0]["replicas"] == 3


def test_a_refused_raycluster_patch_changes_nothing_remembered(fake, kube):
    from kubernetes.client.rest import ApiException

    fake.conflicts = 1
    with pytest.raises(ApiException) as e:
        kube.autoscale(ScaleInput(demands=(ScaleDemand("j1", ("innovation",), (), 4, 3),)), now=1796378520.0)
    assert e.value.status == 409
    assert kube.memory.ups == {}  # the next call tries again, unthrottled by a request that never happened


def _sa_token(pod_name: str) -> str:
    def b64(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    claims = {"aud": ["compute-broker"], "exp": 4102444800, "iss": "https://kubernetes.default.svc",
              "kubernetes.io": {"namespace": "compute-broker-agents", "pod": {"name": pod_name},
                                "serviceaccount": {"name": "broker-agent"}},
              "sub": "system:serviceaccount:compute-broker-agents:broker-agent"}
    return f"{b64({'alg': 'RS256'})}.{b64(claims)}.c2lnbmF0dXJl"


def review(pod_name: str, node_name: str | None, *, audiences=("compute-broker",),
           user="system:serviceaccount:compute-broker-agents:broker-agent") -> dict:
    extra = {"authentication.kubernetes.io/pod-name": [pod_name], "authentication.kubernetes.io/pod-uid": [f"uid-{pod_name}"]}
    if node_name:
        extra["authentication.kubernetes.io/node-name"] = [node_name]
    return {"authenticated": True, "audiences": list(audiences),
            "user": {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts"], "extra": extra}}


def test_token_review_binds_the_token_to_its_pods_node(fake, kube):
    tok = _sa_token("agent-abc")
    fake.reviews[tok] = review("agent-abc", "gpu-1")
    ident = kube.review_token(tok)
    (post,) = fake.of("POST")
    assert post.path == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert post.body["spec"] == {"token": tok, "audiences": ["compute-broker"]}
    assert (ident.namespace, ident.service_account, ident.pod, ident.node) == \
        ("compute-broker-agents", "broker-agent", "agent-abc", "gpu-1")
    assert ident.expires_at == 4102444800


def test_token_review_without_node_extra_reads_the_pod_and_checks_its_uid(fake, kube):
    tok = _sa_token("agent-abc")
    fake.reviews[tok] = review("agent-abc", None)
    fake.add_pod(pod("agent-abc", "gpu-7", namespace="compute-broker-agents", uid="uid-agent-abc"))
    assert kube.review_token(tok).node == "gpu-7"
    assert fake.of("GET")[-1].path == "/api/v1/namespaces/compute-broker-agents/pods/agent-abc"
    fake.pods["agent-abc"]["metadata"]["uid"] = "uid-of-a-new-pod-with-that-name"
    assert kube.review_token(tok) is None  # the token's pod is gone: no node to bind to


@pytest.mark.parametrize("status", [
    {"authenticated": False, "error": "token expired"},
    review("agent-abc", "gpu-1", audiences=("https://kubernetes.default.svc",)),
    review("agent-abc", "gpu-1", user="alice"),
], ids=["refused", "another audience", "not a ServiceAccount"])
def test_token_review_refusals(fake, kube, status):
    tok = _sa_token("agent-abc")
    fake.reviews[tok] = status
    assert kube.review_token(tok) is None


def test_bodies_served_are_valid_kubernetes_objects():
    """The fake refuses what a real API server could not serve (so a builder mistake fails)."""
    import kubernetes_validate

    bad = to_json(V1Node(api_version="v1", kind="Node", metadata={"name": "x"}, spec={"taints": [{"key": "k"}]}))
    with pytest.raises(kubernetes_validate.ValidationError):
        FakeKube().add_node(bad)
