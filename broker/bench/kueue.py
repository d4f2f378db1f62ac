"""`broker bench kueue`: Kueue's scheduler performance scenario through the real broker.

Kueue measures its scheduler with a fixed scenario (its `test/performance/scheduler` baseline):
5 cohorts of 6 ClusterQueues, each queue with nominal quota 20 and borrowing limit 100; per
queue 350 small jobs (1 unit, 200 ms, priority 50, one every 100 ms), 100 medium (5 units,
500 ms, priority 100, one every 500 ms) and 50 large (20 units, 1 s, priority 200, one every
1.2 s); preemption of lower priority within a queue. 15,000 jobs. Its published result: 351 s
wall and 58.7 % average quota usage. This benchmark runs the same scenario as a tenant tree:

- cohort -> department (nominal 120 = its 6 projects' nominal, limit 120: like a cohort, a
  department shares only its own projects' quota), queue -> project (nominal 20, limit 120 =
  nominal + borrowing limit 100), 600 GPUs in the innovation pool;
- Kueue's test has quota but no nodes; here the executor reports 30 nodes of 20 GPUs, so every
  job fits on one node whole and placement adds no fragmentation Kueue does not have;
- every job is submitted over HTTP (`POST /api/v1/jobs`, open loop on its own schedule) to a
  broker server in a subprocess (its own GIL and event loop, as in `broker bench submit`),
  whose real scheduling loop (interval + wake-up on submit) admits, launches, observes and
  finishes it against a `FakeExecutor` whose workers run for the job's `sleep` seconds of wall
  clock. So each job holds its GPUs from admission until the loop sees it end, as on Ray.

Figures (all read back from the database after the run, none from the server's memory):
wall (first submit -> last job finished), average usage = ledger GPU-seconds (admission ->
release, what the broker charges) / (600 GPUs x wall), the same for the scripted work alone,
admission latency (submit -> admitted, submit -> running) per class, preemptions, and the
checks that make the figures trustworthy (`summarize`): every job SUCCEEDED once, no attempt
admitted twice, no job with two attempts holding GPUs at once, never more than 600 GPUs held.

Run as `python -m broker.bench.kueue serve <url> <port> <data dir> <priority preemption 0|1>`:
the server subprocess entry point.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

from broker.bench.common import (free_port, percentile, read_response, redact, run_async, stat_cpu_s,
                                 stop_server, wait_healthy)

GOAL_WALL_S = 120.0
GOAL_USAGE_PCT = 80.0
KUEUE = {"wall_s": 351.1, "usage_pct": 58.7,
         "avg_time_to_admission_ms": {"small": 215468, "medium": 76768, "large": 6666}}

COHORTS, QUEUES, NOMINAL, BORROWING_LIMIT = 5, 6, 20, 100
NODES, GPUS_PER_NODE = 30, 20
GPU_MODEL = "A100"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class JobClass:
    name: str
    gpus: int
    run_s: float
    count: int  # per queue, at scale 1
    interval_s: float  # between two submits of this class in one queue
    priority: int


CLASSES = (JobClass("small", 1, 0.2, 350, 0.1, 50),
           JobClass("medium", 5, 0.5, 100, 0.5, 100),
           JobClass("large", 20, 1.0, 50, 1.2, 200))


@dataclass(frozen=True)
class Submit:
    at_s: float  # offset from the start of the run
    project: str
    cls: JobClass
    index: int


def project_ids() -> list[tuple[str, str]]:
    """(department, project) for every queue of the scenario."""
    return [(f"cohort-{c}", f"cohort-{c}-q{q}") for c in range(COHORTS) for q in range(QUEUES)]


def schedule(scale: float = 1.0) -> list[Submit]:
    """Every submit of the run in time order: per queue and class, `count x scale` jobs (at
    least one), one every `interval_s`, all series starting at 0 (as Kueue's generator does)."""
    out = []
    for _, pid in project_ids():
        for c in CLASSES:
            n = max(1, round(c.count * scale))
            out += [Submit(k * c.interval_s, pid, c, k) for k in range(n)]
    out.sort(key=lambda s: (s.at_s, s.project, s.cls.name))
    return out


def job_body(s: Submit) -> bytes:
    """A job whose command says how long it runs: the fake executor runs `sleep` seconds."""
    return orjson.dumps({
        "name": f"{s.cls.name}-{s.project}-{s.index}", "project": s.project, "class": "innovation",
        "image": "localhost/bench:kueue", "command": ["sleep", str(s.cls.run_s)],
        "resources": {"gpus": s.cls.gpus, "cpus": 1, "memory_gb": 1}, "workers": 1,
        "max_runtime_s": 60, "priority": s.cls.priority, "runtime": "container", "max_retries": 0,
    })


# ----------------------------------------------------------------------------- setup


def prepare(url: str | None) -> tuple[str, Callable[[], None]]:
    """A fresh migrated database with the scenario's tenants, quotas and one admin token
    (PostgreSQL: a private schema dropped by cleanup; SQLite: a temp-dir file)."""
    from broker.bench.common import prepare_database

    return prepare_database(url, seed=seed)


def seed(url: str) -> str:
    from sqlmodel import Session

    from broker.db import make_engine, migrate
    from broker.models import Department, Pool, Project, QuotaRow
    from broker.settings import Settings

    st = Settings(database_url=url, data_dir=Path(tempfile.gettempdir()))
    migrate(st)
    eng = make_engine(st)
    with Session(eng) as s:
        s.add(Pool(name="innovation", workload_class="innovation", description="Kueue scenario"))
        for c in range(COHORTS):
            did = f"cohort-{c}"
            s.add(Department(id=did, name=did))
            s.add(QuotaRow(owner_kind="department", owner_id=did, pool="innovation", gpu_model=GPU_MODEL,
                           resource="gpus", nominal=NOMINAL * QUEUES, limit=NOMINAL * QUEUES))
        s.flush()
        for did, pid in project_ids():
            s.add(Project(id=pid, department_id=did, name=pid))
            s.add(QuotaRow(owner_kind="project", owner_id=pid, pool="innovation", gpu_model=GPU_MODEL,
                           resource="gpus", nominal=NOMINAL, limit=NOMINAL + BORROWING_LIMIT))
        s.commit()
    eng.dispose()
    return url


def make_token(url: str) -> str:
    from sqlmodel import Session

    from broker.db import make_engine
    from broker.services.bootstrap import create_token
    from broker.settings import Settings

    eng = make_engine(Settings(database_url=url))
    with Session(eng) as s:
        tok, _ = create_token(s, name="bench-kueue", role="platform-admin")
        s.commit()
    eng.dispose()
    return tok


# ----------------------------------------------------------------------------- server


def serve(url: str, port: int, data_dir: str, priority_preemption: bool, profile: str | None = None) -> None:
    """The broker as deployed (its settings from BROKER_* as usual, scheduling loop on), with a
    FakeExecutor of NODES x GPUS_PER_NODE in place of Ray. When the server has stopped, writes
    `<data dir>/server.json`: the executor's launch calls (the double-launch check) and the time
    each step of the scheduling loop took (`timed_loop`), so a slow run says where it went."""
    import dataclasses
    import logging

    import uvicorn

    from broker.adapters.fake import FakeExecutor, Outcome, node
    from broker.app import create_app
    from broker.settings import Settings

    def outcome(spec) -> Outcome:
        return Outcome(run_s=float(spec.command[1]))

    ex = FakeExecutor([node(f"kq-{i:02d}", gpus=GPUS_PER_NODE, cpus=4 * GPUS_PER_NODE, memory_gb=64 * GPUS_PER_NODE,
                            gpu_model=GPU_MODEL) for i in range(NODES)], outcome_for=outcome)
    settings = Settings(database_url=url, data_dir=Path(data_dir))
    app = create_app(settings, executor=ex)
    loop = app.state.services.loop
    if priority_preemption:
        loop.policy = dataclasses.replace(loop.policy, priority_preemption=True)
    profiler = cProfile.Profile() if profile else None
    phases = timed_loop(loop, profiler)
    # A tick longer than the interval makes APScheduler log every skipped interval run; the
    # loop still runs back to back (wake-ups), so those lines say nothing here.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)

    def dump(*_):
        Path(data_dir, "server.json").write_text(json.dumps({"launches": ex.launches, "loop": phases}))
        if profiler is not None:
            profiler.dump_stats(profile)
        if _:
            sys.exit(0)

    # uvicorn shuts down gracefully on SIGTERM, then restores the previous handler and raises
    # the signal again: this handler runs after the shutdown (lifespan ended, loop stopped).
    signal.signal(signal.SIGTERM, dump)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)
    dump()


