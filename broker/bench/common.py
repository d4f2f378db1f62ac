"""What the HTTP benchmarks share: a fresh database, the API server in a subprocess, the raw
HTTP/1.1 response reader of the load generators, and small statistics.

Why a subprocess for the server: the load generator and the server must not share one event
loop or one GIL, or the benchmark measures itself. The server process gets its own session
(process group) so that stopping it stops its uvicorn workers too, and nothing else.

Run as `python -m broker.bench.common serve <app> <db url> <port> <workers> <lean>`: the
subprocess entry point (`<app>` is one of `APPS`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
APPS = {"broker": "broker.bench.common:broker_app", "baseline": "broker.bench.baseline:baseline_app"}

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, int(round(q * (len(ys) - 1)))))]


def redact(url: str) -> str:
    """The database URL without credentials or options, as the reports print it."""
    return url.split("?")[0].split("@")[-1] if "@" in url else url.split("?")[0]


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a load generator on uvloop when installed (less client CPU), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(make())
    return uvloop.run(make())


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length (what uvicorn sends here)."""
    status = int((await reader.readline()).split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.partition(b":")
        if k.lower() == b"content-length":
            length = int(v)
    return status, await reader.readexactly(length)


# ----------------------------------------------------------------------------- database


def prepare_database(url: str | None, seed: Callable[[str], str] | None = None) -> tuple[str, Callable[[], None]]:
    """Return (url, cleanup) for a fresh, migrated, seeded database: a private schema on
    PostgreSQL (dropped by cleanup), a temp-dir file on SQLite when no URL is given. `seed`
    (url -> url) migrates and fills it; the default is the demo region and four nodes."""
    seed = seed or _seed
    from broker.db import normalize_url

    if url is None:
        url = PG_DEFAULT if _pg_up(PG_DEFAULT) else ""
    if not url or url.startswith("sqlite"):
        if not url:
            d = tempfile.mkdtemp(prefix="bench-")
            return seed(f"sqlite:///{d}/broker.db"), lambda: shutil.rmtree(d, ignore_errors=True)
        return seed(url), lambda: None
    url = normalize_url(url)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    import psycopg

    base = url.replace("+psycopg", "").split("?")[0]
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')

    def cleanup():
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')

    sep = "&" if "?" in url else "?"
    return seed(f"{url}{sep}options=-csearch_path%3D{schema}"), cleanup


def _pg_up(url: str) -> bool:
    try:
        import psycopg

        psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2).close()
        return True
    except Exception:
        return False


def _seed(url: str) -> str:
    from sqlmodel import Session

    from broker.db import make_engine, migrate
    from broker.models import Node
    from broker.services.bootstrap import seed_demo
    from broker.settings import Settings

    st = Settings(database_url=url, data_dir=Path(tempfile.gettempdir()))  # data_dir is unused here
    migrate(st)
    eng = make_engine(st)
    with Session(eng) as s:
        seed_demo(s, gpu_model="A100")
        for i in range(4):
            s.add(Node(id=f"bench-{i}", hostname=f"bench-{i}", pool="innovation" if i else "operation",
                       gpu_model="A100", gpus=8, cpus=64, memory_gb=512))
        s.commit()
    eng.dispose()
    return url


# ----------------------------------------------------------------------------- server


def broker_app():
    """The real app as a deployment builds it, without periodic tasks (nothing to schedule)."""
    from broker.app import create_app
    from broker.settings import Settings

    return create_app(Settings(), start_background=False)


def serve(app: str, url: str, port: int, workers: int, lean: bool) -> None:
    """Run the API in this process (the subprocess entry point). `lean`: no proxy, server or
    date headers (what the submit benchmark measures with)."""
    import uvicorn

    os.environ["BROKER_DATABASE_URL"] = url
    extra = dict(proxy_headers=False, server_header=False, date_header=False) if lean else {}
    uvicorn.run(APPS[app], factory=True, host="127.0.0.1", port=port, workers=workers, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, **extra)


def start_server(app: str, url: str, workers: int, *, what: str, lean: bool = False,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """Start `serve` in a subprocess on a free port (its own process group); return it healthy."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "broker.bench.common", "serve", app, url, str(port), str(workers),
                             "lean" if lean else "full"], start_new_session=True,
                            env={**os.environ, **(env or {})})
    return wait_healthy(proc, port, what), port


def wait_healthy(proc: subprocess.Popen, port: int, what: str, timeout_s: float = 60.0) -> subprocess.Popen:
    """Wait until the server subprocess answers GET /healthz with 200; stop it and raise if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server's process group (it and its workers only), SIGTERM then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


if __name__ == "__main__" and len(sys.argv) >= 7 and sys.argv[1] == "serve":
    serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "lean")


def wait_until(pred: Callable[[], T], timeout_s: float, what: str, *, poll_s: float = 0.05,
               accept: Callable[[object], bool] = bool) -> T:
    """Poll `pred` until `accept` takes its value (truthy by default); TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if accept(got):
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(poll_s)


def stop_stack(server, thread, executor, cluster, engine) -> None:
    """End what an in-process bench started, in order: the API server (uvicorn) and its thread,
    every attempt the executor still holds and the executor, the Ray cluster, the engine."""
    if server is not None:
        server.should_exit = True
        if thread is not None:
            thread.join(timeout=30)
    if executor is not None:
        for job_id, attempt in executor.attempts():
            executor.release(job_id, attempt)
        executor.shutdown()
    cluster.stop()
    engine.dispose()


def stat_cpu_s(stat_path: str) -> float | None:
    """User + system CPU seconds from a Linux `/proc/<pid>/stat` (or `/proc/self/task/<tid>/stat`)
    file; None where it cannot be read (not Linux, or the process or thread has ended)."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
