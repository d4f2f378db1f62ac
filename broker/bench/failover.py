"""Brokers in subprocesses over one database and the shared fake executor: the failover
benchmark and the harness of the fault-injection tests.

    python -m broker.bench.failover [--url URL] [--seed N]   two brokers on PostgreSQL, kill -9
                                                             the leader, print the figures
    python -m broker.bench.failover serve <port>             one broker (the subprocess entry;
                                                             settings from BROKER_* variables)

Why subprocesses: a `kill -9`, a failpoint's `os._exit` and a lost database session are
process-level events; only a real process shows what survives them. Each broker runs the app
`create_app()` builds, with the periodic tasks, over `SharedFakeExecutor` (its state file is
`BROKER_FAKE_EXECUTOR_DB`), so a restarted or second broker sees the attempts the first one
launched, as it would see them in Ray.

The failover figure: from the `kill -9` of the leader to the first ADMITTED transition written
by the other broker (its JobEvent's time), with jobs submitted to both brokers throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from broker.bench.common import free_port, prepare_database, redact
from broker.bench.history import History, check_history

PROJECT = "ouh-liver"
EXECUTOR_DB_ENV = "BROKER_FAKE_EXECUTOR_DB"


NODES_ENV = "BROKER_FAKE_NODES"  # "id:pool:gpus,..." (default: two innovation nodes, one operation, 4 GPUs each)


def fake_nodes():
    from broker.adapters.fake import node

    spec = os.environ.get(NODES_ENV) or "inno-1:innovation:4,inno-2:innovation:4,op-1:operation:4"
    out = []
    for item in spec.split(","):
        nid, pool, gpus = item.split(":")
        out.append(node(nid, pool=pool, gpus=int(gpus)))
    return out


# ----------------------------------------------------------------------------- one broker


def serve(port: int) -> None:
    """The subprocess entry: the full broker (API + periodic tasks) over the shared executor."""
    import logging

    import uvicorn

    from broker.adapters.fake_shared import SharedFakeExecutor
    from broker.app import create_app
    from broker.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    settings = Settings()
    executor = SharedFakeExecutor(os.environ[EXECUTOR_DB_ENV], fake_nodes())
    app = create_app(settings, executor=executor)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Broker:
    """One broker subprocess (its own process group) and its log file."""

    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def readyz(self) -> dict:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2.0).json()
        except Exception:
            return {}

    def is_leader(self) -> bool:
        return self.readyz().get("checks", {}).get("leadership") == "leader"


@dataclass
class Env:
    """A prepared database (migrated, demo region), the executor's state file, the admin token."""

    url: str
    root: Path
    executor_db: Path
    token: str
    cleanup: Callable[[], None]
    brokers: list[Broker] = field(default_factory=list)

    def start(self, name: str, *, failpoint: str = "", url: str | None = None, wait: bool = True,
              extra: dict[str, str] | None = None) -> Broker:
        data = self.root / name
        data.mkdir(exist_ok=True)
        port = free_port()
        env = {**os.environ, "BROKER_DATABASE_URL": url or self.url, "BROKER_DATA_DIR": str(data),
               EXECUTOR_DB_ENV: str(self.executor_db), "BROKER_FAILPOINT": failpoint,
               "BROKER_CYCLE_INTERVAL_S": "0.5", "BROKER_RECONCILE_INTERVAL_S": "2", "BROKER_LEADER_POLL_S": "0.5",
               **(extra or {})}
        log = data / f"broker-{len(self.brokers)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "broker.bench.failover", "serve", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        b = Broker(name, proc, port, log)
        self.brokers.append(b)
        if wait:
            wait_ready(b)
        return b

    def close(self) -> None:
        for b in self.brokers:
            b.stop()
        self.cleanup()

    def engine(self):
        from broker.db import make_engine
        from broker.settings import Settings

        return make_engine(Settings(database_url=self.url, data_dir=self.root))


