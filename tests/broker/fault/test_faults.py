"""Fault injection: brokers killed at named failpoints, a leader killed under load, the database
cut mid-cycle; every case ends with the history checker (`broker.bench.history`).

Each case runs real broker processes (`broker.bench.failover`: uvicorn on `create_app()` with
the periodic tasks, over the shared fake executor) against a private PostgreSQL schema. A
failpoint (`BROKER_FAILPOINT`, `broker.failpoints`) makes the broker `os._exit(137)` at one
named place; the test checks it really died there (exit 137), restarts it, retries every
unacknowledged submit with the same Idempotency-Key, waits until every job has ended and then
checks the whole history. Random choices take their seed from FAULT_SEED or a fresh one, and
print it (`-s`, or in the failure report) so that a failure replays.
"""

from __future__ import annotations

import json
import os
import random
import time

import httpx
import pytest

from broker.bench import failover as fo
from broker.failpoints import EXIT_CODE
from tests.broker.conftest import pg_reason
from tests.broker.fault.proxy import CuttableProxy

pytestmark = [pytest.mark.fault, pytest.mark.postgres, pytest.mark.timeout(240)]


@pytest.fixture
def env():
    reason = pg_reason()
    if reason:
        pytest.skip(reason)
    e = fo.prepare(None)
    assert e.url.startswith("postgresql")
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def seed() -> int:
    s = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
    print(f"FAULT_SEED={s}")
    return s


def _died_at_failpoint(b: fo.Broker, timeout_s: float = 60.0) -> None:
    code = fo.wait_exit(b, timeout_s)
    assert code == EXIT_CODE, f"the broker did not die at its failpoint (exit {code}):\n{fo._tail(b.log)}"


def _settle_and_check(env: fo.Env, sub: fo.Submitter, via: fo.Broker, projects=(fo.PROJECT,)):
    eng = env.engine()
    try:
        left = fo.wait_settled(eng)
        assert left == 0, f"{left} jobs never ended:\n{fo._tail(via.log)}"
        hist = fo.check(env, sub, via, eng, list(projects))
    finally:
        eng.dispose()
    assert hist.ok, "\n".join(hist.violations)
    assert set(sub.acked) == sub.sent, "every key was retried until acknowledged"
    return hist


# ------------------------------------------------------------------------------- failpoints

CYCLE_FAILPOINTS = {
    # name: (what the crash leaves behind, relaunches expected after the restart)
    "before_admit_commit": ("admissions decided but never committed: the restart decides again", False),
    "after_admit_commit": ("ADMITTED with open ledger rows, nothing launched: the restart launches", False),
    "after_launch": ("launched but still ADMITTED: the restart launches again, which re-adopts", True),
}


@pytest.mark.parametrize("failpoint", list(CYCLE_FAILPOINTS), ids=list(CYCLE_FAILPOINTS))
def test_kill_mid_cycle_then_restart_keeps_the_history_clean(env, failpoint):
    b = env.start("a", failpoint=failpoint)
    sub = fo.Submitter(env.token)
    keys = [f"{failpoint}-{i}" for i in range(6)]
    for k in keys:
        sub.submit(b, k, fo.job_body(k, run_s=0.3))
    _died_at_failpoint(b)
    b2 = env.start("a")
    for k in keys:
        if k not in sub.acked:
            sub.submit_until_acked([b2], k, fo.job_body(k, run_s=0.3))
    hist = _settle_and_check(env, sub, b2)
    assert hist.jobs == len(keys)
    if CYCLE_FAILPOINTS[failpoint][1]:
        assert hist.relaunches >= 1, "the crash landed between launch and STARTING: the restart launched again"


def test_kill_during_submits_loses_no_acknowledged_job_and_duplicates_none(env):
    b = env.start("a", failpoint="submit_after_commit@5")
    sub = fo.Submitter(env.token)
    keys = [f"submit-{i}" for i in range(12)]
    for k in keys:
        if b.alive():
            sub.submit(b, k, fo.job_body(k, run_s=0.2))
    _died_at_failpoint(b)
    assert 0 < len(sub.acked) < len(keys), "the crash landed between submits"
    b2 = env.start("a")
    for k in keys:  # the client retries what it never saw acknowledged, with the same key
        if k not in sub.acked:
            sub.submit_until_acked([b2], k, fo.job_body(k, run_s=0.2))
    hist = _settle_and_check(env, sub, b2)
    assert hist.jobs == len(keys), "the committed-but-unanswered submit was not made twice by its retry"


