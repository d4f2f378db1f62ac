"""Broker test fixtures: every DB-backed fixture runs on SQLite and on PostgreSQL.

- `db_url` (module scope, params sqlite|postgres): SQLite file in a tmp dir, or a private
  PostgreSQL schema (`?options=-csearch_path=...`) created and dropped per module. PostgreSQL
  is skipped with a clear reason when 127.0.0.1:5432 does not answer.
- `settings`, `engine` (migrated with Alembic, demo region seeded, nodes inserted),
  `fake_executor`, `app` (create_app(..., start_background=False)), `client` (TestClient with
  the admin bearer token), `anon` (TestClient without a token), `new_project` (a fresh project
  slug per test so counts never depend on other tests).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from broker.adapters.fake import FakeExecutor
from broker.app import create_app
from broker.db import make_engine, migrate
from broker.models import Node, Project
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.settings import Settings

PG_URL = os.environ.get("BROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# The demo nodes every API test sees: innovation 2 x 4 GPUs (A100), operation 1 x 8 GPUs (H100).
NODES = [
    dict(id="inno-1", hostname="inno-1", pool="innovation", gpu_model="A100", gpus=4, cpus=32, memory_gb=256),
    dict(id="inno-2", hostname="inno-2", pool="innovation", gpu_model="A100", gpus=4, cpus=32, memory_gb=256),
    dict(id="op-1", hostname="op-1", pool="operation", gpu_model="H100", gpus=8, cpus=64, memory_gb=512),
]


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True, connect_timeout=3)


def pg_reason() -> str | None:
    try:
        _pg_admin().close()
        return None
    except Exception as e:  # any connection failure means: skip
        return f"PostgreSQL not reachable at {PG_URL}: {type(e).__name__}: {str(e).strip()[:120]}"


@contextmanager
def pg_schema(prefix: str = "t") -> Iterator[str]:
    """A private PostgreSQL schema (its name), dropped afterwards; skips when no server answers."""
    reason = pg_reason()
    if reason:
        pytest.skip(reason)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with _pg_admin() as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')


def schema_url(schema: str, base: str = PG_URL) -> str:
    """The database URL of `base` with `schema` as its search path."""
    return f"{base}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'broker.db'}"
        return
    with pg_schema() as schema:
        yield schema_url(schema)


@pytest.fixture(scope="module")
def settings(db_url, tmp_path_factory) -> Settings:
    # overview_max_age_s=0: tests read the overview right after changing what it counts
    return Settings(data_dir=tmp_path_factory.mktemp("data"), database_url=db_url, token_cache_ttl_s=30.0,
                    overview_max_age_s=0.0)


@pytest.fixture(scope="module")
def engine(settings):
    migrate(settings)
    eng = make_engine(settings)
    with Session(eng) as s:
        seed_demo(s)
        for n in NODES:
            s.add(Node(**n))
        s.commit()
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def admin_token(settings, engine) -> str:
    return Path(ensure_admin_token(settings, engine)).read_text().strip()


@pytest.fixture(scope="module")
def fake_executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture(scope="module")
def app(settings, engine, fake_executor):
    return create_app(settings, executor=fake_executor, start_background=False, engine=engine)


@pytest.fixture(scope="module")
def client(app, admin_token):
    with TestClient(app, headers={"Authorization": f"Bearer {admin_token}"}) as c:
        yield c


@pytest.fixture(scope="module")
def anon(app, client):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def new_project(engine, app):
    """A fresh project (in department ouh) per call: isolates counts between tests."""

    def make(department: str = "ouh") -> str:
        pid = f"p-{uuid.uuid4().hex[:10]}"
        with Session(engine) as s:
            s.add(Project(id=pid, department_id=department, name=pid))
            s.commit()
        app.state.services.jobs.catalog_changed()  # as an in-process admin write does
        return pid

    return make


def job_body(**over) -> dict:
    """Builder for a valid submit body; keyword arguments override top-level fields,
    `gpus=`/`cpus=`/`memory_gb=`/`gpu_model=` override resources."""
    res = {"gpus": 1, "cpus": 2, "memory_gb": 8}
    for k in ("gpus", "cpus", "memory_gb", "gpu_model"):
        if k in over:
            res[k] = over.pop(k)
    body = {"name": "train-1", "project": "ouh-liver", "class": "innovation", "image": "localhost/busybox:test",
            "command": ["/bin/busybox", "echo", "hi"], "env": {"FOO": "bar"}, "resources": res, "workers": 1,
            "max_runtime_s": 600, "priority": 0, "runtime": "container", "max_retries": 1}
    body.update(over)
    return body
