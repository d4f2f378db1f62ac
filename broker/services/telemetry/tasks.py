"""Telemetry wiring: the router and service on the app, and the periodic tasks.

What create_app needs (two calls, see `install` and `register`):

    from broker.services.telemetry.tasks import install as install_telemetry, register as register_telemetry
    install_telemetry(app)                       # in create_app, after app.state.engine is set
    register_telemetry(tasks, app.state.telemetry)  # in lifespan, where `tasks` is built

Each task is (name, interval_s, fn(now)); `register` adds them to broker.tasks.Tasks with
`add_interval` (max_instances=1 there). None of them makes a network call; each opens its
own short transactions.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from broker.services.telemetry import rollup
from broker.services.telemetry.service import TelemetryConfig, TelemetryService


def periodic_tasks(svc: TelemetryService) -> list[tuple[str, float, Callable[[float], object]]]:
    cfg = svc.config
    return [
        ("telemetry.heartbeats", max(1.0, cfg.health.heartbeat_timeout_s / 6), svc.check_heartbeats),
        ("telemetry.rollup", 60.0, lambda now: rollup.run_rollups(svc.engine, now, cfg.rollup_lateness_s)),
        ("telemetry.retention", 3600.0, lambda now: rollup.apply_retention(
            svc.engine, now, cfg.raw_retention_s, cfg.minute_retention_s, cfg.hour_retention_s)),
    ]


def install(app: Any) -> TelemetryService:
    """Mount the telemetry routes and put the service on app.state (idempotent)."""
    from broker.api.telemetry import router

    svc = getattr(app.state, "telemetry", None)
    if svc is None:
        svc = TelemetryService(app.state.engine, TelemetryConfig.from_settings(app.state.settings))
        app.state.telemetry = svc
    if not getattr(app.state, "telemetry_routes", False):  # FastAPI includes routers lazily: mark it
        app.include_router(router)
        app.state.telemetry_routes = True
    return svc


def issue_agent_token(engine: Any, node_id: str, name: str = "") -> str:
    """A new agent token bound to `node_id` (for `broker up` and the Ray per-node agents).

    The plaintext is returned once; only its hash is stored. The token may push telemetry for
    this node and do nothing else."""
    from sqlmodel import Session

    from broker.services.bootstrap import create_token

    with Session(engine) as s:
        plain, _ = create_token(s, name=name or f"agent-{node_id}", role="agent", kind="agent", node_id=node_id)
        s.commit()
    return plain


def register(tasks: Any, svc: TelemetryService, clock: Callable[[], float] = time.time) -> None:
    """Add the telemetry tasks to a broker.tasks.Tasks (anything with add_interval(fn, seconds, id))."""
    for name, every, fn in periodic_tasks(svc):
        tasks.add_interval(lambda fn=fn: fn(clock()), every, name)
