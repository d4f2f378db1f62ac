"""The entry point of every service: `/svc/{project}/{service}/...`, a reverse proxy inside the
broker (pure ASGI middleware, outermost: these requests skip routing and the API's middleware).

Why our own proxy and not Ray Serve's: replicas stay tenant containers (or sanitized
processes) that the broker's scheduler admits and the runner isolates; Ray Serve would run the
model code inside Ray actors, outside the sandbox, quotas and accounting. A proxy in the broker
reuses the broker's tokens, roles and metrics, and listens on no port of its own (nothing can
clash with the broker's port). Its HTTP client is `broker.api.upstream` (keep-alive pools).

Per request: authenticate (a bearer token with a role in the service's project, or one of the
service's API keys in `X-Service-Key`; a foreign caller gets 404 like a missing service), apply
the service's rate limits (per caller, then for the whole service: 429 RATE_LIMITED with
Retry-After; the API's own limiter does not see these requests), pick
the ready replica with the fewest requests in flight, forward with the service's timeout,
stream the response back. A replica that refuses the connection is marked down and the request
goes to another one (it never reached the first, so any method may be retried); an idempotent
request whose replica closed the connection before answering is retried too. The broker's
credentials (Authorization, X-Service-Key, cookies) never reach the replica.
Request bodies up to STREAM_ABOVE (64 KiB) are read whole, so that they can be retried on
another replica; larger ones stream to the replica as they arrive (memory stays within a
chunk and the socket buffers), and are retried only where nothing of them was sent (the
connection to the replica failed). Bodies above the service body limit get 413
PAYLOAD_TOO_LARGE (at once when Content-Length says so). Responses stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import orjson
from anyio import to_thread

from broker.auth.ratelimit import TokenBucketLimiter
from broker.api.upstream import CHUNK, ConnectFailed, NoAnswer, Pool, UpstreamTimeout
from broker.errors import BrokerError

PREFIX = "/svc/"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
                 b"trailers", b"transfer-encoding", b"upgrade", b"host", b"authorization", b"x-service-key",
                 b"content-length", b"cookie"})
# not passed back from the replica either (as nginx): the server adds its own Date and Server
RESP_DROP = HOP | {b"date", b"server"}
ATTEMPTS = 3
STREAM_ABOVE = CHUNK  # a request body larger than this streams to the replica (not retried once sent)
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_JSON = [(b"content-type", b"application/json")]
log = logging.getLogger("broker.svc_proxy")


class ServiceProxy:
    """The ASGI app of `/svc/...` (`broker.app.BrokerApp` sends those requests here before
    FastAPI's own stack: no routing, no middleware, no telemetry hooks)."""

    def __init__(self, *, services: Any, max_body_bytes: int, limiter: TokenBucketLimiter | None = None) -> None:
        """`limiter`: the buckets of the services' rate limits (each check gives its own rate)."""
        self.services, self.max_body = services, max_body_bytes
        self.limiter = limiter or TokenBucketLimiter(1.0, 1.0)
        self._pools: dict[int, Pool] = {}
        self._refresh: asyncio.Future | None = None

    async def __call__(self, scope, receive, send):
        try:
            await self._proxy(scope, receive, send)
        except BrokerError as e:  # raised before the answer starts (lookup, auth, body)
            await _answer(send, e.status, e.body(), list(e.headers.items()))
        except ClientGone:
            return
        except Exception:  # what FastAPI's error middleware did: a 500 with a code, never a traceback
            log.exception("service entry point failed: %s", scope.get("path"))
            with contextlib.suppress(Exception):  # the answer had started: the client sees it cut
                await _error(send, 500, "INTERNAL", "internal error; see the broker log")

    def _pool(self) -> Pool:
        """One pool per event loop (a test client runs its own)."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(id(loop))
        if pool is None:
            pool = self._pools[id(loop)] = Pool()
        return pool

    async def _proxy(self, scope, receive, send) -> None:
        svc = self.services
        mgr, rt = svc.service_manager, svc.service_router
        parts = scope["path"][len(PREFIX):].split("/", 2)
        if len(parts) < 2 or not SLUG.match(parts[0]) or not SLUG.match(parts[1]):
            return await _error(send, 404, "SERVICE_NOT_FOUND", "no such service entry point")
        project, name = parts[0], parts[1]
        auth = key = None
        declared: int | None = None
        fwd: list[tuple[bytes, bytes]] = []
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v.decode("latin-1")
            elif k == b"x-service-key":
                key = v.decode("latin-1")
            elif k == b"content-length":
                declared = int(v) if v.isdigit() else None  # the server checked the framing
            elif k not in HOP:
                fwd.append((k, v))
        if rt.refresh_due():  # the routing table, read beside the requests (never on the event loop)
            refresh = self._refresh
            if refresh is None or refresh.done() or refresh.get_loop() is not asyncio.get_running_loop():
                # one at a time per event loop (and a reference: the task is never collected)
                refresh = self._refresh = asyncio.ensure_future(to_thread.run_sync(rt.refresh))
            if not rt.loaded():
                await asyncio.shield(refresh)
        target = await mgr.resolve(project, name)
        caller = await mgr.authorize_call(target, auth, key, svc.authn)
        lim = target.limits
        if lim.per_caller_per_s is not None or lim.per_s is not None:
            refused = self._limit(target, caller)
            if refused is not None:
                m = rt.metrics_for(target.project, target.name)
                m.error("rate_limited")
                m.code(429)
                return await _answer(send, 429, *refused)
        if declared is not None and declared > self.max_body:
            raise _too_large(self.max_body)
        body, more = await self._body_start(receive, declared)
        rest = self._body_rest(receive, len(body)) if more else None  # streamed: never replayed
        peer = (scope.get("client") or ("",))[0]
        prefix = f"/svc/{project}/{name}"
        fwd += [(b"x-forwarded-for", peer.encode()), (b"x-forwarded-prefix", prefix.encode())]
        path = scope.get("raw_path") or scope["path"].encode()
        upstream = path[len(prefix):].decode("latin-1") or "/"
        if not upstream.startswith("/"):
            upstream = "/" + upstream
        if scope.get("query_string"):
            upstream += "?" + scope["query_string"].decode("latin-1")
        method = scope["method"]
        m = rt.metrics_for(target.project, target.name)
        t0 = time.perf_counter()
        pool = self._pool()
        tried: set[str] = set()
        for _ in range(ATTEMPTS):
            ep = rt.pick(target.id, frozenset(tried))
            if ep is None:
                break
            tried.add(ep.job_id)
            rt.begin(target.id, ep.job_id)
            m.inflight.inc()
            try:
                async with asyncio.timeout(target.timeout_s):  # one timeout (no task, unlike wait_for)
                    resp = await pool.request(ep.host, ep.port, method, upstream, fwd, body,
                                              timeout_s=target.timeout_s, rest=rest, length=declared)
                    small = None
                    if resp.no_body or (resp.length is not None and resp.length <= CHUNK):
                        try:  # read a small body before answering: a replica dying now is retried
                            small = await resp.read_small()
                        except (asyncio.IncompleteReadError, OSError) as e:
                            raise NoAnswer(f"{type(e).__name__}: {e}") from None
            except ConnectFailed:  # nothing was sent (a streamed body is untouched): another replica
                _done(rt, m, target.id, ep.job_id)
                rt.mark_down(ep.job_id)
                continue
            except NoAnswer as e:
                _done(rt, m, target.id, ep.job_id)
                if method in IDEMPOTENT and rest is None:
                    continue
                m.error("upstream")
                m.code(502)
                return await _error(send, 502, "REPLICA_ERROR", f"the replica closed the connection: {e}")
            except (UpstreamTimeout, TimeoutError):
                _done(rt, m, target.id, ep.job_id)
                m.error("timeout")
                m.code(504)
                return await _error(send, 504, "REPLICA_TIMEOUT", f"the replica did not answer within "
                                    f"{target.timeout_s:g} s")
            except BaseException:  # a client gone mid-body, a body over the limit, cancellation
                _done(rt, m, target.id, ep.job_id)
                raise
            m.latency.observe(time.perf_counter() - t0)
            m.code(resp.status)
            if resp.status >= 500:
                m.error("5xx")
            headers = [(k, v) for k, v in resp.headers if k not in RESP_DROP]
            if resp.length is not None:
                headers.append((b"content-length", str(resp.length).encode()))
            try:
                await send({"type": "http.response.start", "status": resp.status, "headers": headers})
                if small is not None:  # one send
                    await send({"type": "http.response.body", "body": small, "more_body": False})
                else:
                    async for chunk in resp.body(target.timeout_s):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except (NoAnswer, TimeoutError, OSError, ValueError):
                m.error("upstream")  # headers are out: the client sees a cut response
            finally:
                resp.release()
                _done(rt, m, target.id, ep.job_id)
            return
        m.error("no_replica")
        m.code(503)
        return await _error(send, 503, "NO_READY_REPLICA", f"service {project}/{name} has no ready replica now"
                            + (f" (tried {len(tried)})" if tried else ""))

    def _limit(self, target, caller: str) -> tuple[dict, list[tuple[str, str]]] | None:
        """None when the caller may go on; else the 429 body and headers. The caller's own limit
        first (a greedy caller is refused there without draining the service's bucket), then
        the service's."""
        lim = target.limits
        for scope, key, rate, burst in (("caller", (target.id, caller), lim.per_caller_per_s, lim.per_caller_burst),
                                        ("service", target.id, lim.per_s, lim.burst)):
            if rate is None:
                continue
            d = self.limiter.check(key, rate=rate, burst=burst)
            if not d.allowed:
                who = "this caller of " if scope == "caller" else ""
                return ({"error": {"code": "RATE_LIMITED",
                                   "message": f"too many requests to {who}service {target.project}/{target.name} "
                                              f"(limit {rate:g}/s, burst {burst:g}); retry in "
                                              f"{d.retry_after_header} s",
                                   "details": {"scope": scope, "limit_per_s": rate, "burst": burst,
                                               "retry_after_s": round(d.retry_after_s, 3)}}},
                        [("retry-after", d.retry_after_header)])
        return None

    async def _body_start(self, receive, declared: int | None) -> tuple[bytes, bool]:
        """The body when it is small (at most STREAM_ABOVE bytes: read whole, so it can be
        retried), else its first part and True: the rest streams (`_body_rest`)."""
        if declared is not None and declared > STREAM_ABOVE:
            msg = await receive()  # stream at once: the first message goes out with the head
            if msg["type"] == "http.disconnect":
                raise ClientGone()
            return msg.get("body", b""), bool(msg.get("more_body"))
        parts, size = [], 0
        while True:
            chunk, more, size = await self._chunk(receive, size)
            parts.append(chunk)
            if not more:
                return b"".join(parts), False
            if size > STREAM_ABOVE:
                return b"".join(parts), True

    async def _body_rest(self, receive, size: int):
        while True:
            chunk, more, size = await self._chunk(receive, size)
            if chunk:
                yield chunk
            if not more:
                return

    async def _chunk(self, receive, size: int) -> tuple[bytes, bool, int]:
        """The next part of the request body: (bytes, more to come, size so far), within the
        body limit; a client that went away raises ClientGone."""
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > self.max_body:
            raise _too_large(self.max_body)
        return chunk, bool(msg.get("more_body")), size


class ClientGone(Exception):
    """The client went away in the middle of its request body: nothing to answer."""


def _too_large(limit: int) -> BrokerError:
    return BrokerError(f"the request body is larger than {limit} bytes", code="PAYLOAD_TOO_LARGE", status=413)


def _done(rt: Any, m: Any, service_id: str, job_id: str) -> None:
    rt.end(service_id, job_id)
    m.inflight.dec()


async def _error(send, status: int, code: str, message: str) -> None:
    await _answer(send, status, {"error": {"code": code, "message": message, "details": {}}}, [])


async def _answer(send, status: int, body: dict, extra: list[tuple[str, str]]) -> None:
    payload = orjson.dumps(body)
    headers = _JSON + [(b"content-length", str(len(payload)).encode())] + [(k.encode(), v.encode()) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
