"""`broker bench service`: a service's entry point against its replicas, failover and rollouts.

One run, on a local one-node Ray cluster:
1. a fresh broker (SQLite in a temp dir, demo region, `runtime: process` allowed) serves the
   real API with uvicorn on a free port in this process, with its periodic tasks (scheduling
   loop, service controller) and a RayExecutor;
2. a service of two `runtime: process` replicas (a small threaded Python HTTP/1.1 server,
   `SERVER`) is deployed and waited for;
3. latency (one connection, sequential requests) and throughput (`concurrency` keep-alive
   connections for `duration` s) through the entry point `/svc/ouh-liver/bench/` and straight
   to the replicas (connections spread over both), and with `proxy_workers` (default 2) through
   the entry point's worker processes too (`broker.entry`, their own port), alternating blocks
   so drift hits every path; the load generator runs in a subprocess (its own interpreter: no
   GIL shared with the broker);
4. failover (through the workers when there are any, else the broker's port): one replica's process is killed (SIGKILL); the time until it is out of rotation
   and until a replacement is ready, with requests through the entry point meanwhile (errors);
5. rollout: a new revision (env change) under a load of `users` sequential clients, until every
   replica runs it (errors); then a bad revision (exits at once), rolled back automatically
   (errors; the service keeps serving).

JSON keys: proxy / direct ({rps, p50_ms, p99_ms, requests, errors}; proxy also
broker_cpu_us_per_request: the CPU time of the broker's event-loop thread per proxied request,
which depends far less on the machine's other load than the ratio), throughput_ratio (proxy /
direct; goal >= 0.5), p50_overhead_ms (goal <= 2), failover {out_of_rotation_s, replaced_s,
errors}, rollout {seconds, requests, errors}, rollback {seconds, requests, errors, rolled_back};
with workers also workers ({rps, p50_ms, p99_ms, ..., workers_cpu_us_per_request: the CPU of
all the workers' processes per request through them}), workers_throughput_ratio,
workers_p50_overhead_ms, and failover_via. cpu_us_per_request: per path, the CPU per request
of the load generator, the replicas and the broker's loop (or the workers), their total, and
cpu_bound_ratio (direct's total / the path's: the most the ratio can be when every core of the
machine is busy).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from broker.bench.common import percentile, read_response, stat_cpu_s, stop_stack, wait_until

GOAL_RATIO, GOAL_OVERHEAD_MS = 0.5, 2.0
PROJECT, NAME = "ouh-liver", "bench"
PERIOD_S = 0.5

# A replica: HTTP/1.1 keep-alive, answers "<job id> <pid>" on every GET, listens on $PORT.
SERVER = """
import http.server, os, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        body = f"{os.environ['BROKER_JOB_ID']} {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):  # no access log per request
        return
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("", int(os.environ["PORT"])), H).serve_forever()
"""


def service_spec(**over) -> dict:
    spec = {"name": NAME, "project": PROJECT, "runtime": "process", "command": ["python3", "-c", SERVER],
            "resources": {"gpus": 0, "cpus": 0.25, "memory_gb": 0.1}, "replicas": {"min": 2, "max": 2},
            "readiness": {"path": "/healthz", "period_s": PERIOD_S, "failure_threshold": 2, "timeout_s": 0.5},
            "restart": {"backoff_initial_s": 0.2, "backoff_max_s": 2, "progress_deadline_s": 20}}
    spec.update(over)
    return spec


# ----------------------------------------------------------------------------- load (subprocess)
_STOP = threading.Event()  # SIGTERM in the load subprocess: finish and report

async def _client(host: str, port: int, path: str, headers: str, stop_at: float, n: int | None,
                  lat: list[float], codes: dict[int, int]) -> None:
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode()
    reader = writer = None
    done = 0
    while not _STOP.is_set() and ((n is None and time.perf_counter() < stop_at) or (n is not None and done < n)):
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            t0 = time.perf_counter()
            writer.write(req)
            status, _ = await read_response(reader)
            lat.append(time.perf_counter() - t0)
            codes[status] = codes.get(status, 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            codes[0] = codes.get(0, 0) + 1  # connection failed: an error the user would see
            writer = None
            await asyncio.sleep(0.01)
        done += 1
    if writer is not None:
        writer.close()


async def _load(targets: list[tuple[str, int]], path: str, token: str, concurrency: int, duration_s: float,
                n: int | None) -> dict:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _STOP.set)
    headers = f"Authorization: Bearer {token}\r\n" if token else ""
    lat: list[float] = []
    codes: dict[int, int] = {}
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(*targets[i % len(targets)], path, headers, t0 + duration_s, n, lat, codes)
                           for i in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = codes.get(200, 0)
    return {"rps": round(ok / wall, 1), "p50_ms": round(percentile(lat, 0.5) * 1000, 3),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 3), "requests": sum(codes.values()),
            "errors": sum(c for s, c in codes.items() if s != 200), "codes": {str(k): v for k, v in codes.items()},
            "seconds": round(wall, 2)}


def load(targets: list[tuple[str, int]], path: str, *, token: str = "", concurrency: int = 1,
         duration_s: float = 5.0, n: int | None = None, background: bool = False):
    """Run the load generator in a subprocess; its result (or the Popen when `background`)."""
    args = json.dumps({"targets": targets, "path": path, "token": token, "concurrency": concurrency,
                       "duration_s": duration_s, "n": n})
    proc = subprocess.Popen([sys.executable, "-m", "broker.bench.service", "load", args], stdout=subprocess.PIPE,
                            text=True)
    return proc if background else result(proc)


def result(proc: subprocess.Popen, stop: bool = False) -> dict:
    """The load's figures; `stop`: end it now (SIGTERM: the clients finish their request)."""
    if stop:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the run
