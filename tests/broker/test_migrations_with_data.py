"""Upgrades of databases that hold data, on SQLite and PostgreSQL.

An empty database proves only that the DDL runs; what an operator upgrades is full of rows. Each
case here migrates a fresh database to an earlier revision, fills it with what the service writes
today (cut to that revision's columns: `migration_rows`), upgrades to head, and checks every
row survived and that the app serves the jobs and accepts the old tokens. The newest revisions
that can be downgraded are also taken down and up again with their data.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from broker.adapters.fake import FakeExecutor
from broker.app import create_app
from broker.db import alembic_config, downgrade, make_engine, migrate
from broker.settings import Settings
from tests.broker import migration_rows as mr
from tests.broker.conftest import pg_schema, schema_url


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(Settings(database_url="sqlite://")))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


REVISIONS = _revisions()
HEAD = REVISIONS[-1]
DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def fresh_settings(kind: str, tmp: Path):
    """Settings for a new empty database: a SQLite file, or a private PostgreSQL schema."""
    if kind == "sqlite":
        yield Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'up.db'}", seed_demo=False)
        return
    with pg_schema("mig") as schema:
        yield Settings(data_dir=tmp, database_url=schema_url(schema), seed_demo=False)


def _assert_app_serves(settings: Settings, engine) -> None:
    app = create_app(settings, executor=FakeExecutor(), start_background=False, engine=engine)
    with TestClient(app, headers={"Authorization": f"Bearer {mr.ADMIN_SECRET}"}) as client:
        for status, jid in mr.job_ids().items():
            r = client.get(f"/api/v1/jobs/{jid}")
            assert r.status_code == 200, (jid, r.text)
            assert r.json()["status"] == status
            assert client.get(f"/api/v1/jobs/{jid}/events").status_code == 200
        listed = client.get("/api/v1/jobs", params={"project": "ouh-liver", "limit": 100})
        assert listed.status_code == 200
        assert {j["id"] for j in listed.json()["items"]} == set(mr.job_ids().values())
        assert client.get("/api/v1/projects").status_code == 200
        assert client.get("/api/v1/nodes").status_code == 200


@pytest.mark.parametrize("db", DBS)
@pytest.mark.parametrize("start", REVISIONS[:-1])
def test_upgrade_from_an_earlier_revision_keeps_every_row(db, start, tmp_path):
    with fresh_settings(db, tmp_path) as settings:
        engine = make_engine(settings)
        try:
            migrate(settings, engine, revision=start)
            with engine.begin() as conn:
                written = mr.insert_at(conn)
            assert "jobs" in written and "attempts" in written and "ledger" in written
            migrate(settings, engine)
            with engine.connect() as conn:
                assert mr.read_back(conn, written) == mr.normalized(written)
            _assert_app_serves(settings, engine)
        finally:
            engine.dispose()


@pytest.mark.parametrize("db", DBS)
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_newest_revisions_downgrade_and_upgrade_again_with_data(db, steps, tmp_path):
    """Down `steps` revisions from head and back up: the rows that the lower schema can hold
    come back unchanged (columns a downgrade drops come back with their defaults)."""
    target = REVISIONS[-1 - steps]
    with fresh_settings(db, tmp_path) as settings:
        engine = make_engine(settings)
        try:
            migrate(settings, engine, revision=target)
            with engine.begin() as conn:
                written = mr.insert_at(conn)
            migrate(settings, engine)
            downgrade(settings, engine, target)
            with engine.connect() as conn:
                assert mr.read_back(conn, written) == mr.normalized(written)
            migrate(settings, engine)
            with engine.connect() as conn:
                assert mr.read_back(conn, written) == mr.normalized(written)
            _assert_app_serves(settings, engine)
        finally:
            engine.dispose()


@pytest.mark.parametrize("db", DBS)
def test_head_rows_are_read_back_exactly(db, tmp_path):
    """The builder's own check: at head every column of every table is written and read."""
    with fresh_settings(db, tmp_path) as settings:
        engine = make_engine(settings)
        try:
            migrate(settings, engine)
            with engine.begin() as conn:
                written = mr.insert_at(conn)
            assert set(written) == set(mr.ORDER)
            with engine.connect() as conn:
                assert mr.read_back(conn, written) == mr.normalized(written)
            _assert_app_serves(settings, engine)
        finally:
            engine.dispose()
