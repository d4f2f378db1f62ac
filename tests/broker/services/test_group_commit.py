"""GroupCommitWriter: batching, acknowledgement after commit, failure isolation."""

from __future__ import annotations

import asyncio

import pytest

from sqlalchemy import func, select
from sqlmodel import Session

from broker.models import Job
from broker.services import job_queries as repo
from broker.services.group_commit import GroupCommitWriter
from broker.services.jobs import JobService
from broker.services.wiring import build_services
from broker.auth.authn import Principal
from broker.schemas import JobCreate
from tests.broker.conftest import job_body

ADMIN = Principal(token_id="t-test", kind="user", role="platform-admin", name="test")


def rows(svc: JobService, n: int, project: str = "ouh-liver", name: str = "gc") -> list[tuple[dict, dict]]:
    return [svc.prepare(principal=ADMIN, spec=JobCreate.model_validate(job_body(project=project, name=f"{name}-{i}")))
            for i in range(n)]


def count(engine, prefix: str) -> int:
    with Session(engine) as s:
        return s.execute(select(func.count()).select_from(Job).where(Job.name.like(f"{prefix}-%"))).scalar_one()


# the two writer kinds: threads with SQLAlchemy connections, or (PostgreSQL) psycopg async
# connections on the event loop; on SQLite both cases use the thread writer.
WRITE_ASYNC = pytest.mark.parametrize("write_async", [None, repo.insert_jobs_async], ids=["threads", "async"])


@WRITE_ASYNC
def test_concurrent_submits_share_transactions_and_all_land(settings, engine, write_async):
    svc = build_services(settings, engine).jobs
    name = f"gc-many-{write_async is not None}"
    items = rows(svc, 60, name=name)

    async def main():
        w = GroupCommitWriter(engine, repo.insert_jobs, writers=2, write_async=write_async)
        await w.start()
        await asyncio.gather(*(w.submit(j, e) for j, e in items))
        await w.stop()
        return w

    w = asyncio.run(main())
    assert w.items == 60 and w.batches < 60  # batched
    assert count(engine, name) == 60


@WRITE_ASYNC
def test_a_bad_row_fails_alone(settings, engine, write_async):
    svc = build_services(settings, engine).jobs
    tag = "a" if write_async else "t"
    good = rows(svc, 5, name=f"gc-good{tag}")
    bad_job, bad_event = rows(svc, 1, name=f"gc-bad{tag}")[0]
    bad_job["project_id"] = "no-such-project"  # violates the foreign key at insert time

    async def main():
        w = GroupCommitWriter(engine, repo.insert_jobs, write_async=write_async)
        await w.start()
        res = await asyncio.gather(*(w.submit(j, e) for j, e in [*good[:2], (bad_job, bad_event), *good[2:]]),
                                   return_exceptions=True)
        await w.stop()
        return res

    res = asyncio.run(main())
    assert [r is None for r in res] == [True, True, False, True, True, True]
    assert "IntegrityError" in type(res[2]).__name__
    assert count(engine, f"gc-good{tag}") == 5 and count(engine, f"gc-bad{tag}") == 0


def test_writer_without_start_commits_directly(settings, engine):
    svc = build_services(settings, engine).jobs
    (j, e), = rows(svc, 1, name="gc-direct")
    asyncio.run(GroupCommitWriter(engine, repo.insert_jobs).submit(j, e))
    assert count(engine, "gc-direct") == 1


def test_an_id_collision_is_retried_under_a_fresh_id(settings, engine):
    svc = build_services(settings, engine).jobs
    (j1, e1), (j2, e2) = rows(svc, 2, name="gc-collide")
    j2["id"] = e2["job_id"] = j1["id"]

    async def main():
        await svc.writer.start()
        a = await svc.submit_rows(j1, e1)
        b = await svc.submit_rows(j2, e2)
        await svc.writer.stop()
        return a, b

    a, b = asyncio.run(main())
    assert a["id"] != b["id"] and count(engine, "gc-collide") == 2


def test_a_dropped_connection_is_replaced(settings, engine):
    """PostgreSQL: the async writer's connection; SQLite: the writer thread's connection."""
    svc = build_services(settings, engine).jobs
    (j1, e1), (j2, e2) = rows(svc, 2, name="gc-reconnect")

    async def main():
        w = GroupCommitWriter(engine, repo.insert_jobs, write_async=repo.insert_jobs_async)
        await w.start()
        await w.submit(j1, e1)
        for c in list(w._aconns_all):  # the server or the network dropped it
            await c.close()
        for c in list(w._conns):
            c.close()
        await w.submit(j2, e2)
        await w.stop()

    asyncio.run(main())
    assert count(engine, "gc-reconnect") == 2