def bench(*, concurrency: int = 16, duration_s: float = 5.0, latency_n: int = 500, users: int = 20,
          keep_dir: str | None = None, proxy_workers: int = 2) -> dict:
    import uvicorn
    from sqlmodel import Session

    from broker.adapters.ray.executor import RayExecutor
    from broker.adapters.ray.local import free_port, start_local_cluster
    from broker.app import create_app
    from broker.client import BrokerClient
    from broker.db import make_engine, migrate
    from broker.entry import EntryWorkers
    from broker.services.bootstrap import ensure_admin_token, seed_demo
    from broker.settings import Settings

    work = Path(keep_dir or tempfile.mkdtemp(prefix="bench-service-"))
    port = free_port()
    # the entry point's per-caller limit set where no run reaches it (the limiter stays on the path)
    settings = Settings(data_dir=work / "broker", port=port, allow_process_runtime=True, cycle_interval_s=0.25,
                        grace_period_s=2.0, service_rate_limit_per_caller_per_s=1e7,
                        service_rate_limit_per_caller_burst=10_000_000, service_proxy_workers=proxy_workers,
                        service_proxy_port=free_port() if proxy_workers else 0)
    settings.ensure_data_dir()
    migrate(settings)
    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s, process_runtime=True)
        s.commit()
    token = ensure_admin_token(settings, engine).read_text().strip()
    cluster = start_local_cluster(gpus=2, nodes=1, log_file=work / "ray.log")
    server = executor = thread = workers = None
    try:
        executor = RayExecutor(cluster.address, log_dir=work / "logs")
        if proxy_workers:  # as `broker up` with BROKER_SERVICE_PROXY_WORKERS
            workers = EntryWorkers(settings)
            workers.start()
        app = create_app(settings, executor=executor, engine=engine,
                         service_limiter=workers.limiter if workers else None)
        # as `broker up` runs it (no access log)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                               access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, 60, "the API start")
        with BrokerClient(f"http://127.0.0.1:{port}", token) as c:
            return _measure(c, port, token, concurrency=concurrency, duration_s=duration_s, latency_n=latency_n,
                            users=users, server_tid=thread.native_id, workers=workers)
    finally:
        if workers is not None:
            workers.stop()
        stop_stack(server, thread, executor, cluster, engine)


def _thread_cpu_s(tid: int | None) -> float:
    """CPU seconds of one thread of this process (Linux; 0 elsewhere)."""
    return stat_cpu_s(f"/proc/self/task/{tid}/stat") or 0.0


def _procs_cpu_s(pids: list[int]) -> float:
    """CPU seconds of whole processes (the entry point's workers; Linux; 0 elsewhere). A worker
    that has ended has no /proc entry left and counts nothing."""
    return sum(stat_cpu_s(f"/proc/{pid}/stat") or 0.0 for pid in pids)


def _children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _replica_pids(c) -> list[int]:
    """The replicas' processes (each answers its job id and pid)."""
    pids: set[int] = set()
    for _ in range(40):
        try:
            pids.add(int(c.call_service(PROJECT, NAME, "/whoami").text.split()[1]))
        except (ValueError, IndexError):
            continue
        if len(pids) >= 2:
            break
    return sorted(pids)


