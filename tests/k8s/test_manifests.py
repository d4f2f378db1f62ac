"""The manifests of k8s/, rendered (tests/k8s/kustomize.py; compared with `kubectl kustomize`
where kubectl is installed) and validated against the real schemas: core resources with
kubernetes-validate at `KUBERNETES_VERSION` (strict: unknown fields fail), KubeRay,
CloudNativePG and Prometheus-operator resources against the OpenAPI schemas of their CRDs
(../shared/crds, read in place; made strict the same way). Then the rules a platform team
checks: Pod Security `restricted` for the broker and Ray pods, the agent's exception and why,
least-privilege RBAC (every request the adapter makes is granted, nothing else is), probes,
resources, disruption budgets, two broker replicas, and that the containers' arguments and
settings are what the code accepts."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "crds"
KUBERNETES_VERSION = "1.33.0"  # the Kubernetes version the core manifests are validated against
TARGETS = ["base", "overlays/dev", "overlays/region"]
CRD_GROUPS = ("ray.io", "postgresql.cnpg.io", "monitoring.coreos.com")


@functools.lru_cache(maxsize=None)
def _rendered(target: str) -> str:
    return json.dumps(render(K8S / target))


def rendered(target: str) -> list[dict]:
    """The rendered target (rendered once per session; each caller gets its own copy)."""
    return json.loads(_rendered(target))


def one(docs, kind, name):
    (d,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return d


@pytest.mark.parametrize("target", TARGETS)
def test_renderer_agrees_with_kubectl_kustomize(target):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the renderer alone is used")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    theirs = {key(d): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {key(d): d for d in rendered(target)}
    assert ours == theirs


@pytest.mark.parametrize("target", TARGETS)
def test_core_resources_are_valid_kubernetes_objects(target):
    core = [d for d in rendered(target) if d["apiVersion"].split("/")[0] not in CRD_GROUPS]
    assert len(core) > 10
    for d in core:
        kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)


def _strict(schema):
    """The CRD schema with unknown fields refused (the API server would prune them silently,
    which hides a typo), except where the schema preserves unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _crds() -> dict[tuple[str, str], dict]:
    """(group, kind) -> CRD, each file parsed once (the RayCluster CRD alone is megabytes)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = {}
    for f in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=loader)
        out[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = crd
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    crd = _crds().get((group, kind))
    if crd is None:
        raise LookupError(f"no CRD for {api_version} {kind} in {CRDS}")
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(v["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_match_their_crd_schemas(target):
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is not there")
    custom = [d for d in rendered(target) if d["apiVersion"].split("/")[0] in CRD_GROUPS]
    kinds = {d["kind"] for d in custom}
    assert {"RayCluster", "ServiceMonitor", "PodMonitor"} <= kinds
    for d in custom:
        crd_validator(d["apiVersion"], d["kind"]).validate(d)


def test_the_strict_crd_check_catches_a_misspelt_field():
    rc = json.loads(json.dumps(one(rendered("base"), "RayCluster", "compute-broker-ray")))
    rc["spec"]["enableInTreeAutoscalling"] = False
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(rc["apiVersion"], "RayCluster").validate(rc)


def test_production_overlay_runs_postgres_as_a_cloudnativepg_cluster_the_broker_uses():
    docs = rendered("overlays/region")
    db = one(docs, "Cluster", "broker-db")
    assert db["spec"]["instances"] >= 3 and db["spec"]["bootstrap"]["initdb"] == {"database": "broker", "owner": "broker"}
    env = one(docs, "Deployment", "broker")["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names.index("DB_USER") < names.index("BROKER_DATABASE_URL") and names.index("DB_PASSWORD") < names.index(
        "BROKER_DATABASE_URL")  # Kubernetes expands $(VAR) only from variables defined before
    url = env[names.index("BROKER_DATABASE_URL")]["value"]
    assert url.startswith("postgresql+psycopg://$(DB_USER):$(DB_PASSWORD)@broker-db-rw.")
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if e["name"].startswith("DB_")} == {"broker-db-app"}


# ----------------------------------------------------------------------------- Pod Security


def pod_specs(docs):
    """(owner, namespace, pod spec) of every pod template."""
    for d in docs:
        ns = d["metadata"].get("namespace", "")
        if d["kind"] in ("Deployment", "DaemonSet"):
            yield d["metadata"]["name"], ns, d["spec"]["template"]["spec"]
        if d["kind"] == "RayCluster":
            yield "ray-head", ns, d["spec"]["headGroupSpec"]["template"]["spec"]
            for g in d["spec"]["workerGroupSpecs"]:
                yield g["groupName"], ns, g["template"]["spec"]


def restricted_violations(spec: dict) -> list[str]:
    """The Pod Security `restricted` rules (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    bad = []
    for host in ("hostPID", "hostIPC", "hostNetwork"):
        if spec.get(host):
            bad.append(host)
    if any("hostPath" in v for v in spec.get("volumes") or []):
        bad.append("hostPath volume")
    pod_sc = spec.get("securityContext") or {}
    for c in spec["containers"] + (spec.get("initContainers") or []):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: allowPrivilegeEscalation not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            bad.append(f"{c['name']}: capabilities not dropped")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{c['name']}: capabilities added")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            bad.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{c['name']}: runs as root")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{c['name']}: seccomp")
    return bad