def timed_loop(loop, profiler: "cProfile.Profile | None" = None) -> dict:
    """Wrap the loop's steps (instance attributes shadow the methods; behaviour unchanged) to
    add up calls, wall and thread-CPU seconds per step, and the core's `run_cycle` ms; with a
    profiler, every tick runs under it (the loop's thread only: the API is not in it)."""
    stats = {n: {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0}
             for n in ("tick", "sync_nodes", "observe", "schedule", "launch_admitted")}
    stats["run_cycle"] = {"calls": 0, "wall_s": 0.0}

    def wrap(name):
        orig = getattr(loop, name)

        def timed(*a, **k):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return orig(*a, **k)
            finally:
                st = stats[name]
                st["calls"] += 1
                st["wall_s"] += time.perf_counter() - t
                st["cpu_s"] += time.thread_time() - c
        setattr(loop, name, timed)

    for n in ("sync_nodes", "observe", "schedule", "launch_admitted"):
        wrap(n)
    tick = loop.tick

    def timed_tick():
        t, c = time.perf_counter(), time.thread_time()
        if profiler is not None:
            profiler.enable()
        try:
            rep = tick()
        finally:
            if profiler is not None:
                profiler.disable()
        st = stats["tick"]
        st["calls"] += 1
        st["wall_s"] += time.perf_counter() - t
        st["cpu_s"] += time.thread_time() - c
        if rep.cycle_ms:
            stats["run_cycle"]["calls"] += 1
            stats["run_cycle"]["wall_s"] += rep.cycle_ms / 1000.0
        return rep
    loop.tick = timed_tick
    return stats