def _measure(c, port: int, token: str, *, concurrency: int, duration_s: float, latency_n: int, users: int,
             server_tid: int | None = None, workers=None) -> dict:
    c.deploy_service(service_spec())
    c.wait_service(NAME, project=PROJECT, ready=2, timeout=120)
    direct = [(r["host"], r["port"]) for r in c.service_replicas(NAME, project=PROJECT) if r["ready"]]
    entry = f"/svc/{PROJECT}/{NAME}/predict"
    # the paths: 0 the broker's own port, 1 straight to the replicas, 2 the entry point's workers
    paths = {0: ([("127.0.0.1", port)], entry, token), 1: (direct, "/predict", "")}
    if workers is not None:
        paths[2] = ([("127.0.0.1", workers.port)], entry, token)
    for targets, path, tok in paths.values():  # warm-up: connections, caches
        load(targets, path, token=tok, n=200)
    keys = list(paths)
    lat: dict[int, list[dict]] = {k: [] for k in keys}
    for i in range(4):  # latency: one connection, sequential; blocks alternate (order rotates)
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            targets, path, tok = paths[k]
            lat[k].append(load(targets, path, token=tok, n=latency_n // 4))
    thr: dict[int, list[dict]] = {k: [] for k in keys}
    cpu = {k: 0.0 for k in keys}  # the broker's event-loop thread during each path's blocks
    wcpu = {k: 0.0 for k in keys}  # the workers' processes during each path's blocks
    rcpu = {k: 0.0 for k in keys}  # the replicas' processes
    lcpu = {k: 0.0 for k in keys}  # the load generator (a child: its CPU once it exited)
    rpids = _replica_pids(c)
    for i in range(3 if len(keys) > 2 else 2):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for k in (order if i % 2 == 0 else order[::-1]):
            targets, path, tok = paths[k]
            c0, w0 = _thread_cpu_s(server_tid), _procs_cpu_s(workers.pids if workers else [])
            r0, l0 = _procs_cpu_s(rpids), _children_cpu_s()
            thr[k].append(load(targets, path, token=tok, concurrency=concurrency, duration_s=duration_s))
            cpu[k] += _thread_cpu_s(server_tid) - c0
            wcpu[k] += _procs_cpu_s(workers.pids if workers else []) - w0
            rcpu[k] += _procs_cpu_s(rpids) - r0
            lcpu[k] += _children_cpu_s() - l0
    p, d = _merge(lat[0], thr[0]), _merge(lat[1], thr[1])
    n_proxy = sum(r["requests"] for r in thr[0])
    # CPU of the broker's event loop per proxied request, less what it spent meanwhile without
    # proxying (the direct blocks, per block: API calls, refreshes): robust to the machine's other load
    idle = cpu[1] / len(thr[1])
    p["broker_cpu_us_per_request"] = (round((cpu[0] - idle * len(thr[0])) / n_proxy * 1e6, 1)
                                      if n_proxy and server_tid else None)
    p["broker_cpu_s"] = round(cpu[0], 2)
    d["broker_cpu_s"] = round(cpu[1], 2)
    out = {"proxy": p, "direct": d, "throughput_ratio": round(p["rps"] / d["rps"], 3) if d["rps"] else None,
           "p50_overhead_ms": round(p["p50_ms"] - d["p50_ms"], 3), "goal_ratio": GOAL_RATIO,
           "goal_overhead_ms": GOAL_OVERHEAD_MS, "concurrency": concurrency, "duration_s": duration_s}
    # CPU per request of every process on each path (us): on a machine whose cores are all busy
    # the ratio cannot exceed direct's total over the path's total ("cpu_bound_ratio")
    per = {}
    for k, name in ((0, "proxy"), (1, "direct"), (2, "workers")):
        n = sum(r["requests"] for r in thr.get(k, ()))
        if not n:
            continue
        parts = {"load": lcpu[k] / n * 1e6, "replicas": rcpu[k] / n * 1e6}
        if k == 0:  # less what the broker's loop and the workers spend without these requests
            parts["broker"] = (cpu[0] - cpu[1] / len(thr[1]) * len(thr[0])) / n * 1e6
        elif k == 2:
            parts["workers"] = (wcpu[2] - wcpu[1] / len(thr[1]) * len(thr[2])) / n * 1e6
        per[name] = {x: round(v, 1) for x, v in parts.items()} | {"total": round(sum(parts.values()), 1)}
    for name in ("proxy", "workers"):
        if name in per and "direct" in per:
            per[name]["cpu_bound_ratio"] = round(per["direct"]["total"] / per[name]["total"], 3)
    out["cpu_us_per_request"] = per | {"replica_pids": len(rpids)}
    via = [("127.0.0.1", port)]
    if workers is not None:
        w = _merge(lat[2], thr[2])
        n_w = sum(r["requests"] for r in thr[2])
        w["workers"] = workers.n
        # CPU of all the workers' processes per request through them, less their idle CPU
        w["workers_cpu_us_per_request"] = round((wcpu[2] - wcpu[1] / len(thr[1]) * len(thr[2])) / n_w * 1e6, 1) \
            if n_w else None
        out["workers"] = w
        out["workers_throughput_ratio"] = round(w["rps"] / d["rps"], 3) if d["rps"] else None
        out["workers_p50_overhead_ms"] = round(w["p50_ms"] - d["p50_ms"], 3)
        via = [("127.0.0.1", workers.port)]  # failover and rollouts through the workers: the harder path
    out["failover_via"] = "workers" if workers is not None else "broker"
    out["failover"] = _failover(c, via, entry, token)
    out["rollout"] = _rollout(c, via, entry, token, users, {"env": {"MODEL": "v2"}}, want_rolled_back=False)
    out["rollback"] = _rollout(c, via, entry, token, users,
                               {"command": ["python3", "-c", "import sys; sys.exit(1)"]}, want_rolled_back=True)
    c.delete_service(NAME, project=PROJECT)
    return out


def _merge(lat: list[dict], thr: list[dict]) -> dict:
    """Latency from the sequential blocks (median of their p50/p99), rate from the concurrent."""
    return {"p50_ms": round(statistics.median(r["p50_ms"] for r in lat), 3),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in lat), 3),
            "rps": round(statistics.median(r["rps"] for r in thr), 1),
            "p50_ms_loaded": round(statistics.median(r["p50_ms"] for r in thr), 3),
            "p99_ms_loaded": round(statistics.median(r["p99_ms"] for r in thr), 3),
            "requests": sum(r["requests"] for r in lat + thr), "errors": sum(r["errors"] for r in lat + thr)}


