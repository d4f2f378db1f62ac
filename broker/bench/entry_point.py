"""`python -m broker.bench.entry_point [--requests N]`: the CPU one request costs the broker's
service entry point, in process: no uvicorn and no client sockets, so the machine's other
load moves it far less than `broker bench service`'s ratio.

One run: a fresh broker (SQLite in a temp dir, demo region, no periodic tasks), one service
whose routing table holds a single replica, a local asyncio HTTP/1.1 replica answering 5 bytes
on keep-alive; then `await app(scope, receive, send)` for a GET through `/svc/ouh-liver/...`
(bearer token), 500 warm-up requests and 5 blocks of N/5. JSON: cpu_us and wall_us per request
of each block (the replica's own cost is in both: compare trees with the same script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nserver: x\r\ndate: y\r\n\r\nhello"


def bench(requests: int = 20_000) -> dict:
    from fastapi.testclient import TestClient
    from sqlmodel import Session

    from broker.app import create_app
    from broker.db import make_engine, migrate
    from broker.services.bootstrap import ensure_admin_token, seed_demo
    from broker.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="bench-entry-"))
    settings = Settings(data_dir=work / "broker", rate_limit_per_s=1e7, rate_limit_burst=10_000_000,
                        service_rate_limit_per_caller_per_s=1e7, service_rate_limit_per_caller_burst=10_000_000)
    settings.ensure_data_dir()
    migrate(settings)
    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s)
        s.commit()
    token = ensure_admin_token(settings, engine).read_text().strip()
    app = create_app(settings, start_background=False, engine=engine)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/api/v1/services", json={"name": "entry", "project": "ouh-liver", "image": "localhost/busybox:test",
                                             "command": ["/bin/busybox", "httpd"], "replicas": {"min": 1, "max": 1},
                                             "resources": {"gpus": 0, "cpus": 0.5, "memory_gb": 0.5}})
        r.raise_for_status()
        sid = r.json()["id"]
        blocks = asyncio.run(_run(app, sid, token, requests))
    engine.dispose()
    return {"requests": requests, "cpu_us": [round(a, 1) for a, _ in blocks], "wall_us": [round(b, 1) for _, b in blocks]}


async def _run(app, sid: str, token: str, requests: int) -> list[tuple[float, float]]:
    from broker.services.service_router import Endpoint

    async def replica(reader, writer):
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(ANSWER)

    srv = await asyncio.start_server(replica, "127.0.0.1", 0)
    rt = app.state.services.service_router
    rt.set_endpoints(sid, [Endpoint("replica", "127.0.0.1", srv.sockets[0].getsockname()[1])])
    path = "/svc/ouh-liver/entry/predict"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"broker"), (b"authorization", f"Bearer {token}".encode()),
                         (b"user-agent", b"bench")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    async def one():
        rt.refreshed()  # the table as the controller keeps it: no database read here
        sent.clear()
        await app(dict(scope), receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"the entry point answered {sent}")

    for _ in range(500):
        await one()
    out = []
    n = max(1, requests // 5)
    for _ in range(5):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await one()
        out.append(((time.process_time() - c0) / n * 1e6, (time.perf_counter() - t0) / n * 1e6))
    srv.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    print(json.dumps(bench(ap.parse_args().requests)))


if __name__ == "__main__":
    main()
