"""Alembic migrations on both DBs; admin token and demo seed on first start."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import inspect
from sqlmodel import Session, SQLModel, func, select

from broker.db import make_engine, migrate
from broker.models import ApiToken, Department, Pool, Project, QuotaRow
from broker.services.bootstrap import ensure_admin_token, seed_demo


def test_migrations_create_every_table_and_are_idempotent(settings, engine):
    migrate(settings)  # the fixture already ran it: a second run is a no-op
    names = set(inspect(engine).get_table_names())
    assert set(SQLModel.metadata.tables) <= names and "alembic_version" in names


def test_migrated_schema_matches_the_models(settings, engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), SQLModel.metadata)
    assert diff == []


def test_admin_token_file_is_0600_and_reused(settings, engine, anon):
    p1 = ensure_admin_token(settings, engine)
    p2 = ensure_admin_token(settings, engine)
    assert p1 == p2 == Path(settings.data_dir) / "admin-token"
    assert stat.S_IMODE(p1.stat().st_mode) == 0o600
    tok = p1.read_text().strip()
    assert anon.get("/api/v1/projects", headers={"Authorization": f"Bearer {tok}"}).status_code == 200
    with Session(engine) as s:
        row = s.exec(select(ApiToken).where(ApiToken.prefix == tok.split("_")[0] + "_" + tok.split("_")[1])).one()
        assert row.role == "platform-admin" and tok not in (row.hash, row.prefix)


def test_admin_token_is_replaced_when_the_file_is_not_a_valid_token(settings, engine):
    p = ensure_admin_token(settings, engine)
    p.write_text("garbage\n")
    p2 = ensure_admin_token(settings, engine)
    assert p2.read_text().strip().startswith("cbk_") and stat.S_IMODE(p2.stat().st_mode) == 0o600


def test_seed_demo_fills_an_empty_db_once(tmp_path):
    from broker.settings import Settings

    st = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'seed.db'}")
    migrate(st)
    eng = make_engine(st)
    with Session(eng) as s:
        assert seed_demo(s) is True
        s.commit()
        assert seed_demo(s) is False
        assert {d.name for d in s.exec(select(Department)).all()} == {"OUH", "SLB", "SVS", "SHS", "Regional IT"}
        assert {"ouh-liver", "shs-ops-triage"} <= {p.id for p in s.exec(select(Project)).all()}
        pools = {p.name: p for p in s.exec(select(Pool)).all()}
        assert pools["operation"].lend_to_innovation and pools["innovation"].workload_class == "innovation"
        assert s.exec(select(func.count()).select_from(QuotaRow)).one() > 0
        bad = [q for q in s.exec(select(QuotaRow)).all() if not (q.guaranteed <= q.nominal)]
        assert bad == []
    eng.dispose()


def test_catalog_routes_list_projects_nodes_pools(client):
    from broker.api.catalog import NodeList, PoolList, ProjectList

    projects = ProjectList.model_validate(client.get("/api/v1/projects").json()).items
    assert {"ouh-liver", "slb-cardio"} <= {p.id for p in projects}
    assert next(p for p in projects if p.id == "ouh-liver").department_name == "OUH"
    nodes = NodeList.model_validate(client.get("/api/v1/nodes").json()).items
    assert {n.id for n in nodes} == {"inno-1", "inno-2", "op-1"}
    pools = {p.name: p for p in PoolList.model_validate(client.get("/api/v1/pools").json()).items}
    assert (pools["innovation"].nodes, pools["innovation"].gpus, pools["innovation"].gpu_models) == (2, 8, ["A100"])
    assert pools["operation"].lend_to_innovation and pools["operation"].gpus == 8


def test_openapi_document_lists_the_issue_paths(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/logs",
              "/api/v1/jobs/{job_id}/events", "/api/v1/projects", "/api/v1/nodes", "/api/v1/pools", "/healthz",
              "/readyz"):
        assert p in paths