def _failover(c, proxy, entry: str, token: str) -> dict:
    reps = [r for r in c.service_replicas(NAME, project=PROJECT) if r["ready"]]
    victim = reps[0]
    pid = None
    for _ in range(20):  # find the victim's pid through the entry point
        job_id, p = c.call_service(PROJECT, NAME, "/whoami").text.split()
        if job_id == victim["job_id"]:
            pid = int(p)
            break
    if pid is None:
        return {"error": "could not find the replica's process"}
    bg = load(proxy, entry, token=token, concurrency=4, duration_s=60.0, background=True)
    time.sleep(1.0)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    out_s = replaced_s = None
    while time.monotonic() - t0 < 30:
        now = c.service_replicas(NAME, project=PROJECT)
        if out_s is None and victim["job_id"] not in {r["job_id"] for r in now if r["ready"]}:
            out_s = time.monotonic() - t0
        if out_s is not None and sum(1 for r in now if r["ready"]) >= 2 and \
                victim["job_id"] not in {r["job_id"] for r in now}:
            replaced_s = time.monotonic() - t0
            break
        time.sleep(0.02)
    time.sleep(1.0)
    r = result(bg, stop=True)
    return {"out_of_rotation_s": round(out_s, 3) if out_s is not None else None,
            "replaced_s": round(replaced_s, 3) if replaced_s is not None else None,
            "probe_period_s": PERIOD_S, "requests": r["requests"], "errors": r["errors"], "codes": r["codes"]}


def _rollout(c, proxy, entry: str, token: str, users: int, change: dict, *, want_rolled_back: bool) -> dict:
    before = c.service(NAME, project=PROJECT)
    bg = load(proxy, entry, token=token, concurrency=users, duration_s=40.0, background=True)
    time.sleep(1.0)
    t0 = time.monotonic()
    c.update_service(NAME, project=PROJECT, **change)
    done_s = None
    rolled_back = False
    while time.monotonic() - t0 < 38:
        s = c.service(NAME, project=PROJECT)
        reps = c.service_replicas(NAME, project=PROJECT)
        if want_rolled_back and s["revision"] == before["revision"] and "rolled back" in (s.get("message") or ""):
            if sum(1 for r in reps if r["ready"]) >= 2 and all(r["revision"] == before["revision"] for r in reps):
                rolled_back, done_s = True, time.monotonic() - t0
                break
        if not want_rolled_back and s["stable_revision"] == s["revision"] != before["revision"] and \
                all(r["revision"] == s["revision"] and r["ready"] for r in reps) and len(reps) == 2:
            done_s = time.monotonic() - t0
            break
        time.sleep(0.1)
    time.sleep(1.0)  # a second of load on the finished state too
    r = result(bg, stop=True)
    out = {"seconds": round(done_s, 2) if done_s is not None else None, "users": users,
           "requests": r["requests"], "errors": r["errors"], "rps": r["rps"]}
    if want_rolled_back:
        out["rolled_back"] = rolled_back
    return out


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "load":
    a = json.loads(sys.argv[2])
    print(json.dumps(asyncio.run(_load([tuple(t) for t in a["targets"]], a["path"], a["token"], a["concurrency"],
                                       a["duration_s"], a["n"]))))