def start(url: str, data_dir: str, priority_preemption: bool, env: dict[str, str],
          profile: str | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "broker.bench.kueue", "serve", url, str(port), data_dir,
                             "1" if priority_preemption else "0", *([os.path.abspath(profile)] if profile else [])],
                            start_new_session=True,
                            env={**os.environ, **env})
    return wait_healthy(proc, port, "the broker server"), port


# ----------------------------------------------------------------------------- load


@dataclass
class Sent:
    due: float  # epoch seconds the schedule asked for
    sent: float  # epoch seconds just before the request was written
    cls: str
    status: int
    job_id: str | None


async def submit_all(port: int, token: str, plan: list[Submit], connections: int) -> tuple[float, list[Sent]]:
    """Open loop: each submit is queued at its due time and sent by the next free keep-alive
    connection; a late send is recorded (due vs sent), never skipped."""
    queue: asyncio.Queue = asyncio.Queue()
    out: list[Sent] = []
    head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n").encode()

    async def conn():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, s = item
                body = job_body(s)
                t = time.time()
                writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                status, data = await read_response(reader)
                out.append(Sent(due, t, s.cls.name, status, orjson.loads(data)["id"] if status == 201 else None))
        finally:
            writer.close()

    workers = [asyncio.create_task(conn()) for _ in range(connections)]
    t0 = time.time()
    for s in plan:
        delay = t0 + s.at_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((t0 + s.at_s, s))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return t0, out


def wait_done(url: str, n: int, timeout_s: float, poll_s: float = 1.0) -> bool:
    """Poll (one COUNT a second) until `n` jobs are terminal; False on timeout."""
    from sqlalchemy import func, select
    from sqlmodel import Session

    from broker.db import make_engine
    from broker.models import Job
    from broker.settings import Settings

    eng = make_engine(Settings(database_url=url))
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            with Session(eng) as s:
                done = s.execute(select(func.count()).select_from(Job).where(Job.status.in_(TERMINAL))).scalar_one()
            if done >= n:
                return True
            time.sleep(poll_s)
        return False
    finally:
        eng.dispose()


# ----------------------------------------------------------------------------- figures


def read_back(url: str) -> dict:
    """Jobs, attempts, ledger rows and transition counts as plain rows for `summarize`."""
    from sqlalchemy import func, select
    from sqlmodel import Session

    from broker.db import make_engine
    from broker.models import Attempt, Job, JobEvent, Ledger
    from broker.settings import Settings

    eng = make_engine(Settings(database_url=url))
    try:
        with Session(eng) as s:
            jobs = [dict(id=i, name=n, status=st, gpus=g, command=c, finished_at=f) for i, n, st, g, c, f in s.execute(
                select(Job.id, Job.name, Job.status, Job.gpus, Job.command, Job.finished_at))]
            attempts = [dict(job_id=j, number=n, admitted_at=a, started_at=st, ended_at=e, status=x)
                        for j, n, a, st, e, x in s.execute(select(
                            Attempt.job_id, Attempt.number, Attempt.admitted_at, Attempt.started_at,
                            Attempt.ended_at, Attempt.status))]
            ledger = [dict(job_id=j, attempt=a, gpus=g, started_at=st, ended_at=e, allocated_gpu_s=x)
                      for j, a, g, st, e, x in s.execute(select(Ledger.job_id, Ledger.attempt, Ledger.gpus,
                                                                Ledger.started_at, Ledger.ended_at,
                                                                Ledger.allocated_gpu_s))]
            admits = {(j, a): n for j, a, n in s.execute(
                select(JobEvent.job_id, JobEvent.attempt, func.count()).where(
                    JobEvent.kind == "transition", JobEvent.to_status == "ADMITTED").group_by(
                    JobEvent.job_id, JobEvent.attempt))}
            preempts = s.execute(select(func.count()).select_from(JobEvent).where(
                JobEvent.kind == "transition", JobEvent.to_status == "PREEMPTED")).scalar_one()
    finally:
        eng.dispose()
    return {"jobs": jobs, "attempts": attempts, "ledger": ledger, "admits": admits, "preemptions": preempts}


