"""The telemetry wiring helpers: routes mounted once, tasks registered with the clock."""

from types import SimpleNamespace

from broker.services.telemetry.tasks import install, periodic_tasks, register


class FakeTasks:
    def __init__(self):
        self.added = []

    def add_interval(self, fn, seconds, id):
        self.added.append((id, seconds, fn))


def test_install_is_idempotent(app):
    svc = install(app)
    assert install(app) is svc and app.state.telemetry is svc
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        assert c.post("/api/v1/telemetry", content=b"{}").status_code == 401  # mounted (no token)
    paths = [p for p in app.openapi()["paths"] if p.startswith("/api/v1/telemetry")]
    assert len(paths) == len(set(paths)) == 6


def test_register_passes_now_to_every_task(engine):
    calls = []
    svc = SimpleNamespace(config=None, engine=engine)
    from broker.services.telemetry.service import TelemetryConfig

    svc.config = TelemetryConfig()
    svc.check_heartbeats = lambda now: calls.append(("hb", now))
    tasks = FakeTasks()
    register(tasks, svc, clock=lambda: 1234.0)
    assert [(i, s) for i, s, _ in tasks.added] == [(n, s) for n, s, _ in periodic_tasks(svc)]
    assert [i for i, _, _ in tasks.added] == ["telemetry.heartbeats", "telemetry.rollup", "telemetry.retention"]
    tasks.added[0][2]()
    assert calls == [("hb", 1234.0)]


def test_issued_agent_token_pushes_for_its_node_only(app, engine):
    import time

    from fastapi.testclient import TestClient

    from agents.agent import encode
    from broker.services.telemetry.tasks import issue_agent_token
    from tests.broker.telemetry_builders import gpu, new_node, report

    install(app)
    node = new_node(engine)
    tok = issue_agent_token(engine, node)
    assert tok.startswith("cba_")
    with TestClient(app, headers={"Authorization": f"Bearer {tok}"}) as c:
        assert c.post("/api/v1/telemetry", content=encode(report(node, 1, [gpu(0, time.time())]))).status_code == 200
        assert c.post("/api/v1/telemetry", content=encode(report("other", 1, [gpu(0, time.time())]))).status_code == 403
