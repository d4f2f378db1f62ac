"""Idempotency-Key on POST /api/v1/jobs: replay, conflict, concurrency, per-token scope."""

from __future__ import annotations

import threading
import uuid

from sqlmodel import Session, func, select

from broker.models import Job
from broker.services.bootstrap import create_token
from tests.broker.conftest import job_body


def count(engine, name: str) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(Job).where(Job.name == name)).one()


def test_same_key_and_body_returns_the_same_job(client, engine):
    key, name = str(uuid.uuid4()), f"idem-{uuid.uuid4().hex[:6]}"
    r1 = client.post("/api/v1/jobs", json=job_body(name=name), headers={"Idempotency-Key": key})
    r2 = client.post("/api/v1/jobs", json=job_body(name=name), headers={"Idempotency-Key": key})
    assert r1.status_code == r2.status_code == 201
    assert r1.json()["id"] == r2.json()["id"] and r2.headers.get("idempotent-replayed") == "true"
    assert count(engine, name) == 1


def test_key_order_in_the_body_does_not_matter(client):
    key = str(uuid.uuid4())
    b = job_body(name="idem-order")
    r1 = client.post("/api/v1/jobs", json=b, headers={"Idempotency-Key": key})
    r2 = client.post("/api/v1/jobs", json=dict(reversed(list(b.items()))), headers={"Idempotency-Key": key})
    assert r1.json()["id"] == r2.json()["id"]


def test_same_key_other_body_is_422(client):
    key = str(uuid.uuid4())
    assert client.post("/api/v1/jobs", json=job_body(name="a1"), headers={"Idempotency-Key": key}).status_code == 201
    r = client.post("/api/v1/jobs", json=job_body(name="a2"), headers={"Idempotency-Key": key})
    assert r.status_code == 422 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_keys_are_scoped_per_token(client, anon, engine):
    with Session(engine) as s:
        other, _ = create_token(s, name="other", role="member", project_id="ouh-liver", department_id="ouh")
        s.commit()
    key, name = str(uuid.uuid4()), f"idem-{uuid.uuid4().hex[:6]}"
    r1 = client.post("/api/v1/jobs", json=job_body(name=name), headers={"Idempotency-Key": key})
    r2 = anon.post("/api/v1/jobs", json=job_body(name=name),
                   headers={"Idempotency-Key": key, "Authorization": f"Bearer {other}"})
    assert r1.status_code == r2.status_code == 201 and r1.json()["id"] != r2.json()["id"]


def test_concurrent_requests_with_one_key_make_exactly_one_job(client, engine):
    key, name = str(uuid.uuid4()), f"idem-{uuid.uuid4().hex[:6]}"
    ids, barrier = [], threading.Barrier(6)

    def post():
        barrier.wait()
        r = client.post("/api/v1/jobs", json=job_body(name=name), headers={"Idempotency-Key": key})
        ids.append((r.status_code, r.json().get("id")))

    ts = [threading.Thread(target=post) for _ in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert {c for c, _ in ids} == {201} and len({i for _, i in ids}) == 1
    assert count(engine, name) == 1


def test_blank_key_is_422(client):
    r = client.post("/api/v1/jobs", json=job_body(), headers={"Idempotency-Key": " "})
    assert r.status_code == 422 and r.json()["error"]["code"] == "BAD_IDEMPOTENCY_KEY"


def test_too_long_key_is_422(client):
    r = client.post("/api/v1/jobs", json=job_body(), headers={"Idempotency-Key": "k" * 256})
    assert r.status_code == 422 and r.json()["error"]["code"] == "BAD_IDEMPOTENCY_KEY"