def summarize(sent: list[Sent], rows: dict, launches: list, *, gpus_total: int, t0: float) -> dict:
    """The benchmark's figures and its self-checks from what the client sent and the DB holds.

    Invariants checked (each failure is listed under `problems`, and `ok` is False): every
    acknowledged job is a row and ended SUCCEEDED; each (job, attempt) was admitted by exactly
    one transition and launched by at most one distinct launch; a job's ledger intervals never
    overlap (never two attempts holding GPUs at once); at no instant do the ledger rows hold
    more than `gpus_total` GPUs; every ledger row is closed and its GPU-seconds equal
    gpus x (ended - started)."""
    problems: list[str] = []
    by_id = {j["id"]: j for j in rows["jobs"]}
    acked = [s for s in sent if s.job_id]
    refused = [s for s in sent if not s.job_id]
    if refused:
        problems.append(f"{len(refused)} submits refused (e.g. HTTP {refused[0].status})")
    missing = [s.job_id for s in acked if s.job_id not in by_id]
    if missing:
        problems.append(f"{len(missing)} acknowledged jobs missing from the DB")
    not_ok = [j for j in rows["jobs"] if j["status"] != "SUCCEEDED"]
    if not_ok:
        problems.append(f"{len(not_ok)} jobs did not succeed (e.g. {not_ok[0]['status']})")
    twice = {k: n for k, n in rows["admits"].items() if n != 1}
    if twice:
        problems.append(f"{len(twice)} attempts admitted more than once")
    launched: dict = {}
    for j, a in launches:
        launched[(j, a)] = launched.get((j, a), 0) + 1
    extra = sum(1 for n in launched.values() if n > 1)  # the executor's launch is idempotent; count repeats
    if set(launched) - set(rows["admits"]):
        problems.append("an attempt was launched without an admission")

    ledger = rows["ledger"]
    open_rows = [r for r in ledger if r["ended_at"] is None]
    if open_rows:
        problems.append(f"{len(open_rows)} ledger rows still open")
    closed = [r for r in ledger if r["ended_at"] is not None]
    bad = [r for r in closed if abs(r["allocated_gpu_s"] - r["gpus"] * (r["ended_at"] - r["started_at"])) > 1e-6]
    if bad:
        problems.append(f"{len(bad)} ledger rows with GPU-seconds != gpus x duration")
    per_job: dict = {}
    for r in closed:
        per_job.setdefault(r["job_id"], []).append((r["started_at"], r["ended_at"]))
    overlap = sum(1 for iv in per_job.values() for a, b in zip(sorted(iv), sorted(iv)[1:]) if b[0] < a[1])
    if overlap:
        problems.append(f"{overlap} jobs held GPUs in two attempts at once")
    peak = peak_held(closed)
    if peak > gpus_total:
        problems.append(f"{peak} GPUs held at once, more than the {gpus_total} there are")

    end = max((j["finished_at"] for j in rows["jobs"] if j["finished_at"]), default=t0)
    wall = max(1e-9, end - t0)
    allocated = sum(r["allocated_gpu_s"] for r in closed)
    work = sum(j["gpus"] * float(j["command"][1]) for j in rows["jobs"] if j["status"] == "SUCCEEDED")

    first = {}
    for a in rows["attempts"]:
        if a["number"] == 1:
            first[a["job_id"]] = a
    started = {}
    for a in rows["attempts"]:
        if a["started_at"] is not None and (a["job_id"] not in started or a["number"] < started[a["job_id"]][0]):
            started[a["job_id"]] = (a["number"], a["started_at"])
    latency = {}
    for c in CLASSES:
        mine = [s for s in acked if s.cls == c.name and s.job_id in first]
        adm = [(first[s.job_id]["admitted_at"] - s.sent) * 1000 for s in mine if first[s.job_id]["admitted_at"]]
        run = [(started[s.job_id][1] - s.sent) * 1000 for s in mine if s.job_id in started]
        latency[c.name] = {"n": len(mine), "admitted_ms": _dist(adm), "running_ms": _dist(run)}
    lag = [(s.sent - s.due) * 1000 for s in sent]
    return {
        "ok": not problems, "problems": problems,
        "jobs": len(sent), "succeeded": len(rows["jobs"]) - len(not_ok),
        "wall_s": round(wall, 2), "usage_pct": round(100 * allocated / (gpus_total * wall), 2),
        "work_usage_pct": round(100 * work / (gpus_total * wall), 2),
        "allocated_gpu_s": round(allocated, 1), "work_gpu_s": round(work, 1), "gpus": gpus_total,
        "peak_gpus_held": peak, "preemptions": rows["preemptions"], "attempts": len(rows["attempts"]),
        "admitted_twice": len(twice), "repeated_launch_calls": extra,
        "latency": latency, "submit_lag_ms": _dist(lag),
        "submit_span_s": round(max((s.sent for s in sent), default=t0) - t0, 2),
    }


