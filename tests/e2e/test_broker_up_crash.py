"""`broker up` survives a crash of the broker: the real command, killed with SIGKILL, restarted.

- The broker's own process group dies (`kill -9`), the embedded Ray head and the node agents
  (their own process groups) keep running: the next `broker up` on the same data dir reconnects
  to that head, keeps the agents and re-adopts the running job (same attempt, same start), and
  no second head is started. A second `broker up` on a data dir in use refuses to start.
- The broker and its head both die: the next `broker up` ends every orphan of the previous run
  (its agents; workers that outlived their runner, tested on their own in
  tests/broker/adapters/ray/test_orphans.py, since Ray's raylet usually takes a process job's
  worker with it) before it starts a new head; the job is LOST and requeued, and the lost
  attempt is charged up to when it was last seen alive, not for the downtime.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

from broker.client import BrokerClient  # noqa: E402
from tests.e2e.test_broker_up import TERMINAL, _free_port  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]


class Up:
    """One `broker up` process on a data dir (its own session: killpg ends just the broker)."""

    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port, self.url = data, port, f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, *, wait: bool = True) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.setdefault("CONTAINERS_CONF", str(Path(__file__).resolve().parents[1] / "containers.conf"))
        broker_bin = Path(sys.executable).with_name("broker")
        self.log = self.data / f"up-{time.time():.0f}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(broker_bin), "up", "--port", str(self.port), "--data-dir", str(self.data), "--gpus", "2",
                 "--fake-telemetry", "2"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self) -> None:
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"broker up exited with {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"broker up not ready in 120 s: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self) -> BrokerClient:
        return BrokerClient(self.url, (self.data / "admin-token").read_text().strip())

    def crash(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def state(self) -> dict:
        return json.loads((self.data / "embedded.json").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=120)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _submit(c: BrokerClient, command: str, **extra) -> dict:
    return c.submit(name="crash", project="ouh-liver", workload_class="innovation", image="",
                    command=["sh", "-c", command], resources={"gpus": 1, "cpus": 0.5, "memory_gb": 0.1},
                    runtime="process", max_runtime_s=300, **extra)


@pytest.fixture
def up(tmp_path):
    """A `broker up` helper; whatever a test left running is ended by process group."""
    u = Up(tmp_path / "data", _free_port())
    u.data.mkdir()
    yield u
    u.stop()
    if (u.data / "embedded.json").exists():
        s = u.state()
        for p in ([s["head"]] if s.get("head") else []) + s.get("agents", []):
            _kill_group(p["pgid"])


def test_a_crashed_broker_reconnects_to_its_head_and_keeps_the_running_job(up):
    up.start()
    with up.client() as c:
        job = _submit(c, "echo begin; sleep 25; echo end", max_retries=0)
        running = c.wait(job["id"], until=("RUNNING",), timeout=60, poll_s=0.2)
    before = up.state()
    up.crash()
    assert _alive(before["head"]["pgid"]) and all(_alive(a["pgid"]) for a in before["agents"])

    up.start()
    assert "reconnected to the running Ray head" in up.output(), up.output()[-2000:]
    second = Up(up.data, _free_port())
    refused = second.start(wait=False)
    assert refused.wait(timeout=60) == 1 and "another broker" in second.output(), second.output()[-2000:]
    with up.client() as c:
        done = c.wait(job["id"], until=TERMINAL, timeout=90, poll_s=0.5)
        assert (done["status"], done["attempt"]) == ("SUCCEEDED", 1), done
        assert done["started_at"] == running["started_at"]
        assert c.logs(job["id"]).split() == ["begin", "end"]
    after = up.state()
    assert after["head"] == before["head"] and after["agents"] == before["agents"]  # no second head
    heads = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"
             and os.getpgid(p.pid) == before["head"]["pgid"]]
    assert len(heads) == 1
    up.stop()
    assert not _alive(before["head"]["pgid"]) and not any(_alive(a["pgid"]) for a in before["agents"])
    assert not (up.data / "embedded.json").exists()


def test_broker_and_head_lost_together_end_the_orphans_and_charge_until_last_seen(up):
    up.start()
    with up.client() as c:
        job = _submit(c, 'if [ "$BROKER_ATTEMPT" = 1 ]; then sleep 300; else echo retried; fi', max_retries=1)
        c.wait(job["id"], until=("RUNNING",), timeout=60, poll_s=0.2)
    (pidfile,) = list((up.data / "logs" / job["id"] / "1").glob("worker-*.pid"))
    worker = int(pidfile.read_text().split()[0])
    state = up.state()
    time.sleep(3)
    crashed_at = time.time()
    up.crash()
    _kill_group(state["head"]["pgid"])  # the machine's Ray head goes too; the worker and agents stay
    time.sleep(2)
    assert all(_alive(a["pgid"]) for a in state["agents"])  # the agents outlive the head

    up.start()
    assert "previous run's Ray head is gone" in up.output(), up.output()[-2000:]
    assert not _alive(worker) and not any(_alive(a["pgid"]) for a in state["agents"])
    assert not pidfile.exists()  # every record of the previous run was dealt with
    with up.client() as c:
        done = c.wait(job["id"], until=TERMINAL, timeout=120, poll_s=0.5)
        assert (done["status"], done["attempt"]) == ("SUCCEEDED", 2), done
        assert "retried" in c.logs(job["id"], attempt=2)
    with sqlite3.connect(up.data / "broker.db") as db:
        started, ended = db.execute("SELECT started_at, ended_at FROM ledger WHERE job_id=? AND attempt=1",
                                    (job["id"],)).fetchone()
    # charged up to the last sign of life (stored every 15 s at most), not the restart's downtime
    assert ended <= crashed_at + 1.0, (ended - crashed_at)
    assert ended - started <= crashed_at - started + 1.0
