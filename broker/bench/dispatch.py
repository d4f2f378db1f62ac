"""`broker bench dispatch`: submit -> job process running, the broker against Ray's Jobs API.

One run, on an idle local one-node Ray cluster (logical GPUs, dashboard on for the Jobs API):
1. a fresh broker (SQLite in a temp dir, demo region, admin token, `runtime: process` allowed)
   serves the real API with uvicorn on a free port in this process, with its scheduling loop
   and a RayExecutor on that cluster;
2. `n` times, alternating so that drift on the shared machine hits both alike:
   - broker: `POST /api/v1/jobs` of `sh -c 'date +%s.%N > marker'` with 1 GPU and 1 CPU; the
     latency is the epoch time the process wrote minus the time just before the POST;
   - Ray:    `JobSubmissionClient.submit_job` of the same command with
     `entrypoint_num_gpus=1, entrypoint_num_cpus=1`, timed the same way;
   each job is waited for until it ends before the next one starts (an idle cluster each time);
3. one warm-up run of each path comes first and is not counted.

With `--isolation`: isolated_ms_median, host_ms_median, ratio (of the medians; goal <= 1.10),
paired_ratio_median (the median of each back-to-back pair's ratio), load_1min (before, after),
isolated_ms / host_ms (every sample).

JSON keys: broker_ms_median, ray_jobs_ms_median, ratio (= broker / ray; goal <= 0.5), plus
broker_ms / ray_jobs_ms (every sample), n, path ("api": through REST and the scheduling loop),
warm_runners (spare runners per node; 0 measures the cold path: a fresh runner per worker).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from broker.bench.common import stop_stack, wait_until

GOAL_RATIO = 0.5


def _marker_time(path: Path):
    def read() -> float | None:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return float(text) if text else None
        except ValueError:
            return None
    return read


def _wait(pred, timeout_s: float, what: str):
    """Fine-grained (5 ms): dispatch latencies are the figure measured; None means not yet."""
    return wait_until(pred, timeout_s, what, poll_s=0.005, accept=lambda v: v is not None)


def bench(n: int = 20, *, gpus_per_node: int = 2, project: str = "ouh-liver",
          warm_runners: int = 2, keep_dir: str | None = None, isolation: bool = False,
          image: str = "localhost/busybox:test") -> dict:
    """`isolation` True: the isolation comparison instead of the Ray Jobs one (see
    `_isolation_cost`)."""
    import uvicorn
    from sqlmodel import Session

    from broker.adapters.ray.executor import RayExecutor
    from broker.adapters.ray.jobs_baseline import RayJobsBaseline
    from broker.adapters.ray.local import free_port, start_local_cluster
    from broker.app import create_app
    from broker.client import BrokerClient
    from broker.db import make_engine, migrate
    from broker.services.bootstrap import ensure_admin_token, seed_demo
    from broker.settings import Settings

    work = Path(keep_dir or tempfile.mkdtemp(prefix="bench-dispatch-"))
    marks = work / "marks"
    marks.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = Settings(data_dir=work / "broker", port=port, allow_process_runtime=True)
    settings.ensure_data_dir()
    migrate(settings)
    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s, process_runtime=True)
        s.commit()
    token = ensure_admin_token(settings, engine).read_text().strip()

    cluster = start_local_cluster(gpus=gpus_per_node, nodes=1, dashboard=True,
                                  log_file=work / "ray.log")
    server = executor = None
    thread = None
    try:
        executor = RayExecutor(cluster.address, log_dir=work / "logs", warm_runners=warm_runners)
        app = create_app(settings, executor=executor, engine=engine)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        _wait(lambda: True if server.started else None, 60, "the API start")
        client = BrokerClient(f"http://127.0.0.1:{port}", token)
        if isolation:
            return _isolation_cost(n, client=client, executor=executor, settings=settings, project=project,
                                   image=image, warm_runners=warm_runners)
        ray_jobs = RayJobsBaseline(cluster.dashboard_url)

        def broker_once(i: int) -> float:
            m = marks / f"broker-{i}"
            t0 = time.time()
            job = client.submit(name=f"dispatch-{i}", project=project, command=["sh", "-c", f"date +%s.%N > {m}"],
                                resources={"gpus": 1, "cpus": 1, "memory_gb": 0.5}, runtime="process",
                                max_runtime_s=120, workload_class="innovation")
            ran = _wait(_marker_time(m), 120, f"broker job {job['id']} start")
            done = client.wait(job["id"], timeout=120, poll_s=0.05)
            if done["status"] != "SUCCEEDED":
                raise RuntimeError(f"broker job {job['id']} ended {done['status']}")
            return ran - t0

        def ray_once(i: int) -> float:
            m = marks / f"ray-{i}"
            return ray_jobs.run(f"sh -c 'date +%s.%N > {m}'", cpus=1, gpus=1, started=_marker_time(m))

        warm = {"broker_ms": broker_once(-1) * 1000, "ray_jobs_ms": ray_once(-1) * 1000}
        b, r = [], []
        for i in range(n):
            if i % 2:
                r.append(ray_once(i) * 1000)
                b.append(broker_once(i) * 1000)
            else:
                b.append(broker_once(i) * 1000)
                r.append(ray_once(i) * 1000)
        client.close()
    finally:
        stop_stack(server, thread, executor, cluster, engine)
    bm, rm = statistics.median(b), statistics.median(r)
    return {"broker_ms_median": round(bm, 1), "ray_jobs_ms_median": round(rm, 1),
            "ratio": round(bm / rm, 3), "goal_ratio": GOAL_RATIO, "n": n, "path": "api",
            "warm_runners": warm_runners,
            "broker_ms": [round(x, 1) for x in b], "ray_jobs_ms": [round(x, 1) for x in r],
            "warmup": {k: round(v, 1) for k, v in warm.items()}}


def _isolation_cost(n: int, *, client, executor, settings, project: str, image: str, warm_runners: int) -> dict:
    """Container jobs through the same broker, alternately with the sandbox (own network
    namespace, gang network and its gateway rule, no capabilities, read-only root, limits) and
    without it (host network, podman's defaults): submit -> the container's first command ran,
    read from the mtime of a file it touches in its results directory (one clock: the node's)."""
    results = settings.results_dir(project)

    def once(i: int, isolated: bool) -> float:
        executor.isolation = isolated  # read by the executor at launch, per job
        m = results / f"iso-{int(isolated)}-{i}"
        t0 = time.time()
        job = client.submit(name=f"iso-{i}", project=project, image=image,
                            command=["sh", "-c", f"touch /results/{m.name}"],
                            resources={"gpus": 1, "cpus": 1, "memory_gb": 0.5}, max_runtime_s=120,
                            workload_class="innovation")
        ran = _wait(lambda: m.stat().st_mtime if m.exists() else None, 120, f"container job {job['id']} start")
        done = client.wait(job["id"], timeout=120, poll_s=0.05)
        if done["status"] != "SUCCEEDED":
            raise RuntimeError(f"container job {job['id']} ended {done['status']}: {done['message']}")
        return (ran - t0) * 1000

    load_before = os.getloadavg()[0]
    once(-1, True), once(-2, False)  # warm-up, not counted
    on, off = [], []
    for i in range(n):
        for isolated in ((True, False) if i % 2 == 0 else (False, True)):
            (on if isolated else off).append(once(i, isolated))
    client.close()
    mon, moff = statistics.median(on), statistics.median(off)
    # each pair ran back to back (alternating which first): the median of the pairs' ratios is
    # less swayed by the shared machine's load drifting over the run than the ratio of medians
    paired = statistics.median(a / b for a, b in zip(on, off))
    return {"isolated_ms_median": round(mon, 1), "host_ms_median": round(moff, 1),
            "ratio": round(mon / moff, 3), "paired_ratio_median": round(paired, 3),
            "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "goal_ratio": 1.10, "n": n, "path": "api-container",
            "warm_runners": warm_runners, "isolated_ms": [round(x, 1) for x in on],
            "host_ms": [round(x, 1) for x in off]}
