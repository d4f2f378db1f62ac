"""A local HTTP server that answers like the Kubernetes API for what the adapter uses, and
records every request it gets so tests can check them exactly.

Bodies are built with the `kubernetes` client's model classes (tests/k8s/kit.py) and
serialized as the client would (`ApiClient.sanitize_for_serialization`); every Node and Pod
served is checked against the Kubernetes OpenAPI schema at `SCHEMA_VERSION`
(kubernetes-validate), so a body the fake serves is one a real API server could serve.

Served: GET/LIST/WATCH /api/v1/nodes, LIST/WATCH /api/v1/namespaces/<ns>/pods, GET
/api/v1/namespaces/<ns>/pods/<name>, GET/PATCH /api/v1/nodes/<name> (strategic merge of
spec.taints, resourceVersion precondition -> 409), GET/PATCH the RayCluster (merge patch,
resourceVersion precondition), POST tokenreviews. Watches are scripted: each watch request
takes the next entry of `watch_scripts[kind]`: a list of events to stream, or an int HTTP
status to answer with (410).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
from kubernetes.client import ApiClient

SCHEMA_VERSION = "1.33.0"  # the Kubernetes version the fake's bodies are checked against
_SERIALIZER = ApiClient()


def to_json(obj) -> Any:
    return _SERIALIZER.sanitize_for_serialization(obj)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


@dataclass
class FakeKube:
    nodes: dict[str, dict] = field(default_factory=dict)
    pods: dict[str, dict] = field(default_factory=dict)
    raycluster: dict | None = None
    reviews: dict[str, dict] = field(default_factory=dict)  # token -> TokenReview status
    watch_scripts: dict[str, list] = field(default_factory=lambda: {"nodes": [], "pods": []})
    requests: list[Request] = field(default_factory=list)
    resource_version: int = 100
    conflicts: int = 0  # answer the next N PATCHes with 409 (someone else wrote first)

    # ---------------------------------------------------------------- state
    def add_node(self, node) -> None:
        body = to_json(node)
        kubernetes_validate.validate(body, SCHEMA_VERSION, strict=True)
        self.nodes[body["metadata"]["name"]] = body

    def add_pod(self, pod) -> None:
        body = to_json(pod)
        kubernetes_validate.validate(body, SCHEMA_VERSION, strict=True)
        self.pods[body["metadata"]["name"]] = body

    def next_rv(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    def of(self, method: str, path_prefix: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # ---------------------------------------------------------------- serving
    def serve(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_PATCH(self):
                fake._handle(self, "PATCH")

            def do_POST(self):
                fake._handle(self, "POST")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        u = urlparse(h.path)
        query = {k: v[0] for k, v in parse_qs(u.query).items()}
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n) if n else b""
        self.requests.append(Request(method, u.path, query, h.headers.get("Content-Type", ""),
                                     json.loads(raw) if raw else None))
        parts = u.path.strip("/").split("/")
        try:
            status, body = self._route(method, parts, query, json.loads(raw) if raw else None)
        except KeyError as e:
            status, body = 404, _status(404, "NotFound", f"{e} not found")
        if status == "watch":
            return self._stream(h, body)
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method, parts, query, body):
        if parts[:2] == ["api", "v1"] and parts[2:3] == ["nodes"]:
            if len(parts) == 3:
                return self._list_or_watch("nodes", "NodeList", self.nodes, query)
            name = parts[3]
            if method == "GET":
                return 200, self.nodes[name]
            return self._patch_node(name, body)
        if parts[:3] == ["api", "v1", "namespaces"] and parts[4:5] == ["pods"]:
            if len(parts) == 5:
                return self._list_or_watch("pods", "PodList", self._selected(query), query)
            return 200, self.pods[parts[5]]
        if parts[:3] == ["apis", "ray.io", "v1"]:
            if self.raycluster is None or parts[-1] != self.raycluster["metadata"]["name"]:
                raise KeyError(parts[-1])
            if method == "GET":
                return 200, self.raycluster
            return self._patch_raycluster(body)
        if parts[:3] == ["apis", "authentication.k8s.io", "v1"] and parts[3] == "tokenreviews":
            st = self.reviews.get(body["spec"]["token"], {"authenticated": False, "error": "invalid bearer token"})
            return 201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                         "metadata": {"creationTimestamp": None}, "spec": body["spec"], "status": st}
        raise KeyError("/".join(parts))

    def _selected(self, query) -> dict:
        sel = query.get("labelSelector", "")
        want = dict(kv.split("=", 1) for kv in sel.split(",") if kv)
        return {k: p for k, p in self.pods.items() if want.items() <= (p["metadata"].get("labels") or {}).items()}

    def _list_or_watch(self, kind, list_kind, items, query):
        if query.get("watch") in ("true", "True", "1"):
            script = self.watch_scripts[kind].pop(0) if self.watch_scripts[kind] else []
            if isinstance(script, int):
                return script, _status(script, "Expired", "too old resource version")
            return "watch", script
        return 200, {"apiVersion": "v1", "kind": list_kind, "metadata": {"resourceVersion": str(self.resource_version)},
                     "items": list(items.values())}

    def _stream(self, h, events):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for ev in events:
            line = (json.dumps(ev) + "\n").encode()
            h.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")  # the server ends the watch (timeoutSeconds passed)

    def _precondition(self, current_rv: str, body) -> tuple[int, dict] | None:
        if self.conflicts:
            self.conflicts -= 1
            return 409, _status(409, "Conflict", "the object has been modified; please apply your changes "
                                                 "to the latest version and try again")
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != current_rv:
            return 409, _status(409, "Conflict", "the object has been modified")
        return None

    def _patch_node(self, name, body):
        node = self.nodes[name]
        refused = self._precondition(node["metadata"]["resourceVersion"], body)
        if refused:
            return refused
        node = json.loads(json.dumps(node))
        if "taints" in (body.get("spec") or {}):  # no merge key: the list is replaced
            node["spec"]["taints"] = body["spec"]["taints"] or None
            if node["spec"]["taints"] is None:
                del node["spec"]["taints"]
        node["metadata"]["resourceVersion"] = self.next_rv()
        kubernetes_validate.validate(node, SCHEMA_VERSION, strict=True)
        self.nodes[name] = node
        return 200, node

    def _patch_raycluster(self, body):
        rc = self.raycluster
        refused = self._precondition(rc["metadata"]["resourceVersion"], body)
        if refused:
            return refused
        rc = json.loads(json.dumps(rc))
        rc["spec"].update(body.get("spec") or {})  # merge patch: lists are replaced whole
        rc["metadata"]["resourceVersion"] = self.next_rv()
        self.raycluster = rc
        return 200, rc


def event(kind: str, obj) -> dict:
    return {"type": kind, "object": obj if isinstance(obj, dict) else to_json(obj)}


def bookmark(rv: str, kind: str = "Node") -> dict:
    return {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}}}


def gone() -> dict:
    return {"type": "ERROR", "object": _status(410, "Expired", "too old resource version: 5 (120)")}


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
