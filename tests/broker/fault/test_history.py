"""The history checker finds each kind of violation it claims to find (so that a clean report
from the fault cases means something), and passes a clean in-process history."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update
from sqlmodel import Session

from broker.adapters.fake_shared import SharedFakeExecutor
from broker.app import create_app
from broker.bench.failover import fake_nodes, job_body
from broker.bench.history import check_history
from broker.db import make_engine, migrate
from broker.models import Job, JobEvent, Ledger
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.settings import Settings


@dataclass
class World:
    engine: object
    client: TestClient
    loop: object
    executor_db: str
    acked: dict


@pytest.fixture
def world(tmp_path: Path):
    st = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'broker.db'}")
    migrate(st)
    eng = make_engine(st)
    with Session(eng) as s:
        seed_demo(s)
        s.commit()
    token = ensure_admin_token(st, eng).read_text().strip()
    ex = SharedFakeExecutor(tmp_path / "executor.db", fake_nodes())
    app = create_app(st, executor=ex, start_background=False, engine=eng)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        acked = {}
        for i in range(3):
            key = f"job-{i}"
            r = c.post("/api/v1/jobs", json=job_body(key, run_s=0.0), headers={"Idempotency-Key": key})
            assert r.status_code == 201, r.text
            acked[key] = r.json()["id"]
        loop = app.state.services.loop
        for _ in range(100):  # until every job ended (its worker exits 50 ms after launch)
            loop.tick()
            if all(c.get(f"/api/v1/jobs/{j}").json()["status"] == "SUCCEEDED" for j in acked.values()):
                break
            time.sleep(0.02)
        yield World(eng, c, loop, str(tmp_path / "executor.db"), acked)
    eng.dispose()


def _spent(w: World) -> dict[str, float]:
    return {"ouh-liver": w.client.get("/api/v1/projects/ouh-liver/usage").json()["budget"]["spent"]}


def _check(w: World, **over):
    args = dict(acked=w.acked, submitted=set(w.acked), reported_spent=_spent(w))
    args.update(over)
    return check_history(w.engine, w.executor_db, **args)


def test_a_clean_history_passes(world):
    h = _check(world)
    assert h.ok, h.violations
    assert h.jobs == 3 and h.launches == 3 and h.relaunches == 0


def _lose_acked(w):
    return {"acked": {**w.acked, "ghost": "job-that-never-was"}}


def _admit_twice(w):
    jid = w.acked["job-0"]
    with Session(w.engine) as s:
        att = s.get(Job, jid).attempt
        s.add(JobEvent(job_id=jid, ts=1.0, kind="transition", from_status="PENDING", to_status="ADMITTED", attempt=att))
        s.commit()
    return {}


def _overlap(w):
    jid = w.acked["job-1"]
    with sqlite3.connect(w.executor_db) as c:
        c.execute("UPDATE attempts SET run_s = NULL, stopped_at = NULL, released_at = NULL WHERE job_id = ?", (jid,))
        c.execute("INSERT INTO attempts SELECT job_id, attempt + 1, launched_at + 0.01, run_s, exit_code, NULL, NULL, "
                  "workers, pid FROM attempts WHERE job_id = ?", (jid,))
    return {}


def _drop_ledger(w):
    with Session(w.engine) as s:
        s.execute(delete(Ledger).where(Ledger.job_id == w.acked["job-2"]))
        s.commit()
    return {}


def _wrong_spent(w):
    return {"reported_spent": {"ouh-liver": _spent(w)["ouh-liver"] + 0.5}}


def _bad_allocation(w):
    with Session(w.engine) as s:
        s.execute(update(Ledger).where(Ledger.job_id == w.acked["job-0"]).values(allocated_gpu_s=12345.0))
        s.commit()
    return {}


def _bad_accrual(w):
    # an open row (as a running attempt's) whose allocation is not what it accrued
    with Session(w.engine) as s:
        s.execute(update(Ledger).where(Ledger.job_id == w.acked["job-1"]).values(
            ended_at=None, accrued_to=Ledger.started_at + 3600.0, allocated_gpu_s=1.0))
        s.commit()
    return {}


VIOLATIONS = {
    "an acknowledged job is missing": (_lose_acked, "does not exist"),
    "an attempt admitted twice": (_admit_twice, "admitted 2 times"),
    "two live attempts of one job": (_overlap, "live at the same time"),
    "an ended attempt without a ledger row": (_drop_ledger, "has no ledger row"),
    "usage that is not the ledger's sum": (_wrong_spent, "the ledger sums to"),
    "a ledger row whose allocation is not gpus x duration": (_bad_allocation, "gpus x duration"),
    "an open ledger row whose allocation is not what it accrued": (_bad_accrual, "gpus x accrued time"),
}


@pytest.mark.parametrize("case", list(VIOLATIONS), ids=list(VIOLATIONS))
def test_the_checker_finds(world, case):
    assert _check(world).ok
    make, words = VIOLATIONS[case]
    h = _check(world, **make(world))
    assert not h.ok and any(words in v for v in h.violations), h.violations
