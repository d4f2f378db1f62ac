"""The service entry point's worker processes: `/svc/...` served by N processes, each with its
own event loop, on one port (`service_proxy_port`, SO_REUSEPORT: the kernel spreads the
connections over the processes).

Why: the entry point costs ~100-170 us of one event loop's CPU per request (uvicorn's parsing
and send path, asyncio's streams, the proxy's coroutine; `broker bench service`), and one
process with one event loop is one core at most, shared with the API and the periodic tasks.
N processes use N cores; the broker's own port keeps serving `/svc/...` as before.

Each worker is a follower for the entry point, as a broker on the same database is: it builds
the same services (`build_services`, no executor, no periodic tasks), reads the routing table
from the database at most every second (`ServiceRouter.refresh`: a replica the controller takes
out of rotation leaves a worker's table within that second; a refused connection marks it down
at once), resolves and authorizes with the same caches (a role change or revocation in another
process shows within their 2 s, as on a follower). What must stay exact across processes:

- rate limits: one `SharedTokenBuckets` table in shared memory for the broker process and every
  worker, so a caller's limit is the configured one whatever process its connection lands on;
- load: every worker publishes its requests in flight per service as a broker of its own
  (`service_loads`, `LoadPublisher`), which the leader's autoscaler adds to its own count.

- request metrics: every worker sends its per-service samples (`broker_service_requests`,
  `..._errors`, the latency histogram, requests in flight) to the parent about every second
  (`METRICS_S`: a file per worker in a private directory, replaced atomically, so a reader
  never sees half of one and a killed writer blocks nobody; the request path itself only
  increments its own counters), and the broker's /metrics adds them to its own
  (`ServiceRouter.extra_samples` = `EntryWorkers.samples`). When a worker dies, its last counts are kept as retired totals before
  it is started again, so counters never go backwards; what it counted in its last second is
  lost with it (a graceful stop sends a last snapshot). Workers' figures lag by up to a second.

Lifecycle: `EntryWorkers.start()` binds one socket per worker in the parent (a busy port fails
there, before any process starts), starts the workers (multiprocessing spawn: a fresh
interpreter, no fork of a process with threads), and a watcher thread starts a worker again
when one dies. `stop()` sends SIGTERM to each worker by its PID (uvicorn finishes the requests
in flight), waits, then SIGKILL by PID. A worker also ends when its parent dies (PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import shutil
import tempfile
import signal
import socket
import threading
import time

import orjson

from broker.auth.ratelimit import SharedTokenBuckets
from broker.api.svc_proxy import PREFIX, ServiceProxy
from broker.settings import Settings

log = logging.getLogger("broker.entry")
METRICS_S = 1.0  # how often a worker sends its request metrics to the parent
_CTX = multiprocessing.get_context("spawn")
_NOT_HERE = orjson.dumps({"error": {"code": "NOT_FOUND", "message": "this port serves service entry points only "
                                                                     "(/svc/{project}/{service}/...)", "details": {}}})


def entry_port(settings: Settings) -> int:
    return settings.service_proxy_port or settings.port + 1


class EntryWorkers:
    """The worker processes of one broker (parent side). `limiter`: the shared rate-limit
    table; give it to the broker's own `ServiceProxy` too (`create_app(service_limiter=...)`)."""

    def __init__(self, settings: Settings, *, workers: int | None = None, port: int | None = None,
                 slots: int = 65_536) -> None:
        self.settings = settings
        self.n = settings.service_proxy_workers if workers is None else workers
        self.host, self.port = settings.host, entry_port(settings) if port is None else port
        self.limiter = SharedTokenBuckets.create(_CTX, slots)
        self._procs: list[multiprocessing.Process | None] = [None] * self.n
        self.metrics_dir = tempfile.mkdtemp(prefix="broker-entry-metrics-")  # <pid>.json per worker (0700)
        self._retired: dict[tuple, float] = {}  # (name, labels) -> what ended workers counted
        self._mlock = threading.Lock()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def start(self) -> None:
        """Bind every socket first (OSError: the port is taken), then start the processes."""
        socks = [self._bind() for _ in range(self.n)]
        for i, sock in enumerate(socks):
            self._spawn(i, sock)
        self._watcher = threading.Thread(target=self._watch, name="entry-workers", daemon=True)
        self._watcher.start()

    def samples(self) -> list:
        """Every worker's service-metric samples: the live workers' newest and what ended
        workers counted (counters and histograms only; the broker adds its own on /metrics)."""
        from broker.services.service_router import Sample

        with self._mlock:
            out = [Sample(name, labels, v, True) for (name, labels), v in self._retired.items()]
            for pid in self.pids:
                out.extend(read_samples(self.metrics_dir, pid))
        return out

    def _retire(self, pid: int | None) -> None:
        """Keep an ended worker's last counts (its gauges end with it)."""
        from broker.services.service_router import merge_samples

        if pid is None:
            return
        with self._mlock:
            for key, v in merge_samples(s for s in read_samples(self.metrics_dir, pid) if s.cumulative).items():
                self._retired[key] = self._retired.get(key, 0.0) + v
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.metrics_dir, f"{pid}.json"))

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to every worker by PID, wait up to `timeout_s`, then SIGKILL by PID."""
        self._stopping.set()
        with self._lock:
            procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.join(5)
        if self._watcher is not None:
            self._watcher.join(5)
        for p in procs:
            self._retire(p.pid)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            sock.listen(2048)
            sock.set_inheritable(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _spawn(self, i: int, sock: socket.socket) -> None:
        p = _CTX.Process(target=_worker_main, args=(self.settings, sock, self.limiter, os.getpid(), i, self.metrics_dir),
                         name=f"broker-entry-{i}", daemon=False)
        try:
            p.start()  # the socket is duplicated into the child here
        finally:
            sock.close()  # the parent never accepts on it
        with self._lock:
            self._procs[i] = p
        log.info("service entry point worker %d: pid %d on %s:%d", i, p.pid, self.host, self.port)

    def _watch(self) -> None:
        """Start a worker again when it died (not while stopping); at most once a second each."""
        while not self._stopping.wait(1.0):
            for i, p in enumerate(list(self._procs)):
                if p is None or p.is_alive() or self._stopping.is_set():
                    continue
                log.warning("service entry point worker %d (pid %s) exited with %s; starting it again",
                            i, p.pid, p.exitcode)
                self._retire(p.pid)  # before its successor counts from zero
                try:
                    self._spawn(i, self._bind())
                except Exception:
                    log.exception("could not start service entry point worker %d again", i)


# ----------------------------------------------------------------------------- the worker
def _worker_main(settings: Settings, sock: socket.socket, limiter: SharedTokenBuckets, parent: int, i: int,
                 metrics_dir: str | None = None) -> None:
    with contextlib.suppress(Exception):  # Linux: end with the parent, whatever way it ends
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        return
    logging.basicConfig(level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s %(name)s[entry {i}]: "
                                                                 "%(message)s")
    import uvicorn

    from broker.db import make_engine
    from broker.services.wiring import build_services

    engine = make_engine(settings)
    services = build_services(settings, engine)
    app = EntryApp(services, limiter, settings.service_max_body_bytes, metrics_dir)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", access_log=False, log_level=settings.log_level))
    try:
        server.run(sockets=[sock])
    finally:
        engine.dispose()


class EntryApp:
    """The worker's ASGI app: `/svc/...` to the proxy, anything else 404 NOT_FOUND (the API is
    on the broker's own port); its lifespan publishes the worker's load."""

    def __init__(self, services, limiter, max_body_bytes: int, metrics_dir: str | None = None) -> None:
        """`metrics_dir`: where the parent reads this worker's request metrics (None: not sent)."""
        self.services = services
        self.proxy = ServiceProxy(services=services, max_body_bytes=max_body_bytes, limiter=limiter)
        self._metrics_dir = metrics_dir
        self._tasks: list[asyncio.Task] = []

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith(PREFIX):
                return await self.proxy(scope, receive, send)
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(_NOT_HERE)).encode())]})
            return await send({"type": "http.response.body", "body": _NOT_HERE})
        if kind == "lifespan":
            return await self._lifespan(receive, send)
        if kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                gc.freeze()  # as the broker: the long-lived heap stays out of full collections
                if self.services.service_load is not None:
                    self._tasks.append(asyncio.ensure_future(self._publish()))
                if self._metrics_dir is not None:
                    self._tasks.append(asyncio.ensure_future(self._send_metrics()))
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                self.send_metrics()  # the last counts, after the requests in flight finished
                await send({"type": "lifespan.shutdown.complete"})
                return

    def send_metrics(self) -> None:
        """This worker's request metrics for the parent (a write that fails is retried by the
        next one, which carries the totals again)."""
        if self._metrics_dir is None or self.services.service_router is None:
            return
        try:
            write_samples(self._metrics_dir, os.getpid(), self.services.service_router.export_samples())
        except OSError:
            log.warning("writing the entry point's request metrics failed", exc_info=True)

    async def _send_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_S)
            self.send_metrics()

    async def _publish(self) -> None:
        from broker.services.service_load import SAMPLE_S

        pub = self.services.service_load
        while True:
            await asyncio.sleep(SAMPLE_S)
            try:
                await asyncio.to_thread(pub.tick)
            except Exception:  # a database hiccup: the next tick writes again
                log.warning("publishing the entry point's load failed", exc_info=True)



# ----------------------------------------------------------------------------- metrics files
def write_samples(directory: str, pid: int, samples) -> None:
    """One worker's samples as `<directory>/<pid>.json`, replaced atomically (write, rename)."""
    path = os.path.join(directory, f"{pid}.json")
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps([[s.name, s.labels, s.value, s.cumulative] for s in samples]))
    os.replace(tmp, path)


def read_samples(directory: str, pid: int) -> list:
    """What `write_samples` last wrote for `pid` ([] when nothing or unreadable)."""
    from broker.services.service_router import Sample

    try:
        with open(os.path.join(directory, f"{pid}.json"), "rb") as f:
            rows = orjson.loads(f.read())
        return [Sample(name, tuple(tuple(kv) for kv in labels), float(v), bool(c)) for name, labels, v, c in rows]
    except (OSError, ValueError, TypeError):
        return []