def prepare(url: str | None = None) -> Env:
    """A fresh database (a private schema on PostgreSQL) for brokers over the shared executor."""
    from broker.db import make_engine
    from broker.services.bootstrap import ensure_admin_token
    from broker.settings import Settings

    db_url, cleanup_db = prepare_database(url)
    root = Path(tempfile.mkdtemp(prefix="failover-"))
    st = Settings(database_url=db_url, data_dir=root / "admin")
    eng = make_engine(st)
    try:
        token = ensure_admin_token(st, eng).read_text().strip()
    finally:
        eng.dispose()

    def cleanup() -> None:
        cleanup_db()
        import shutil

        shutil.rmtree(root, ignore_errors=True)

    return Env(db_url, root, root / "executor.db", token, cleanup)


def wait_ready(b: Broker, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not b.alive():
            raise RuntimeError(f"broker {b.name} exited with {b.proc.returncode}; see {b.log}:\n{_tail(b.log)}")
        if b.readyz().get("status") == "ok":
            return
        time.sleep(0.1)
    raise RuntimeError(f"broker {b.name} not ready within {timeout_s:.0f} s; see {b.log}:\n{_tail(b.log)}")


def wait_exit(b: Broker, timeout_s: float) -> int | None:
    try:
        return b.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- clients


def job_body(key: str, *, run_s: float = 0.5, project: str = PROJECT, klass: str = "innovation", gpus: int = 1,
             priority: int = 0) -> dict:
    return {"name": key, "project": project, "class": klass, "image": "localhost/busybox:test",
            "command": ["sleep", f"{run_s:g}"], "resources": {"gpus": gpus, "cpus": 1, "memory_gb": 1},
            "workers": 1, "max_runtime_s": 600, "priority": priority, "runtime": "container", "max_retries": 3}


class Submitter:
    """Submits with Idempotency-Key = the job's name; remembers what was acknowledged (201)."""

    def __init__(self, token: str) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        self.acked: dict[str, str] = {}
        self.sent: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, broker: Broker, key: str, body: dict | None = None) -> bool:
        """One try; True when acknowledged."""
        with self._lock:
            self.sent.add(key)
        try:
            r = httpx.post(f"{broker.url}/api/v1/jobs", json=body or job_body(key),
                           headers={**self.headers, "Idempotency-Key": key}, timeout=10.0)
        except httpx.HTTPError:
            return False
        if r.status_code in (200, 201):
            with self._lock:
                self.acked[key] = r.json()["id"]
            return True
        return False

    def submit_until_acked(self, brokers: list[Broker], key: str, body: dict | None = None,
                           timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        i = 0
        while time.monotonic() < deadline:
            b = brokers[i % len(brokers)]
            i += 1
            if b.alive() and self.submit(b, key, body):
                return
            time.sleep(0.1)
        raise RuntimeError(f"submit {key} not acknowledged within {timeout_s:.0f} s")

    def spent(self, broker: Broker, projects: list[str]) -> dict[str, float]:
        out = {}
        for p in projects:
            r = httpx.get(f"{broker.url}/api/v1/projects/{p}/usage", headers=self.headers, timeout=10.0)
            r.raise_for_status()
            out[p] = float(r.json()["budget"]["spent"])
        return out


def wait_settled(engine, timeout_s: float = 90.0) -> int:
    """Wait until no job is PENDING or holding resources; return how many still are."""
    from sqlalchemy import func, select
    from sqlmodel import Session

    from broker.models import TERMINAL, Job

    done = [s.value for s in TERMINAL]
    deadline = time.monotonic() + timeout_s
    left = -1
    while time.monotonic() < deadline:
        with Session(engine) as s:
            left = s.execute(select(func.count()).select_from(Job).where(Job.status.not_in(done))).scalar_one()
        if left == 0:
            return 0
        time.sleep(0.2)
    return left


def first_admission_after(engine, t: float) -> float | None:
    from sqlalchemy import func, select
    from sqlmodel import Session

    from broker.models import JobEvent

    with Session(engine) as s:
        return s.execute(select(func.min(JobEvent.ts)).where(
            JobEvent.kind == "transition", JobEvent.to_status == "ADMITTED", JobEvent.ts > t)).scalar_one()


def check(env: Env, sub: Submitter, via: Broker, engine, projects: list[str] = (PROJECT,)) -> History:
    return check_history(engine, str(env.executor_db), acked=sub.acked, submitted=sub.sent,
                         reported_spent=sub.spent(via, list(projects)))


# ----------------------------------------------------------------------------- the failover run


@dataclass
class FailoverResult:
    failover_s: float  # kill -9 of the leader -> first admission by the other broker
    takeover_s: float  # kill -9 -> the other broker reports itself leader on /readyz
    jobs: int
    acked: int
    relaunches: int
    history: History
    seed: int


def run_failover(env: Env, *, seed: int, warmup_s: float = 3.0, after_s: float = 4.0,
                 rate_per_s: float = 20.0) -> FailoverResult:
    """Two brokers, jobs submitted to both at `rate_per_s`, kill -9 of the leader after
    `warmup_s` (plus a random jitter from `seed`, so the kill lands anywhere in a cycle)."""
    rng = random.Random(seed)
    a = env.start("a")
    b = env.start("b")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and sum(x.is_leader() for x in (a, b)) != 1:
        time.sleep(0.1)
    leader, other = (a, b) if a.is_leader() else (b, a)
    if not leader.is_leader() or other.is_leader():
        raise RuntimeError("no single leader among the two brokers")
    sub = Submitter(env.token)
    stop = threading.Event()
    counter = iter(range(10 ** 9))

    def feed() -> None:
        while not stop.is_set():
            n = next(counter)
            sub.submit_until_acked([(a, b)[n % 2], (b, a)[n % 2]], f"job-{seed}-{n:05d}",
                                   job_body(f"job-{seed}-{n:05d}", run_s=rng.choice((0.3, 0.5, 1.0))))
            time.sleep(1.0 / rate_per_s)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(warmup_s + rng.uniform(0.0, 1.0))
    t_kill = time.time()
    leader.kill9()
    while not other.is_leader() and time.time() - t_kill < 30:
        time.sleep(0.02)
    t_lead = time.time()
    time.sleep(after_s)
    stop.set()
    feeder.join(30)
    eng = env.engine()
    try:
        t_admit = None
        deadline = time.monotonic() + 30
        while t_admit is None and time.monotonic() < deadline:
            t_admit = first_admission_after(eng, t_kill)
            time.sleep(0.1)
        wait_settled(eng)
        hist = check(env, sub, other, eng)
    finally:
        eng.dispose()
    return FailoverResult(failover_s=(t_admit - t_kill) if t_admit else float("inf"), takeover_s=t_lead - t_kill,
                          jobs=hist.jobs, acked=len(sub.acked), relaunches=hist.relaunches, history=hist, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m broker.bench.failover", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="PostgreSQL URL (default: 127.0.0.1:5432/test, a private schema)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args(argv)
    results = []
    for i in range(args.runs):
        seed = args.seed if args.seed is not None and i == 0 else random.randrange(1 << 30)
        env = prepare(args.url)
        if not env.url.startswith("postgresql"):
            env.close()
            print("two brokers need PostgreSQL (no server answered)", file=sys.stderr)
            return 2
        try:
            r = run_failover(env, seed=seed)
        finally:
            env.close()
        results.append(r)
        print(json.dumps({"seed": r.seed, "database": redact(env.url), "failover_s": round(r.failover_s, 3),
                          "takeover_s": round(r.takeover_s, 3), "jobs": r.jobs, "acked": r.acked,
                          "relaunches": r.relaunches, "violations": r.history.violations}))
    bad = [r for r in results if not r.history.ok or r.failover_s > 10.0]
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        sys.exit(main())
