"""POST /api/v1/telemetry end to end on SQLite and PostgreSQL: auth, validation, storage, dedup."""

import time

import pytest
from sqlalchemy import text
from sqlmodel import Session

from agents.agent import encode
from agents.fake import FakeReader
from tests.broker.services.telemetry.builders import agent_token, gpu, new_node, node_state, report

URL = "/api/v1/telemetry"


@pytest.fixture(scope="module")
def tclient(app, client):
    return client


def push(tclient, token, body: bytes):
    return tclient.post(URL, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def count(engine, sql, **p):
    with Session(engine) as s:
        return s.execute(text(sql), p).scalar()


def fake_report(node, seq, now, n=2, readings=3):
    r = FakeReader(n, node_seed=node)
    r.init()
    samples = [s for k in range(readings) for s in r.read(now - readings + k)]
    return report(node, seq, samples, started_at=now - 100, sent_at=now)


def test_push_stores_samples_heartbeat_and_agent_state(tclient, engine):
    node = new_node(engine)
    tok = agent_token(engine, node)
    now = time.time()
    r = push(tclient, tok, encode(fake_report(node, 10, now)))
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": True, "duplicate": False, "samples": 6, "node_status": "ready"}
    assert count(engine, "SELECT COUNT(*) FROM gpu_samples WHERE node_id=:n", n=node) == 6
    assert count(engine, "SELECT COUNT(*) FROM host_samples WHERE node_id=:n", n=node) == 0
    state, _, hb = node_state(engine, node)
    assert state == "ready" and abs(hb - now) < 60
    assert count(engine, "SELECT last_seq FROM agent_state WHERE node_id=:n", n=node) == 10
    row = count(engine, "SELECT util_gpu FROM gpu_samples WHERE node_id=:n AND gpu_index=0 ORDER BY ts LIMIT 1", n=node)
    assert row == 95.0  # the fake's "busy" device 0


@pytest.mark.parametrize(
    "name,seqs,stored",
    [
        ("same report twice", [5, 5], [True, False]),
        ("older seq after newer", [7, 6], [True, False]),
        ("in order", [1, 2, 3], [True, True, True]),
    ],
)
def test_duplicates_are_acknowledged_not_stored(tclient, engine, name, seqs, stored):
    node = new_node(engine)
    tok = agent_token(engine, node)
    now = time.time()
    got = []
    for i, seq in enumerate(seqs):
        r = push(tclient, tok, encode(report(node, seq, [gpu(0, now - 10 + i)])))
        assert r.status_code == 200
        got.append(not r.json()["duplicate"])
    assert got == stored
    assert count(engine, "SELECT COUNT(*) FROM gpu_samples WHERE node_id=:n", n=node) == sum(stored)


def test_unknown_node_samples_kept_without_health(tclient, engine):
    tok = agent_token(engine, "not-in-inventory")
    r = push(tclient, tok, encode(report("not-in-inventory", 1, [gpu(0, time.time())])))
    assert r.status_code == 200 and r.json()["node_status"] is None


@pytest.mark.parametrize(
    "name,token_kind,body_kind,status,code",
    [
        ("no token", "none", "ok", 401, "UNAUTHORIZED"),
        ("user token", "user", "ok", 403, "AGENT_TOKEN_REQUIRED"),
        ("token of another node", "other", "ok", 403, "NODE_MISMATCH"),
        ("not json", "agent", "garbage", 422, "INVALID_REPORT"),
        ("missing fields", "agent", "empty", 422, "INVALID_REPORT"),
        ("utilization over 100", "agent", "util", 422, "INVALID_REPORT"),
        ("NaN", "agent", "nan", 422, "INVALID_REPORT"),
        ("clock a week ahead", "agent", "future", 422, "CLOCK_SKEW"),
        ("body too large", "agent", "huge", 413, "PAYLOAD_TOO_LARGE"),
    ],
)
def test_refusals_are_4xx_with_code(tclient, anon, engine, admin_token, name, token_kind, body_kind, status, code):
    node = new_node(engine)
    now = time.time()
    good = encode(report(node, 1, [gpu(0, now)]))
    bodies = {
        "ok": good,
        "garbage": b"{not json",
        "empty": b"{}",
        "util": good.replace(b'"util_gpu":50.0', b'"util_gpu":150.0'),
        "nan": good.replace(b'"util_gpu":50.0', b'"util_gpu":NaN'),
        "future": encode(report(node, 1, [gpu(0, now + 7 * 86400)])),
        "huge": b'{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}',
    }
    tokens = {"none": None, "user": admin_token, "other": agent_token(engine, "someone-else"),
              "agent": agent_token(engine, node)}
    tok = tokens[token_kind]
    if tok is None:
        r = anon.post(URL, content=bodies[body_kind])
    else:
        r = push(tclient, tok, bodies[body_kind])
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "Traceback" not in r.text
    assert count(engine, "SELECT COUNT(*) FROM gpu_samples WHERE node_id=:n", n=node) == 0


def test_invalid_report_names_the_field(tclient, engine):
    node = new_node(engine)
    body = encode(report(node, 1, [gpu(0, time.time())])).replace(b'"util_gpu":50.0', b'"util_gpu":-1')
    r = push(tclient, agent_token(engine, node), body)
    fields = [f["field"] for f in r.json()["error"]["details"]["fields"]]
    assert fields == ["gpus.0.util_gpu"]


def test_attribution_stored_with_the_sample(tclient, engine):
    node = new_node(engine)
    now = time.time()
    body = encode(report(node, 1, [gpu(0, now, job="job-att", project="ouh-liver", mem=2048.0), gpu(1, now)]))
    assert push(tclient, agent_token(engine, node), body).status_code == 200
    with Session(engine) as s:
        rows = s.execute(text("SELECT gpu_index, job_id, attempt, project_id, job_memory_mb FROM gpu_samples "
                              "WHERE node_id=:n ORDER BY gpu_index"), {"n": node}).all()
    assert [tuple(r) for r in rows] == [(0, "job-att", 1, "ouh-liver", 2048.0), (1, None, None, None, None)]


def test_samples_older_than_retention_are_dropped(tclient, app, engine):
    node = new_node(engine)
    now = time.time()
    old = now - service_config(app).raw_retention_s - 10
    r = push(tclient, agent_token(engine, node), encode(report(node, 1, [gpu(0, old), gpu(0, now)])))
    assert r.json()["samples"] == 1


def service_config(app):
    return app.state.services.telemetry.config


class Switch:
    """Wraps the test client: while `down`, every request fails like a refused connection."""

    def __init__(self, client):
        self.client, self.down = client, False

    def post(self, url, **kw):
        import httpx

        if self.down:
            raise httpx.ConnectError("connection refused")
        return self.client.post(url.replace("http://testserver", ""), **kw)


def test_agent_to_broker_end_to_end_with_outage_and_replay(tclient, engine):
    """The real Agent + Pusher + HttpSender against the real route: nothing lost, in order."""
    import random

    from agents.agent import Agent, AgentConfig
    from agents.push import Backoff, HttpSender, MemoryBuffer, Pusher, SeqCounter

    node = new_node(engine)
    link = Switch(tclient)
    sender = HttpSender("http://testserver", agent_token(engine, node), client=link)
    pusher = Pusher(MemoryBuffer(), sender, backoff=Backoff(1.0, 20.0), rng=random.Random(3))
    t0 = time.time() - 400
    agent = Agent(AgentConfig(node_id=node, hostname=node), FakeReader(2, node_seed=node), seq=SeqCounter(t0),
                  pusher=pusher)
    agent.start(t0)
    t = t0
    while t < t0 + 300:
        link.down = t0 + 60 <= t < t0 + 200
        agent.tick(t)
        t += 0.5
    assert len(pusher.buffer) == 0 and pusher.rejected == 0 and pusher.buffer.dropped == 0
    with Session(engine) as s:
        ts = [r[0] for r in s.execute(text("SELECT ts FROM gpu_samples WHERE node_id=:n AND gpu_index=0 ORDER BY id"),
                                      {"n": node})]
    assert ts == [t0 + k for k in range(len(ts))] and len(ts) >= 290  # stored in order, no gap
    assert node_state(engine, node)[0] == "ready"


def test_project_comes_from_the_jobs_table(tclient, client, engine):
    """The runner sets BROKER_JOB_ID but not the project: the broker fills it in (and wins)."""
    from tests.broker.conftest import job_body

    r = client.post("/api/v1/jobs", json=job_body(project="ouh-liver"))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    node = new_node(engine)
    now = time.time()
    body = encode(report(node, 1, [gpu(0, now, job=job_id), gpu(1, now, job=job_id, project="spoofed"),
                                   gpu(2, now, job="not-a-job", project="agent-said")]))
    assert push(tclient, agent_token(engine, node), body).status_code == 200
    with Session(engine) as s:
        got = s.execute(text("SELECT gpu_index, project_id FROM gpu_samples WHERE node_id=:n ORDER BY gpu_index"),
                        {"n": node}).all()
    assert [tuple(g) for g in got] == [(0, "ouh-liver"), (1, "ouh-liver"), (2, "agent-said")]
