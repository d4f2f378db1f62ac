"""Pending caps: every project has one (the default, or its `max_pending`), counted in the
transaction that stores the job, so neither a burst of concurrent submits nor two brokers on
one PostgreSQL database can overshoot it."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session

from broker.app import create_app
from broker.auth.authn import Principal
from broker.db import make_engine
from broker.errors import RateLimited
from broker.models import Job, Project
from broker.schemas import JobCreate
from tests.broker.conftest import job_body

DEFAULT_CAP = 3
ADMIN = Principal(token_id="t-cap", kind="user", role="platform-admin", name="cap-test")


@pytest.fixture(scope="module")
def capped(settings, engine, fake_executor, admin_token):
    """An app whose default pending cap is 3, on the shared test database."""
    app = create_app(settings.model_copy(update={"default_max_pending": DEFAULT_CAP}), executor=fake_executor,
                     start_background=False, engine=engine)
    with TestClient(app, headers={"Authorization": f"Bearer {admin_token}"}) as c:
        yield app, c


def project(engine, app, *, max_pending=None, pending=0, running=0) -> str:
    pid = f"p-{uuid.uuid4().hex[:10]}"
    with Session(engine) as s:
        s.add(Project(id=pid, department_id="ouh", name=pid, max_pending=max_pending))
        s.flush()
        for i in range(pending + running):
            s.add(Job(id=f"{pid}-{i}", project_id=pid, status="PENDING" if i < pending else "RUNNING"))
        s.commit()
    app.state.services.jobs.catalog_changed()
    return pid


def pending(engine, pid: str) -> int:
    with Session(engine) as s:
        return s.execute(select(func.count()).select_from(Job).where(Job.project_id == pid,
                                                                     Job.status == "PENDING")).scalar_one()


CASES = [  # name, project max_pending, pending before, running before, submits, accepted
    ("default cap", None, 0, 0, 5, 3),
    ("project cap above the default", 5, 0, 0, 7, 5),
    ("project cap below the default", 1, 0, 0, 3, 1),
    ("project cap zero", 0, 0, 0, 2, 0),
    ("running jobs do not count", None, 0, 4, 5, 3),
    ("already over the cap", None, 5, 0, 2, 0),
    ("room for one", None, 2, 0, 3, 1),
]


@pytest.mark.parametrize("keyed", [False, True], ids=["group-commit", "idempotency-key"])
@pytest.mark.parametrize("name,cap,before,running,submits,accepted", CASES, ids=[c[0] for c in CASES])
def test_cap_over_http(capped, engine, name, cap, before, running, submits, accepted, keyed):
    app, client = capped
    pid = project(engine, app, max_pending=cap, pending=before, running=running)
    codes = []
    for i in range(submits):
        headers = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"} if keyed else {}
        r = client.post("/api/v1/jobs", json=job_body(project=pid, name=f"c-{i}"), headers=headers)
        codes.append(r.status_code)
        if r.status_code == 429:
            err = r.json()["error"]
            assert err["code"] == "PENDING_CAP" and int(r.headers["Retry-After"]) >= 1
            assert err["details"]["max_pending"] == (DEFAULT_CAP if cap is None else cap)
    assert codes == [201] * accepted + [429] * (submits - accepted)
    assert pending(engine, pid) == max(before, (DEFAULT_CAP if cap is None else cap))


def _burst(app, pid: str, n: int, results: list) -> None:
    """n concurrent submits through one app's group-commit writer (its own event loop)."""
    jobs = app.state.services.jobs

    async def one(i):
        spec = JobCreate.model_validate(job_body(project=pid, name=f"b-{i}"))
        try:
            await jobs.submit(principal=ADMIN, spec=spec, source=None, request_id=None)
            return 201
        except RateLimited as e:
            assert e.code == "PENDING_CAP"
            return 429

    async def run():
        await jobs.writer.start()
        try:
            results.extend(await asyncio.gather(*(one(i) for i in range(n))))
        finally:
            await jobs.writer.stop()

    asyncio.run(run())


def test_concurrent_burst_cannot_overshoot(capped, engine):
    app, _ = capped
    pid = project(engine, app, max_pending=7)
    results: list[int] = []
    _burst(app, pid, 40, results)
    assert results.count(201) == 7 and results.count(429) == 33
    assert pending(engine, pid) == 7


@pytest.mark.postgres
def test_two_brokers_on_one_database_hold_the_cap_exactly(settings, engine, fake_executor, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("two brokers share PostgreSQL only (SQLite is single-broker)")
    cap, per_broker = 25, 60
    apps, engines = [], []
    for _ in range(2):  # two app instances, each with its own engine, pool and group-commit writer
        eng = make_engine(settings)
        engines.append(eng)
        apps.append(create_app(settings.model_copy(update={"default_max_pending": 1000}), executor=fake_executor,
                               start_background=False, engine=eng))
    pid = project(engine, apps[0], max_pending=cap)
    apps[1].state.services.jobs.catalog_changed()
    results: list[list[int]] = [[], []]
    threads = [threading.Thread(target=_burst, args=(a, pid, per_broker, r)) for a, r in zip(apps, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for eng in engines:
        eng.dispose()
    everything = results[0] + results[1]
    assert len(everything) == 2 * per_broker
    assert everything.count(201) == cap
    assert all(results)  # both brokers really submitted
    assert pending(engine, pid) == cap
