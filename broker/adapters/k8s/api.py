"""`KubeCluster`: the `broker.ports.Cluster` port on the Kubernetes API (the only I/O of the
adapter; every decision is a pure function in `nodes` and `scaling`).

Requests it makes, and why each is shaped so:

- LIST + WATCH nodes (all) and pods (`labelSelector=ray.io/cluster=<name>` in the broker's
  namespace): an `Informer` lists once, then watches from the list's `resourceVersion` with
  bookmarks on, resuming each watch from the last version it saw. A `410 Gone` (the version
  was compacted away; as an HTTP status or as an ERROR event in the stream) drops the cache
  version and lists again: events missed while away are never guessed at.
- PATCH node, `application/strategic-merge-patch+json`, body `{"metadata": {"resourceVersion"},
  "spec": {"taints": [...]}}`: `spec.taints` has no merge key, so the whole list goes, guarded by
  the version the list was computed from (409 on a concurrent change: read again, retry).
  The broker's taint only; `spec.unschedulable` is never written (a human's cordon is theirs).
- GET + PATCH the RayCluster, `application/merge-patch+json` (custom resources take no
  strategic merge), the complete `workerGroupSpecs` guarded by `resourceVersion`.
- POST TokenReview with the broker's audience; the pod's node comes from the review's
  `authentication.kubernetes.io/node-name` extra (Kubernetes >= 1.30), else from GET pod,
  whose uid must match the token's.

Threads: `start()` runs one watch loop per informer; `nodes()` reads their caches (no request).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from broker.adapters.k8s import nodes as kn
from broker.adapters.k8s import scaling
from broker.auth.cluster_authn import jwt_claims
from broker.ports import ClusterIdentity, ClusterNode, ScaleInput, ScaleOutcome

log = logging.getLogger("broker.k8s")
RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


class Informer:
    """A list-then-watch cache of one kind of object, keyed by namespace/name."""

    def __init__(self, list_fn: Callable[..., Any], name: str) -> None:
        self.list_fn, self.name = list_fn, name
        self.resource_version: str | None = None
        self.relists = 0
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._watch: watch.Watch | None = None

    def items(self) -> list[Any]:
        with self._lock:
            return list(self._items.values())

    def step(self, timeout_s: int = 30) -> None:
        """List when there is no version to resume from, else watch once (up to `timeout_s`,
        the server ends the stream) from the last version seen."""
        if self.resource_version is None:
            self.relist()
            return
        self._watch = w = watch.Watch()
        try:
            for ev in w.stream(self.list_fn, resource_version=self.resource_version, timeout_seconds=timeout_s,
                               allow_watch_bookmarks=True, _request_timeout=timeout_s + 15):  # a dead link ends too
                self._apply(ev)
        except ApiException as e:
            if e.status != 410:
                raise
            log.info("%s watch: resourceVersion %s is gone (410): listing again", self.name, self.resource_version)
            self.resource_version = None
            self.relist()

    def relist(self) -> None:
        lst = self.list_fn()
        with self._lock:
            self._items = {_key(o): o for o in lst.items}
        self.resource_version = lst.metadata.resource_version
        self.relists += 1

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def _apply(self, ev: dict) -> None:
        if ev["type"] == "BOOKMARK":  # no object change, only a newer version to resume from
            self.resource_version = ev["raw_object"]["metadata"]["resourceVersion"]
            return
        obj = ev["object"]
        with self._lock:
            if ev["type"] == "DELETED":
                self._items.pop(_key(obj), None)
            else:  # ADDED | MODIFIED
                self._items[_key(obj)] = obj
        self.resource_version = obj.metadata.resource_version


class KubeCluster:
    def __init__(self, api: client.ApiClient, *, namespace: str, raycluster: str,
                 labels: kn.NodeLabels = kn.NodeLabels(), rules: scaling.Rules = scaling.Rules(),
                 audience: str = "compute-broker", watch_timeout_s: int = 30) -> None:
        self.api, self.namespace, self.raycluster = api, namespace, raycluster
        self.labels, self.rules, self.audience = labels, rules, audience
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.authn = client.AuthenticationV1Api(api)
        self.node_informer = Informer(self.core.list_node, "nodes")
        self.pod_informer = Informer(
            lambda **kw: self.core.list_namespaced_pod(self.namespace,
                                                       label_selector=f"{kn.RAY_CLUSTER_LABEL}={raycluster}", **kw),
            "pods")
        self.tolerations: list[client.V1Toleration] = []  # the worker pods', read with the RayCluster
        self.memory = scaling.Memory()
        self.watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ watch loops
    def start(self) -> None:
        """List both kinds now (so `nodes()` is complete when this returns), then keep watching."""
        self.refresh_tolerations()
        for inf in (self.node_informer, self.pod_informer):
            inf.relist()
            t = threading.Thread(target=self._run, args=(inf,), name=f"k8s-{inf.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for inf in (self.node_informer, self.pod_informer):
            inf.stop()

    def _run(self, inf: Informer) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                inf.step(self.watch_timeout_s)
                backoff = 1.0
                if time.monotonic() - t0 < 1.0:  # a server that ends watches at once is not polled in a spin
                    self._stop.wait(1.0)
            except Exception as e:  # API server restart, network: keep the cache, try again
                log.warning("%s watch failed: %s (again in %.0f s)", inf.name, e, backoff)
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)

    # ------------------------------------------------------------------ the port
    def nodes(self) -> Sequence[ClusterNode]:
        return [kn.cluster_node(n, self.labels, self.tolerations) for n in self.node_informer.items()]

    def worker_pods(self) -> list[kn.WorkerPod]:
        return kn.worker_pods(self.pod_informer.items(), self.raycluster)

    def set_broker_taint(self, node: str, value: str | None) -> None:
        for attempt in range(3):
            current = self.core.read_node(node)
            taints = kn.with_broker_taint(current, value)
            if taints is None:
                return
            try:
                self.api.call_api(
                    "/api/v1/nodes/{name}", "PATCH", path_params={"name": node}, query_params=[],
                    header_params={"Content-Type": STRATEGIC_MERGE, "Accept": "application/json"},
                    body=kn.taints_body(taints, current.metadata.resource_version), response_type="V1Node",
                    auth_settings=["BearerToken"], _return_http_data_only=True)
                return
            except ApiException as e:
                if e.status != 409 or attempt == 2:
                    raise

    def read_raycluster(self) -> dict:
        return self.custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, self.namespace, RAY_PLURAL,
                                                        self.raycluster)

    def refresh_tolerations(self, rc: dict | None = None) -> None:
        rc = rc if rc is not None else self.read_raycluster()
        tols = []
        for g in rc.get("spec", {}).get("workerGroupSpecs") or []:
            for t in ((g.get("template") or {}).get("spec") or {}).get("tolerations") or []:
                tols.append(client.V1Toleration(key=t.get("key"), operator=t.get("operator"), value=t.get("value"),
                                                effect=t.get("effect")))
        self.tolerations = tols

    def autoscale(self, demand: ScaleInput, now: float) -> ScaleOutcome:
        rc = self.read_raycluster()
        self.refresh_tolerations(rc)
        pods = self.worker_pods()
        models = {n.name: n.gpu_model for n in self.nodes()}
        groups = scaling.groups_of(rc, self.rules, pods, models)
        plan = scaling.plan(groups, pods, demand, self.memory, now, self.rules)
        if plan.changes:  # a failed PATCH raises and leaves the memory as it was: nothing happened
            self.custom.patch_namespaced_custom_object(RAY_GROUP, RAY_VERSION, self.namespace, RAY_PLURAL,
                                                       self.raycluster, scaling.merge_patch(rc, plan.changes))
            for c in plan.changes:
                log.info("worker group %s: replicas %d -> %d%s", c.group.name, c.group.replicas, c.replicas,
                         f", deleting {', '.join(c.delete_pods)}" if c.delete_pods else "")
        self.memory = plan.memory
        return ScaleOutcome(notes=dict(plan.notes), drain=plan.drain, deleted=plan.deleted, undrain=plan.undrain)

    def review_token(self, token: str) -> ClusterIdentity | None:
        review = self.authn.create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience])))
        st = review.status
        if st is None or not st.authenticated or st.user is None:
            return None
        if self.audience not in (st.audiences or []):
            return None  # a token for another audience (the API server's own, another service)
        parts = (st.user.username or "").split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None  # not a ServiceAccount
        extra = st.user.extra or {}
        pod = _one(extra.get(POD_NAME_EXTRA))
        if not pod:
            return None  # not bound to a pod (a long-lived Secret token): no node to bind to
        node = _one(extra.get(NODE_NAME_EXTRA))
        if not node:  # before Kubernetes 1.30: ask the pod, and check it is the token's pod
            p = self.core.read_namespaced_pod(pod, parts[2])
            if p.metadata.uid != _one(extra.get(POD_UID_EXTRA)) or not p.spec.node_name:
                return None
            node = p.spec.node_name
        return ClusterIdentity(namespace=parts[2], service_account=parts[3], pod=pod, node=node,
                               expires_at=jwt_claims(token).get("exp"))


def _key(obj) -> str:
    return f"{obj.metadata.namespace or ''}/{obj.metadata.name}"


def _one(values) -> str:
    return values[0] if values else ""