def test_namespaces_enforce_restricted_and_only_the_agents_one_is_privileged():
    ns = {d["metadata"]["name"]: d["metadata"]["labels"] for d in rendered("base") if d["kind"] == "Namespace"}
    assert ns["compute-broker"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns["compute-broker-agents"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.parametrize("target", TARGETS)
def test_broker_and_ray_pods_meet_pod_security_restricted(target):
    specs = [(o, ns, s) for o, ns, s in pod_specs(rendered(target))]
    restricted = [(o, s) for o, ns, s in specs if ns == "compute-broker"]
    assert {o for o, _ in restricted} >= {"broker", "ray-head", "operation-h100", "innovation-a100"}
    for owner, spec in restricted:
        assert restricted_violations(spec) == [], owner
    others = {(o, ns) for o, ns, _ in specs if ns != "compute-broker"}
    assert others == {("broker-agent", "compute-broker-agents")}  # nothing else runs privileged


def test_the_agent_needs_exactly_its_documented_exceptions():
    (ds,) = [d for d in rendered("base") if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert sorted(restricted_violations(spec)) == sorted(
        ["hostPID", "hostPath volume", "agent: capabilities added", "agent: runAsNonRoot", "agent: runs as root"])
    (c,) = spec["containers"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False


# ----------------------------------------------------------------------------- RBAC


def grants(docs, subject_ns="compute-broker", subject="broker"):
    """(apiGroup, resource, verb, namespace or '*', resourceName or '*') granted to the broker."""
    roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    out = set()
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == subject and s["namespace"] == subject_ns
                   for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        role = roles[(ref["kind"], b["metadata"].get("namespace", "") if ref["kind"] == "Role" else "", ref["name"])]
        ns = b["metadata"].get("namespace", "*") if b["kind"] == "RoleBinding" else "*"
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        for name in rule.get("resourceNames") or ["*"]:
                            out.add((g, r, v, ns, name))
    return out


def test_broker_rbac_is_exactly_what_the_adapter_uses():
    g = grants(rendered("base"))
    assert not any("*" in (gr[0], gr[1], gr[2]) for gr in g)  # no wildcards
    assert g == {
        ("", "nodes", "get", "*", "*"), ("", "nodes", "list", "*", "*"), ("", "nodes", "watch", "*", "*"),
        ("", "nodes", "patch", "*", "*"),
        ("authentication.k8s.io", "tokenreviews", "create", "*", "*"),
        ("", "pods", "get", "compute-broker", "*"), ("", "pods", "list", "compute-broker", "*"),
        ("", "pods", "watch", "compute-broker", "*"),
        ("ray.io", "rayclusters", "get", "compute-broker", "compute-broker-ray"),
        ("ray.io", "rayclusters", "patch", "compute-broker", "compute-broker-ray"),
        ("", "pods", "get", "compute-broker-agents", "*"),
    }
    assert grants(rendered("base"), "compute-broker-agents", "broker-agent") == set()  # the agent: nothing


def _allowed(g, group, resource, verb, ns, name) -> bool:
    return any(gr[:3] == (group, resource, verb) and gr[3] in ("*", ns) and gr[4] in ("*", name) for gr in g)


def test_every_request_the_adapter_made_in_the_api_tests_is_granted(tmp_path):
    """Replays the adapter's calls against the fake API and checks each against the RBAC."""
    from tests.k8s import test_api as t
    from tests.k8s.fake_api import FakeKube
    from tests.k8s.kit import A100, node, pod

    fake = FakeKube()
    server = fake.serve()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        from broker.adapters.k8s import connect
        from broker.ports import ScaleDemand, ScaleInput

        fake.raycluster = t.raycluster(t.group("innovation-a100", pool="innovation", replicas=1, gpus=4))
        fake.add_node(node("gpu-1", A100))
        fake.add_pod(pod("w-1", "gpu-1", ip="10.0.0.5"))
        fake.add_pod(pod("agent-a", "gpu-1", namespace="compute-broker-agents", uid="uid-agent-a"))
        kube = connect(t.settings_for(fake), start=False)
        kube.start()  # list + watch both kinds in threads
        kube.stop()
        kube.set_broker_taint("gpu-1", "admin-draining")
        kube.autoscale(ScaleInput(demands=(ScaleDemand("j", ("innovation",), (), 4, 3),)), now=0.0)
        tok = t._sa_token("agent-a")
        fake.reviews[tok] = t.review("agent-a", None)
        assert kube.review_token(tok).node == "gpu-1"
    finally:
        server.shutdown()
        server.server_close()
    g = grants(rendered("base"))
    seen = set()
    for r in fake.requests:
        parts = r.path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        ns = ""
        if rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        resource, name = rest[0], (rest[1] if len(rest) > 1 else "")
        verb = {"PATCH": "patch", "POST": "create"}.get(r.method) or \
            ("watch" if r.query.get("watch") else "get" if name else "list")
        assert _allowed(g, group, resource, verb, ns, name), (r.method, r.path, r.query)
        seen.add((group, resource, verb))
    assert {("", "nodes", "watch"), ("", "pods", "list"), ("", "nodes", "patch"), ("ray.io", "rayclusters", "patch"),
            ("authentication.k8s.io", "tokenreviews", "create"), ("", "pods", "get")} <= seen


# ----------------------------------------------------------------------------- the rest of a platform review


def test_two_broker_replicas_spread_with_probes_resources_and_a_disruption_budget():
    docs = rendered("base")
    dep = one(docs, "Deployment", "broker")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(c)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert one(docs, "PodDisruptionBudget", "broker")["spec"]["minAvailable"] == 1
    assert one(docs, "PodDisruptionBudget", "ray-workers")["spec"]["maxUnavailable"] == 1
    for owner, _, spec in pod_specs(docs):
        for c in spec["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"].get("memory"), owner
    assert one(rendered("overlays/dev"), "Deployment", "broker")["spec"]["replicas"] == 1


def test_broker_container_args_parse_with_broker_up_and_its_settings_load():
    import typer.main

    from broker.cli import app
    from broker.settings import Settings

    docs = rendered("overlays/region")
    dep = one(docs, "Deployment", "broker")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("broker", list(args[1:]), resilient_parsing=False)
    params = cmd.get_command(ctx, "up").make_context("up", list(args[2:])).params
    assert params["demo"] is False and params["agent"] is False and params["allow_process"] is False
    assert str(params["data_dir"]) == "/var/lib/broker"
    data = one(docs, "ConfigMap", "broker-settings")["data"]
    env = {k: v for k, v in data.items()}
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=False):
        s = Settings()
    assert s.k8s_enabled and s.k8s_raycluster == one(docs, "RayCluster", "compute-broker-ray")["metadata"]["name"]
    assert s.k8s_gpu_models["NVIDIA-H100-80GB-HBM3"] == "H100"
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    assert s.k8s_agent_namespace == ds["metadata"]["namespace"]
    assert s.k8s_agent_service_account == ds["spec"]["template"]["spec"]["serviceAccountName"]
    (vol,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "token"]
    assert vol["projected"]["sources"][0]["serviceAccountToken"]["audience"] == s.k8s_agent_audience


def test_agent_args_parse_and_present_the_projected_token():
    from agents.main import parse_args

    (ds,) = [d for d in rendered("base") if d["kind"] == "DaemonSet"]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert c["args"][0] == "broker-agent"
    ns = parse_args(c["args"][1:])
    assert ns.broker_url == "http://broker.compute-broker.svc:8000" and ns.metrics_port == 9400
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["token"]
    assert str(ns.token_file) == f"{mount}/token"
    assert {"name": "BROKER_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]


def test_ray_workers_name_their_node_and_carry_their_pool():
    from broker.adapters.ray.executor import NODE_LABEL, POOL_LABEL
    from broker.ports import HOST_LABEL, IMAGE_LABEL

    rc = one(rendered("base"), "RayCluster", "compute-broker-ray")
    assert rc["spec"]["enableInTreeAutoscaling"] is False  # the broker scales the groups
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pools, images = set(), set()
    for g in rc["spec"]["workerGroupSpecs"]:
        labels = dict(kv.split("=", 1) for kv in g["rayStartParams"]["labels"].split(","))
        tpl = g["template"]["spec"]
        c = next(c for c in tpl["containers"] if c["name"] == "ray-worker")
        env = c["env"]
        assert {"name": "K8S_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in env
        if IMAGE_LABEL in labels:  # a pod per job worker: the pod is the broker's node, on its Kubernetes node
            assert labels[NODE_LABEL] == "$(POD_NAME)" and labels[HOST_LABEL] == "$(K8S_NODE_NAME)"
            assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in env
            images.add(labels[IMAGE_LABEL])
        else:
            assert labels[NODE_LABEL] == "$(K8S_NODE_NAME)"
        assert labels[POOL_LABEL] == tpl["nodeSelector"]["compute-broker/pool"]
        gpus = sum(int(k["resources"]["limits"].get("nvidia.com/gpu", 0)) for k in tpl["containers"])
        assert int(g["rayStartParams"]["num-gpus"]) == gpus
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        pools.add(labels[POOL_LABEL])
    assert pools == {"operation", "innovation"} and images == {"example"}


def test_an_approved_image_runs_as_its_own_container_beside_the_ray_worker():
    """The pod per approved image: the tenant's image is the `job` container with the GPU, no
    Ray token, no environment of ours, no service-account token; it runs the launcher from the
    broker-launcher ConfigMap and shares only the handoff volume with the runner; the broker's
    settings name the same image under the same key."""
    import os
    from unittest import mock

    from broker.ports import IMAGE_LABEL
    from broker.settings import Settings

    docs = rendered("base")
    rc = one(docs, "RayCluster", "compute-broker-ray")
    (g,) = [g for g in rc["spec"]["workerGroupSpecs"] if IMAGE_LABEL in g["rayStartParams"]["labels"]]
    spec = g["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    ray, job = (next(c for c in spec["containers"] if c["name"] == n) for n in ("ray-worker", "job"))
    assert "env" not in job and "envFrom" not in job  # nothing of ours, the Ray token least of all
    assert "nvidia.com/gpu" in job["resources"]["limits"] and "nvidia.com/gpu" not in ray["resources"]["limits"]
    assert job["securityContext"]["runAsUser"] != spec["securityContext"]["runAsUser"]  # not the runner's uid
    mounts = {m["name"]: m["mountPath"] for m in job["volumeMounts"]}
    handoff = {e["name"]: e.get("value") for e in ray["env"]}["BROKER_HANDOFF_DIR"]
    assert mounts["handoff"] == handoff == {m["name"]: m["mountPath"] for m in ray["volumeMounts"]}["handoff"]
    assert job["command"] == ["/bin/sh", f"{mounts['launcher']}/launch.sh"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == "launcher"]
    launcher = one(docs, "ConfigMap", vol["configMap"]["name"])
    assert launcher["data"]["launch.sh"] == (ROOT / "k8s/base/launch.sh").read_text()
    data = one(docs, "ConfigMap", "broker-settings")["data"]
    with mock.patch.dict(os.environ, data, clear=False):
        s = Settings()
    key = dict(kv.split("=", 1) for kv in g["rayStartParams"]["labels"].split(","))[IMAGE_LABEL]
    assert s.k8s_images[key] == job["image"]


def test_ray_pods_and_the_broker_share_one_token_and_ray_admits_only_them():
    docs = rendered("base")
    rc = one(docs, "RayCluster", "compute-broker-ray")
    broker = one(docs, "Deployment", "broker")
    groups = [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    containers += broker["spec"]["template"]["spec"]["containers"]
    secrets = set()
    for c in containers:
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
        if c["name"] == "job":  # a tenant's approved image beside a Ray worker: never the token
            assert "RAY_AUTH_TOKEN" not in env and not c.get("envFrom")
            continue
        assert env.get("RAY_AUTH_MODE") == "token", c["name"]
        ref = env["RAY_AUTH_TOKEN"]["secretKeyRef"]
        secrets.add((ref["name"], ref["key"]))
    assert len(secrets) == 1
    policy = one(docs, "NetworkPolicy", "ray-only-from-ray-and-broker")
    ray_selector = {"ray.io/cluster": rc["metadata"]["name"]}
    assert policy["spec"]["podSelector"]["matchLabels"] == ray_selector
    allowed = [p["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for p in rule["from"]]
    assert ray_selector in allowed
    assert any(sel.items() <= broker["spec"]["template"]["metadata"]["labels"].items() for sel in allowed)
    assert len(allowed) == 2


def test_monitoring_and_the_grafana_dashboard_ship_with_the_broker():
    docs = rendered("base")
    sm = one(docs, "ServiceMonitor", "broker")
    svc = one(docs, "Service", "broker")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    cm = one(docs, "ConfigMap", "compute-broker-dashboard")
    assert cm["metadata"]["labels"] == {"grafana_dashboard": "1"}
    (body,) = cm["data"].values()
    assert json.loads(body)["uid"]
    source = ROOT / "deploy" / "grafana" / "compute-broker.json"
    if source.exists():  # the dashboard's source of truth, copied here
        assert json.loads(body) == json.loads(source.read_text()), "copy it: cp deploy/grafana/compute-broker.json k8s/base/grafana/"
