"""The telemetry periodic tasks, for the one module that registers periodic tasks.

Each entry is (name, interval_s, fn(now)); register each with max_instances=1. None of them
makes a network call; each opens its own short transactions.
"""

from __future__ import annotations

from typing import Callable

from broker.telemetry import rollup
from broker.telemetry.service import TelemetryService


def periodic_tasks(svc: TelemetryService) -> list[tuple[str, float, Callable[[float], object]]]:
    cfg = svc.config
    return [
        ("telemetry.heartbeats", max(1.0, cfg.health.heartbeat_timeout_s / 6), svc.check_heartbeats),
        ("telemetry.rollup", 60.0, lambda now: rollup.run_rollups(svc.engine, now, cfg.rollup_lateness_s)),
        ("telemetry.retention", 3600.0, lambda now: rollup.apply_retention(
            svc.engine, now, cfg.raw_retention_s, cfg.minute_retention_s, cfg.hour_retention_s)),
    ]
