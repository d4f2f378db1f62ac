"""The periodic tasks, all registered in one place (`broker.tasks.build_tasks`), and the agent
tokens `broker up` issues."""

import threading
import time

from fastapi.testclient import TestClient

from broker.adapters.fake import FakeExecutor
from broker.services.bootstrap import issue_agent_token
from broker.services.wakeup import Wakeup
from broker.tasks import Tasks, build_tasks

EVERY_TASK = ["accounting.ledger", "audit.seal_job_submits", "checkpoints.cleanup", "dashboards.pool_rollups", "idle.check", "logs.retention", "notify", "reconcile", "schedule", "services.controller", "telemetry.heartbeats",
              "telemetry.retention", "telemetry.rollup"]


def test_every_periodic_task_is_registered_once_with_one_instance_at_most(app):
    tasks = build_tasks(app.state.services)
    tasks._aps.start(paused=True)  # the job defaults apply once jobs are really added; nothing runs
    try:
        jobs = tasks._aps.get_jobs()
        # services.load runs on every broker where several can share the database (PostgreSQL)
        several = app.state.services.engine.dialect.name != "sqlite"
        assert sorted(j.id for j in jobs) == sorted(EVERY_TASK + (["services.load"] if several else []))
        assert all(j.max_instances == 1 for j in jobs)
    finally:
        tasks._aps.shutdown(wait=False)


def test_tasks_pass_now_from_their_clock(app, monkeypatch):
    calls = []
    monkeypatch.setattr(app.state.services.telemetry, "check_heartbeats", lambda now: calls.append(now))
    tasks = build_tasks(app.state.services, clock=lambda: 1234.0)
    (hb,) = [j for j in tasks._aps.get_jobs() if j.id == "telemetry.heartbeats"]
    hb.func()
    assert calls == [], "a broker that has not joined the election (so leads nothing) runs no task"
    leader = app.state.services.leader
    leader.start()
    try:
        hb.func()
    finally:
        leader.stop()
    assert calls == [1234.0]


def test_a_followers_proxy_load_is_published_without_leading(app):
    """services.load runs on every broker (the leader's autoscaler reads it), the others on the leader only."""
    if app.state.services.service_load is None:
        return  # SQLite: one broker, nothing to publish
    ran = []
    app.state.services.service_load.tick = lambda: ran.append(1)
    try:
        tasks = build_tasks(app.state.services)
        (job,) = [j for j in tasks._aps.get_jobs() if j.id == "services.load"]
        job.func()  # this broker has not joined the election: it leads nothing
    finally:
        del app.state.services.service_load.tick
    assert ran == [1]


def test_issued_agent_token_pushes_for_its_node_only(app, engine):
    from agents.agent import encode
    from tests.broker.services.telemetry.builders import gpu, new_node, report

    node = new_node(engine)
    tok = issue_agent_token(engine, node)
    assert tok.startswith("cba_")
    with TestClient(app, headers={"Authorization": f"Bearer {tok}"}) as c:
        assert c.post("/api/v1/telemetry", content=encode(report(node, 1, [gpu(0, time.time())]))).status_code == 200
        assert c.post("/api/v1/telemetry", content=encode(report("other", 1, [gpu(0, time.time())]))).status_code == 403


class _SlowLoop:
    """A scheduling loop stand-in whose tick takes a while and counts its calls."""

    engine = None

    def __init__(self, tick_s: float) -> None:
        self.tick_s, self.ticks, self.running = tick_s, 0, threading.Event()

    def tick(self) -> None:
        self.ticks += 1
        self.running.set()
        time.sleep(self.tick_s)


def test_a_burst_of_attempt_ends_costs_one_more_tick_not_one_each():
    loop, wakeup = _SlowLoop(0.3), Wakeup()
    tasks = Tasks(loop, FakeExecutor(), cycle_interval_s=3600, reconcile_interval_s=3600, wakeup=wakeup)
    tasks.start()  # one tick at once (the start's wake-up)
    try:
        assert loop.running.wait(5)
        for i in range(2000):  # while that tick runs: 2,000 ends reported by the executor
            wakeup.ended(f"j{i}", 1)
        deadline = time.monotonic() + 5
        while loop.ticks < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # room for any further tick the burst might (wrongly) cause
        # the running tick, then one for the whole burst (a third only if APScheduler's own
        # thread got to the wake-up's run time after both had finished: it then runs once more)
        assert 2 <= loop.ticks <= 3
    finally:
        tasks.stop()
    ticks = loop.ticks
    wakeup.ended("after", 1)  # stopped: disconnected, nothing runs
    time.sleep(0.1)
    assert loop.ticks == ticks


class _LateWake(threading.Event):
    """The tick's wake-up flag, with a wake-up slipped in just after the scheduling job's last
    look at it (`is_set` from the job's thread answers as before the wake-up): the narrow
    window in which a tick is over but APScheduler still counts the job as running."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: Tasks | None = None
        self.armed = False

    def is_set(self) -> bool:
        was = super().is_set()
        if self.armed and threading.current_thread().name != "late-wake" and not was:
            self.armed = False
            t = threading.Thread(target=self.tasks.wake, name="late-wake")
            t.start()
            t.join()
        return was


def test_a_wake_up_as_a_tick_ends_is_not_lost():
    loop = _SlowLoop(0.05)
    tasks = Tasks(loop, FakeExecutor(), cycle_interval_s=3600, reconcile_interval_s=3600, wakeup=Wakeup())
    tasks._dirty = flag = _LateWake()
    flag.tasks = tasks
    tasks.start()
    try:
        assert loop.running.wait(5)
        flag.armed = True  # the first tick's last look at the flag lets a wake-up in
        deadline = time.monotonic() + 3
        while loop.ticks < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loop.ticks == 2, "the wake-up that came as the tick ended ran a tick (not an hour later)"
    finally:
        tasks.stop()
