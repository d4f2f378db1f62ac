"""Notifications end to end: subscriptions over the API, job outcomes and unhealthy nodes into
the outbox, delivery to a local webhook receiver (http.server) and a local SMTP server (a tiny
asyncio one), retries with backoff, and nothing lost across a broker restart.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session, select

from broker.adapters.fake import FakeExecutor, node
from broker.db import make_engine
from broker.models import Node, NotifyOutbox
from broker.services.notify import backoff_s, collect, deliver_due
from broker.services.scheduling import SchedulingLoop
from broker.settings import Settings
from tests.broker.conftest import NODES, job_body


class SmtpServer:
    """Just enough SMTP (RFC 5321) to take messages: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._session, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 test ESMTP")
        sender, rcpts = "", []
        while line := await reader.readline():
            cmd = line.decode().strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                say("250 test")
            elif verb == "MAIL":
                sender, rcpts = cmd.split(":", 1)[1].strip(" <>"), []
                say("250 OK")
            elif verb == "RCPT":
                rcpts.append(cmd.split(":", 1)[1].strip(" <>"))
                say("250 OK")
            elif verb == "DATA":
                say("354 end with <CRLF>.<CRLF>")
                await writer.drain()
                data = bytearray()
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                self.messages.append((sender, rcpts, bytes(data)))
                say("250 OK queued")
            elif verb == "QUIT":
                say("221 bye")
                await writer.drain()
                break
            else:
                say("250 OK")
            await writer.drain()
        writer.close()

    def close(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


class Webhook:
    """A local receiver; answers 500 to the first `fail` requests."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        self.fail = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.fail > 0:
                    hook.fail -= 1
                    self.send_response(500)
                else:
                    hook.got.append({"event": self.headers["X-Broker-Event"], **json.loads(body)})
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *a) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def smtp():
    s = SmtpServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def hook():
    h = Webhook()
    yield h
    h.close()


@pytest.fixture(scope="module")
def settings(db_url, tmp_path_factory, smtp, hook) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"), database_url=db_url, overview_max_age_s=0.0,
                    notify_smtp_host="127.0.0.1", notify_smtp_port=smtp.port, notify_smtp_from="broker@region.test",
                    notify_webhook_allow_prefixes=[hook.url.rsplit("/", 1)[0] + "/"], notify_retry_base_s=10.0)


@pytest.fixture(scope="module")
def fake_executor():
    return FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], gpu_model=n["gpu_model"]) for n in NODES])


@pytest.fixture(scope="module")
def loop(settings, engine, fake_executor):
    return SchedulingLoop(settings, engine, fake_executor)


def subscribe(client, **body):
    return client.post("/api/v1/notifications/subscriptions", json=body)


@pytest.fixture(scope="module")
def subs(client, engine, hook):
    collect(engine, time.time())  # the first run only sets its mark
    a = subscribe(client, events=["job.failed", "job.succeeded"], channel="webhook", target=hook.url,
                  project="ouh-liver")
    b = subscribe(client, events=["job.preempted", "node.unhealthy"], channel="email", target="ops@region.test")
    assert a.status_code == b.status_code == 201, (a.text, b.text)
    return a.json(), b.json()


def test_job_outcomes_reach_the_webhook_and_the_mailbox(client, engine, settings, loop, fake_executor, subs,
                                                        hook, smtp):
    from broker import jobstate
    from broker.models import Job

    hook.got.clear()  # the receivers serve both databases' runs
    smtp.messages.clear()
    ok = client.post("/api/v1/jobs", json=job_body(name="ok", project="ouh-liver")).json()["id"]
    bad = client.post("/api/v1/jobs", json=job_body(name="bad", project="ouh-liver", max_retries=0)).json()["id"]
    other = client.post("/api/v1/jobs", json=job_body(name="other", project="ouh-radiology")).json()["id"]
    loop.tick()
    loop.tick()
    fake_executor.finish(ok, 1, exit_code=0)
    fake_executor.finish(bad, 1, exit_code=3)
    fake_executor.finish(other, 1, exit_code=0)
    loop.tick()
    with Session(engine) as s:  # an admin-visible preemption (as the scheduler or idle reclaim does)
        j = s.get(Job, other)
        assert j.status == "SUCCEEDED"
    pre = client.post("/api/v1/jobs", json=job_body(name="pre", project="ouh-radiology")).json()["id"]
    loop.tick()
    loop.tick()
    with Session(engine) as s:
        j = s.get(Job, pre)
        assert jobstate.transition(s, j, "PREEMPTED", expected_version=j.version, message="make room")
        s.commit()
    now = time.time()
    assert collect(engine, now) == 0  # events younger than the commit lag wait (COMMIT_LAG_S)
    assert collect(engine, now + 10) == 3  # ok + bad to the webhook (ouh-liver only), pre to the mailbox
    assert deliver_due(engine, settings, now + 10) == {"delivered": 3, "retried": 0, "dead": 0}
    assert sorted((g["event"], g["job_id"]) for g in hook.got) == sorted([("job.succeeded", ok), ("job.failed", bad)])
    assert next(g for g in hook.got if g["job_id"] == bad)["message"].startswith("worker 0 exited with code 3")
    [(sender, rcpts, data)] = smtp.messages
    msg = message_from_bytes(data)
    assert (sender, rcpts) == ("broker@region.test", ["ops@region.test"])
    assert msg["Subject"] == "[compute broker] job.preempted (ouh-radiology)" and pre in msg.get_payload()
    assert collect(engine, now + 10) == 0 and deliver_due(engine, settings, now + 10)["delivered"] == 0  # once each


def test_a_failing_webhook_is_retried_with_backoff_and_survives_a_restart(client, engine, settings, subs, hook):
    hook.got.clear()
    hook.fail = 2
    job = client.post("/api/v1/jobs", json=job_body(name="retry", project="ouh-liver")).json()["id"]
    with Session(engine) as s:
        from broker import jobstate
        from broker.models import Job

        j = s.get(Job, job)
        assert jobstate.transition(s, j, "CANCELLED", expected_version=j.version)  # not subscribed: no message
        s.commit()
    now = time.time()
    with Session(engine) as s:
        from broker.services.notify_outbox import enqueue

        assert enqueue(s, "job.failed", "ouh-liver", {"job_id": job}, now=now) == 1
        s.commit()
    assert deliver_due(engine, settings, now)["retried"] == 1
    assert deliver_due(engine, settings, now + 1)["retried"] == 0  # not due yet
    assert deliver_due(engine, settings, now + backoff_s(settings, 1))["retried"] == 1  # 2nd try fails too
    assert backoff_s(settings, 2) == 2 * backoff_s(settings, 1)
    # "restart": a new engine on the same database finds the message and delivers it
    fresh = make_engine(settings)
    try:
        assert deliver_due(fresh, settings, now + 100)["delivered"] == 1
    finally:
        fresh.dispose()
    assert [g["job_id"] for g in hook.got] == [job]
    with Session(engine) as s:
        row = s.execute(select(NotifyOutbox).where(NotifyOutbox.payload.is_not(None))
                        .order_by(NotifyOutbox.id.desc())).scalars().first()
        assert row.attempts == 3 and row.delivered_at is not None


def test_an_unhealthy_node_is_told_once_per_spell(engine, settings, subs, smtp):
    smtp.messages.clear()
    with Session(engine) as s:
        n = s.get(Node, "inno-2")
        n.state, n.state_reason = "unhealthy", "agent heartbeats stopped"
        s.add(n)
        s.commit()
    now = time.time()
    assert collect(engine, now) == 1 and collect(engine, now) == 0
    deliver_due(engine, settings, now)
    assert len(smtp.messages) == 1 and b"inno-2" in smtp.messages[0][2]
    with Session(engine) as s:
        n = s.get(Node, "inno-2")
        n.state, n.state_reason = "ready", ""
        s.add(n)
        s.commit()
    assert collect(engine, now) == 0


SUBSCRIBE_CASES = [  # name, body, status, code
    ("unknown event", {"events": ["job.exploded"], "channel": "email", "target": "a@b.test"}, 422, "UNKNOWN_EVENT"),
    ("webhook outside the allowed prefixes", {"events": ["job.failed"], "channel": "webhook",
                                              "target": "http://169.254.169.254/latest"}, 422, "WEBHOOK_NOT_ALLOWED"),
    ("header injection in an address", {"events": ["job.failed"], "channel": "email",
                                        "target": "a@b.test\r\nBcc: x@y.test"}, 422, "BAD_TARGET"),
    ("not an address", {"events": ["job.failed"], "channel": "email", "target": "nobody"}, 422, "BAD_TARGET"),
    ("unknown channel", {"events": ["job.failed"], "channel": "pager", "target": "x"}, 422, None),
    ("project not there", {"events": ["job.failed"], "channel": "email", "target": "a@b.test",
                           "project": "nope"}, 404, None),
]


@pytest.mark.parametrize("body,status,code", [c[1:] for c in SUBSCRIBE_CASES], ids=[c[0] for c in SUBSCRIBE_CASES])
def test_bad_subscriptions_are_refused(client, body, status, code):
    r = subscribe(client, **body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code if code else r.json()["error"]["code"]


def test_a_member_subscribes_to_a_project_but_not_region_wide(client, engine, hook):
    from fastapi.testclient import TestClient

    tok = member_token(client, "ouh-liver")
    with TestClient(client.app, headers={"Authorization": f"Bearer {tok}"}) as m:
        body = {"events": ["job.failed"], "channel": "webhook", "target": hook.url}
        r = m.post("/api/v1/notifications/subscriptions", json=body)
        assert r.status_code == 403, r.text
        r = m.post("/api/v1/notifications/subscriptions", json={**body, "project": "ouh-liver"})
        assert r.status_code == 201, r.text
        mine = m.get("/api/v1/notifications/subscriptions").json()
        assert [x["id"] for x in mine["items"]] == [r.json()["id"]] and "budget.80" in mine["events"]
        assert m.post("/api/v1/notifications/subscriptions", json={**body, "project": "svs-pathology"}).status_code \
            in (403, 404)
        assert m.delete(f"/api/v1/notifications/subscriptions/{r.json()['id']}").status_code == 204
        assert m.get("/api/v1/notifications/subscriptions").json()["items"] == []


def member_token(client, project: str) -> str:
    """A user with the member role in `project`, and a token of theirs (through the admin API)."""
    import uuid

    uid = f"u-{uuid.uuid4().hex[:8]}"
    assert client.post("/api/v1/admin/users", json={"id": uid}).status_code == 201
    r = client.post(f"/api/v1/projects/{project}/members", json={"user": uid, "role": "member"})
    assert r.status_code == 201, r.text
    return client.post("/api/v1/admin/tokens", json={"name": uid, "user": uid}).json()["token"]


def test_a_project_budget_is_told_at_80_and_100_percent_once(client, engine, settings, new_project, smtp):
    from broker.models import Ledger, NotifyMark, Project

    pid = new_project()
    with Session(engine) as s:
        s.get(Project, pid).budget_gpu_hours = 10.0
        s.merge(NotifyMark(name="budget_checked_at", value=0.0))  # not checked within the minute
        s.commit()
    r = subscribe(client, events=["budget.80", "budget.100"], channel="email", target="money@region.test", project=pid)
    assert r.status_code == 201, r.text
    from broker.services.snapshot import month_start

    jid = client.post("/api/v1/jobs", json=job_body(project=pid)).json()["id"]
    now = month_start(time.time()) + 10 * 86400  # mid-month: no month boundary inside the ledger rows
    with Session(engine) as s:  # 8.5 GPU-hours this month: 2 GPUs for 4.25 h, ended now
        s.add(Ledger(job_id=jid, attempt=1, project_id=pid, department_id="ouh", pool="innovation",
                     gpus=2, started_at=now - 4.25 * 3600, ended_at=now, allocated_gpu_s=8.5 * 3600))
        s.commit()
    smtp.messages.clear()
    collect(engine, now)
    deliver_due(engine, settings, now)
    assert [message_from_bytes(m[2])["Subject"] for m in smtp.messages] == [f"[compute broker] budget.80 ({pid})"]
    assert collect(engine, now + 30) == 0  # checked at most once a minute, and told once
    with Session(engine) as s:  # the rest of the budget: a running attempt, 2 GPUs for 1 h so far
        s.add(Ledger(job_id=jid, attempt=2, project_id=pid, department_id="ouh", pool="innovation",
                     gpus=2, started_at=now - 3600))
        s.commit()
    collect(engine, now + 61)
    deliver_due(engine, settings, now + 61)
    assert [message_from_bytes(m[2])["Subject"] for m in smtp.messages][1:] == [f"[compute broker] budget.100 ({pid})"]
    assert collect(engine, now + 200) == 0


def test_old_delivered_messages_are_pruned_undelivered_ones_kept(engine):
    from broker.models import NotifyMark
    from broker.services.notify import KEEP_S, prune

    now = time.time() + 2 * KEEP_S  # everything so far is old by then
    with Session(engine) as s:
        s.add(NotifyOutbox(subscription_id="x", channel="email", target="a@b.test", event="job.failed",
                           payload={}, created_at=time.time(), next_at=now + 3600))  # still to deliver
        s.merge(NotifyMark(name="outbox_pruned_at", value=0.0))
        s.commit()
        before = s.execute(select(NotifyOutbox)).scalars().all()
        done = sum(1 for r in before if r.delivered_at is not None or r.dead)
    assert done >= 1 and prune(engine, now) == done
    assert prune(engine, now + 60) == 0  # at most once an hour
    with Session(engine) as s:
        left = s.execute(select(NotifyOutbox)).scalars().all()
    assert left and all(r.delivered_at is None and not r.dead for r in left)