def peak_held(ledger: list[dict]) -> int:
    """Most GPUs the ledger rows hold at one instant (a release at t comes before a grab at t)."""
    ev = sorted([(r["started_at"], 1, r["gpus"]) for r in ledger] + [(r["ended_at"], 0, -r["gpus"]) for r in ledger])
    held = peak = 0
    for _, _, d in ev:
        held += d
        peak = max(peak, held)
    return peak


def _dist(xs: list[float]) -> dict:
    if not xs:
        return {}
    return {"mean": round(sum(xs) / len(xs), 1), "p50": round(percentile(xs, .5), 1),
            "p95": round(percentile(xs, .95), 1), "p99": round(percentile(xs, .99), 1), "max": round(max(xs), 1)}


# ----------------------------------------------------------------------------- run


def bench(*, scale: float = 1.0, database: str | None = None, priority_preemption: bool = True,
          connections: int = 8, timeout_s: float = 900.0, profile: str | None = None) -> dict:
    """One run of the scenario on a fresh database; see the module docstring for the figures."""
    from broker.settings import Settings

    # SIGTERM (a timeout, a stop from a shell) ends the run through the finally blocks below, so
    # the server subprocess is stopped and the private schema dropped.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    url, cleanup = prepare(database)
    data = tempfile.mkdtemp(prefix="bench-kueue-")  # the server's data dir (checkpoints: none here)
    plan = schedule(scale)
    # One token drives all submits: the per-token limiter stays on the path with a limit no run
    # reaches (as in `broker bench submit`).
    env = {"BROKER_RATE_LIMIT_PER_S": "1e9", "BROKER_RATE_LIMIT_BURST": "1000000000"}
    load0 = os.getloadavg()
    try:
        token = make_token(url)
        proc, port = start(url, data, priority_preemption, env, profile)
        try:
            cpu0 = _cpu_s(proc.pid)
            t0, sent = run_async(lambda: submit_all(port, token, plan, connections))
            done = wait_done(url, sum(1 for s in sent if s.job_id), timeout_s)
            cpu1 = _cpu_s(proc.pid)
        finally:
            stop_server(proc)
        server = json.loads(Path(data, "server.json").read_text()) if Path(data, "server.json").exists() else {}
        launches = [tuple(x) for x in server.get("launches", [])]
        out = summarize(sent, read_back(url), launches, gpus_total=NODES * GPUS_PER_NODE, t0=t0)
        out["loop"] = {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in server.get("loop", {}).items()}
        if not server:
            out["ok"] = False
            out["problems"].append("the server did not write its record (launch calls, loop times)")
        if not done:
            out["ok"] = False
            out["problems"].append(f"not every job ended within {timeout_s:.0f} s")
        st = Settings()
        out.update({
            "scale": scale, "database": redact(url), "priority_preemption": priority_preemption,
            "cycle_interval_s": st.cycle_interval_s, "policy": st.scheduling_policy,
            "server_cpu_s": round(cpu1 - cpu0, 1) if cpu0 is not None and cpu1 is not None else None,
            "load_avg_before": [round(x, 2) for x in load0], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "goal": {"wall_s": GOAL_WALL_S, "usage_pct": GOAL_USAGE_PCT}, "kueue": KUEUE,
        })
        return out
    finally:
        cleanup()
        shutil.rmtree(data, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process (Linux /proc), None where unreadable."""
    return stat_cpu_s(f"/proc/{pid}/stat")


if __name__ == "__main__" and len(sys.argv) >= 6 and sys.argv[1] == "serve":
    serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1", sys.argv[6] if len(sys.argv) > 6 else None)
