"""Leadership: one leader per PostgreSQL schema with fencing, one broker per SQLite file."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import text
from sqlmodel import Session

from broker.db import make_engine
from broker.services.leadership import AnotherBroker, NotLeader, PgLeadership, SqliteLeadership, leadership_for
from broker.settings import Settings
from tests.broker.conftest import _pg_admin, pg_schema, schema_url


@pytest.fixture
def pg_schema_url():
    with pg_schema() as schema:
        yield schema_url(schema)


def _wait(pred, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _fenced_write(engine, lead) -> None:
    with Session(engine) as s:
        lead.guard(s)
        s.execute(text("SELECT 1"))
        s.commit()


@pytest.mark.postgres
def test_one_leader_per_schema_and_the_other_takes_over_when_its_session_dies(pg_schema_url):
    eng = make_engine(Settings(database_url=pg_schema_url))
    a = PgLeadership(eng, poll_s=0.1, lease_s=3.0)
    b = PgLeadership(eng, poll_s=0.1, lease_s=3.0)
    changes = []
    a.start(on_change=lambda v: changes.append(("a", v)))
    b.start(on_change=lambda v: changes.append(("b", v)))
    try:
        assert a.is_leader and not b.is_leader, "the first to try wins; the second follows"
        _fenced_write(eng, a)
        with pytest.raises(NotLeader):
            _fenced_write(eng, b)
        # The leader's lock session dies (what a kill -9 or a cut connection does).
        with _pg_admin() as c:
            c.execute("SELECT pg_terminate_backend(%s)", (a._pid,))
        t0 = time.monotonic()
        assert _wait(lambda: b.is_leader, 5.0), "the follower takes over"
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(NotLeader):
            _fenced_write(eng, a)  # the old leader's next transaction is refused
        _fenced_write(eng, b)
        assert ("b", True) in changes
    finally:
        a.stop()
        b.stop()
        eng.dispose()


@pytest.mark.postgres
def test_a_stale_leaders_open_transaction_ends_before_the_new_leader_acts(pg_schema_url):
    """The new leader waits for a fenced transaction the old one began while it still led."""
    eng = make_engine(Settings(database_url=pg_schema_url))
    a = PgLeadership(eng, poll_s=0.1, lease_s=30.0)
    b = PgLeadership(eng, poll_s=0.1, lease_s=30.0)
    a.start()
    b.start()
    try:
        s = Session(eng)
        a.guard(s)
        s.execute(text("SELECT 1"))  # fenced: holds F shared until it ends
        with _pg_admin() as c:
            c.execute("SELECT pg_terminate_backend(%s)", (a._pid,))
        time.sleep(1.0)
        assert not b.is_leader, "b holds L but waits for a's transaction in flight"
        s.commit()
        s.close()
        assert _wait(lambda: b.is_leader, 5.0)
    finally:
        a.stop()
        b.stop()
        eng.dispose()


@pytest.mark.postgres
def test_brokers_on_two_schemas_lead_each_their_own(pg_schema_url):
    with pg_schema() as other:
        _two_schemas_lead_each(pg_schema_url, schema_url(other))


def _two_schemas_lead_each(url_a: str, url_b: str) -> None:
    e1 = make_engine(Settings(database_url=url_a))
    e2 = make_engine(Settings(database_url=url_b))
    a, b = PgLeadership(e1), PgLeadership(e2)
    a.start()
    b.start()
    try:
        assert a.is_leader and b.is_leader
    finally:
        a.stop()
        b.stop()
        e1.dispose()
        e2.dispose()


def test_sqlite_is_single_broker_a_second_process_is_refused(tmp_path):
    db = tmp_path / "broker.db"
    eng = make_engine(Settings(database_url=f"sqlite:///{db}"))
    lead = leadership_for(Settings(database_url=f"sqlite:///{db}"), eng)
    assert isinstance(lead, SqliteLeadership)
    lead.start()
    try:
        code = ("import sys; from pathlib import Path; from broker.services.leadership import SqliteLeadership, "
                "AnotherBroker\ntry:\n    SqliteLeadership(Path(sys.argv[1])).start()\nexcept AnotherBroker as e:\n"
                "    print(e.message); sys.exit(3)\n")
        r = subprocess.run([sys.executable, "-c", code, str(db.resolve())], capture_output=True, text=True, timeout=60)
        assert r.returncode == 3, r.stderr
        assert "SQLite is single-broker" in r.stdout
    finally:
        lead.stop()
    # Released on stop (and by the kernel when a process dies): the next broker starts.
    again = SqliteLeadership(db.resolve())
    again.start()
    again.stop()
    eng.dispose()


def test_sqlite_leadership_is_shared_within_one_process(tmp_path):
    a, b = SqliteLeadership(tmp_path / "x.db"), SqliteLeadership(tmp_path / "x.db")
    a.start()
    b.start()
    assert a.is_leader and b.is_leader
    a.stop()
    b.stop()
    assert AnotherBroker.code == "ANOTHER_BROKER"


@pytest.mark.parametrize("background,role,metric", [(True, "leader", 1.0), (False, "follower", 0.0)],
                         ids=["with periodic tasks: leader", "API only: follower"])
def test_readyz_and_metrics_report_leadership(tmp_path, background, role, metric):
    from fastapi.testclient import TestClient

    from broker.adapters.fake import FakeExecutor
    from broker.app import create_app
    from broker.db import migrate
    from broker.services.bootstrap import ensure_admin_token

    st = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'broker.db'}")
    migrate(st)
    token = ensure_admin_token(st).read_text().strip()
    app = create_app(st, executor=FakeExecutor(), start_background=background)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.get("/readyz").json()
        assert r["checks"]["leadership"] == role
        assert r["details"]["leadership"]["leader"] is (role == "leader")
        lines = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("broker_leader ")]
        assert lines == [f"broker_leader {metric}"]
