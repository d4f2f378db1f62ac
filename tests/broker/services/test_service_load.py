"""Every broker's requests in flight per service (`broker.services.service_load`): what one
broker writes, when, and what the leader reads back. On SQLite and PostgreSQL (the table is
the same; only PostgreSQL runs several brokers, which the controller test covers)."""

from __future__ import annotations

import uuid

from sqlmodel import Session, select

from broker.models import ServiceLoad
from broker.services.service_load import FRESH_S, LoadPublisher, RemoteLoad


class Router:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def service_counts(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _rows(engine, broker: str) -> dict[str, float]:
    with Session(engine) as s:
        return {r.service_id: r.inflight for r in s.exec(select(ServiceLoad).where(ServiceLoad.broker_id == broker))}


def test_a_broker_writes_the_mean_of_its_samples_about_every_second_and_nothing_when_idle(engine):
    router, clock, me = Router(), Clock(), "b-" + uuid.uuid4().hex[:6]
    pub = LoadPublisher(engine, router, me, clock=clock, period_s=1.0)
    assert not pub.tick() and _rows(engine, me) == {}  # idle from the start: nothing written
    router.counts = {"svc-a": 4}
    clock.t += 1.0
    assert pub.tick() and _rows(engine, me) == {"svc-a": 4.0}  # the one sample since the last (empty) write
    for n in (2, 6, 4):  # three samples within the second: no write
        router.counts = {"svc-a": n, "svc-b": 1}
        clock.t += 0.25
        assert not pub.tick()
    router.counts = {"svc-a": 0, "svc-b": 1}
    clock.t += 0.25
    assert pub.tick() and _rows(engine, me) == {"svc-a": 3.0, "svc-b": 1.0}
    router.counts = {}
    clock.t += 1.0
    assert pub.tick() and _rows(engine, me) == {}  # back to idle: its rows are gone
    clock.t += 1.0
    assert not pub.tick()


def test_the_leader_counts_fresh_rows_of_other_brokers_only(engine):
    clock, me, other, dead = Clock(), "lead-" + uuid.uuid4().hex[:6], "b-" + uuid.uuid4().hex[:6], "d-" + uuid.uuid4().hex[:6]
    svc = "svc-" + uuid.uuid4().hex[:6]
    with Session(engine) as s:
        s.add(ServiceLoad(broker_id=me, service_id=svc, inflight=50.0, updated_at=clock.t))  # its own: not added
        s.add(ServiceLoad(broker_id=other, service_id=svc, inflight=3.5, updated_at=clock.t - 1))
        s.add(ServiceLoad(broker_id=dead, service_id=svc, inflight=99.0, updated_at=clock.t - FRESH_S - 1))
        s.commit()
    remote = RemoteLoad(engine, me, forget_s=FRESH_S + 0.5)
    assert remote(clock.t).get(svc) == 3.5
    assert _rows(engine, dead) == {}  # rows past forget_s are deleted
