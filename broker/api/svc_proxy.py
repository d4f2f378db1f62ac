"""The entry point of every service: `/svc/{project}/{service}/...`, a reverse proxy in the
broker on an async HTTP client (httpx).

Why our own proxy and not Ray Serve's: replicas stay tenant containers (or sanitized
processes) that the broker's scheduler admits and the runner isolates; Ray Serve would run the
model code inside Ray actors, outside the sandbox, quotas and accounting. A proxy in the broker
reuses the broker's tokens, roles and metrics, and listens on no port of its own (nothing can
clash with the broker's port).

Per request: authenticate (a bearer token with a role in the service's project, or one of the
service's API keys in `X-Service-Key`), pick the ready replica with the fewest requests in
flight, forward with the service's timeout, stream the response back. A replica that refuses
the connection is marked down and the request goes to another one (the request never reached
it, so any method may be retried); an idempotent request whose replica closed the connection
before answering is retried too. The broker's credentials never reach the replica.
Request bodies are read whole (at most the broker's body limit, so they can be retried);
responses stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from broker.api.json import JSON
from broker.errors import BrokerError

router = APIRouter(tags=["services"])
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "trailers", "transfer-encoding", "upgrade", "host", "authorization", "x-service-key",
                 "content-length", "cookie"})
ATTEMPTS = 3
_clients: dict[int, httpx.AsyncClient] = {}


def _client() -> httpx.AsyncClient:
    """One pooled client per event loop (a TestClient runs its own loop)."""
    loop = asyncio.get_running_loop()
    c = _clients.get(id(loop))
    if c is None or c.is_closed:
        c = _clients[id(loop)] = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128), trust_env=False,
            follow_redirects=False)
    return c


def _error(status: int, code: str, message: str) -> Response:
    return JSON({"error": {"code": code, "message": message, "details": {}}}, status_code=status)


@router.api_route("/svc/{project}/{service}/{path:path}", methods=METHODS, include_in_schema=False)
@router.api_route("/svc/{project}/{service}", methods=METHODS, include_in_schema=False)
async def proxy(request: Request, project: str, service: str, path: str = "") -> Response:
    services = request.app.state.services
    mgr, rt = services.service_manager, services.service_router
    target = await mgr.resolve(project, service)  # 404 SERVICE_NOT_FOUND when missing
    try:
        await mgr.authorize_call(target, request.headers.get("authorization"), request.headers.get("x-service-key"),
                                 services.authn)
    except BrokerError as e:
        return JSON(e.body(), status_code=e.status, headers=e.headers)
    prefix = f"/svc/{project}/{service}"
    upstream = request.url.path[len(prefix):] or "/"
    if request.url.query:
        upstream += "?" + request.url.query
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
    peer = request.client.host if request.client else ""
    headers += [("x-forwarded-for", peer), ("x-forwarded-prefix", prefix)]
    body = await request.body()
    method = request.method
    t0 = time.perf_counter()
    labels = (target.project, target.name)
    tried: set[str] = set()
    client = _client()
    for _ in range(ATTEMPTS):
        ep = rt.pick(target.id, frozenset(tried))
        if ep is None:
            break
        tried.add(ep.job_id)
        rt.begin(target.id, ep.job_id)
        rt.inflight_gauge.labels(*labels).inc()
        req = client.build_request(method, ep.url + upstream, headers=headers, content=body,
                                   timeout=httpx.Timeout(target.timeout_s, connect=min(2.0, target.timeout_s)))
        try:
            resp = await client.send(req, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            _done(rt, target, ep.job_id, labels)
            rt.mark_down(ep.job_id)
            continue
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            _done(rt, target, ep.job_id, labels)
            if method in IDEMPOTENT:
                continue
            rt.errors.labels(*labels, "upstream").inc()
            rt.requests.labels(*labels, "502").inc()
            return _error(502, "REPLICA_ERROR", f"the replica closed the connection: {type(e).__name__}")
        except httpx.TimeoutException:
            _done(rt, target, ep.job_id, labels)
            rt.errors.labels(*labels, "timeout").inc()
            rt.requests.labels(*labels, "504").inc()
            return _error(504, "REPLICA_TIMEOUT", f"the replica did not answer within {target.timeout_s:g} s")
        rt.latency.labels(*labels).observe(time.perf_counter() - t0)
        rt.requests.labels(*labels, str(resp.status_code)).inc()
        if resp.status_code >= 500:
            rt.errors.labels(*labels, "5xx").inc()
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
        if "content-length" in resp.headers and "transfer-encoding" not in resp.headers:
            out_headers["content-length"] = resp.headers["content-length"]
        return StreamingResponse(_stream(resp, rt, target, ep.job_id, labels), status_code=resp.status_code,
                                 headers=out_headers)
    rt.errors.labels(*labels, "no_replica").inc()
    rt.requests.labels(*labels, "503").inc()
    return _error(503, "NO_READY_REPLICA", f"service {project}/{service} has no ready replica now"
                  + (f" (tried {len(tried)})" if tried else ""))


async def _stream(resp: httpx.Response, rt: Any, target: Any, job_id: str, labels: tuple[str, str]):
    """The replica's body as it comes; the replica's request counts as done when it ends (or the
    client went away)."""
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    finally:
        _done(rt, target, job_id, labels)
        await resp.aclose()


def _done(rt: Any, target: Any, job_id: str, labels: tuple[str, str]) -> None:
    rt.end(target.id, job_id)
    rt.inflight_gauge.labels(*labels).dec()
