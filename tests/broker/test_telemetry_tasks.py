"""The telemetry wiring helpers: routes mounted once, tasks registered with the clock."""

from types import SimpleNamespace

from broker.telemetry.tasks import install, periodic_tasks, register


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
    from broker.telemetry.service import TelemetryConfig

    svc.config = TelemetryConfig()
    svc.check_heartbeats = lambda now: calls.append(("hb", now))
    tasks = FakeTasks()
    register(tasks, svc, clock=lambda: 1234.0)
    assert [(i, s) for i, s, _ in tasks.added] == [(n, s) for n, s, _ in periodic_tasks(svc)]
    assert [i for i, _, _ in tasks.added] == ["telemetry.heartbeats", "telemetry.rollup", "telemetry.retention"]
    tasks.added[0][2]()
    assert calls == [("hb", 1234.0)]