# The default policy lets a project reclaim its nominal share from innovation borrowers only
# after an hour's wait and from jobs that ran 15 min: the test reclaims at once.
RECLAIM_AT_ONCE = {"reclaim_after_s": 0, "min_runtime_s": 0, "lost_work_bounded_by_wait": False}


def test_kill_between_preemption_and_stop_stops_the_victims_and_requeues_them(env):
    """One project borrows the whole innovation pool with long jobs; another reclaims its
    nominal share. The broker dies after the victims are PREEMPTED in the database, before any
    stop is sent: the restarted broker stops them (the reclaiming job can only run then),
    closes their ledger rows and requeues them; the borrowers are then cancelled."""
    eager = {"BROKER_SCHEDULING_POLICY_OVERRIDES": json.dumps(RECLAIM_AT_ONCE)}
    b = env.start("a", failpoint="after_preempt_commit", extra=eager)
    sub = fo.Submitter(env.token)
    borrowers = [f"borrow-{i}" for i in range(8)]
    for k in borrowers:
        assert sub.submit(b, k, fo.job_body(k, run_s=600.0))
    eng = env.engine()
    try:
        assert _wait(lambda: _count(eng, status="RUNNING") == len(borrowers), 60), "the borrowers fill the pool"
        claim = "reclaim"
        body = fo.job_body(claim, run_s=0.5, project="slb-cardio", gpus=2)
        sub.submit(b, claim, body)
        _died_at_failpoint(b, 60)
        b2 = env.start("a", extra=eager)
        if claim not in sub.acked:
            sub.submit_until_acked([b2], claim, body)
        assert _wait(lambda: _count(eng, name=claim, status="SUCCEEDED") == 1, 60), fo._tail(b2.log)
        for k in borrowers:
            r = httpx.post(f"{b2.url}/api/v1/jobs/{sub.acked[k]}/cancel", headers=sub.headers, timeout=10)
            assert r.status_code == 200, r.text
    finally:
        eng.dispose()
    hist = _settle_and_check(env, sub, b2, projects=(fo.PROJECT, "slb-cardio"))
    assert hist.attempts > len(borrowers) + 1, "the victims ran a second attempt after their preemption"


def _wait(pred, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _count(eng, *, status: str, name: str | None = None) -> int:
    from sqlalchemy import func, select
    from sqlmodel import Session

    from broker.models import Job

    q = select(func.count()).select_from(Job).where(Job.status == status)
    if name is not None:
        q = q.where(Job.name == name)
    with Session(eng) as s:
        return s.execute(q).scalar_one()


# ------------------------------------------------------------------------------- two brokers


def test_kill_9_of_the_leader_fails_over_within_10_s_without_double_admission(env, seed):
    r = fo.run_failover(env, seed=seed, warmup_s=2.0, after_s=3.0)
    print(f"failover {r.failover_s:.3f} s, takeover {r.takeover_s:.3f} s, {r.jobs} jobs, "
          f"{r.relaunches} relaunches, seed {seed}")
    assert r.history.ok, "\n".join(r.history.violations)
    assert r.acked == r.jobs and r.jobs >= 10, "jobs flowed through both brokers"
    assert r.failover_s <= 10.0


# ------------------------------------------------------------------------------- database outage


def test_database_cut_mid_cycle_recovers_and_keeps_the_history_clean(env, seed):
    """The broker reaches PostgreSQL through a proxy; the test cuts every connection for a few
    seconds while jobs flow, then restores it. The broker loses and regains the leadership,
    and nothing is admitted twice or lost."""
    rng = random.Random(seed)
    port = int(env.url.split("@127.0.0.1:")[1].split("/")[0])
    proxy = CuttableProxy(port)
    try:
        b = env.start("a", url=env.url.replace(f"@127.0.0.1:{port}/", f"@127.0.0.1:{proxy.port}/"))
        sub = fo.Submitter(env.token)
        keys = [f"outage-{i}" for i in range(30)]
        for i, k in enumerate(keys):
            if i == 10:
                time.sleep(rng.uniform(0.0, 0.5))  # anywhere in a cycle
                proxy.cut()
                assert not sub.submit(b, k, fo.job_body(k, run_s=0.3)), "no submit is acknowledged while cut"
                time.sleep(3.0)
                assert b.alive()
                assert b.readyz().get("status") == "unavailable"
                proxy.restore()
            sub.submit_until_acked([b], k, fo.job_body(k, run_s=rng.choice((0.2, 0.5))))
        deadline = time.monotonic() + 20
        while not b.is_leader() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b.is_leader(), "the broker is leader again after the outage"
        hist = _settle_and_check(env, sub, b)
        assert hist.jobs == len(keys) and proxy.cuts == 1
    finally:
        proxy.close()
