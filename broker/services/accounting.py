"""Accounting: complete each ended attempt's ledger row with what its GPUs really did.

The scheduling loop closes a ledger row (allocated GPU-seconds) the moment an attempt ends;
the agents' last samples for it may still be in flight (push interval 10 s, outage replay
later). So used GPU-seconds and energy are filled in by this periodic task once an attempt
has been over for `settle_s`, from the attributed raw samples (kept 7 days). Rows whose
samples never came stay with used_gpu_s 0.0 and energy unknown (None): "allocated but never
seen busy" is itself the finding.
"""

from __future__ import annotations

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.models import Ledger
from broker.services.telemetry.queries import job_usage

SETTLE_S = 120.0
RAW_RETENTION_S = 7 * 24 * 3600.0


def fill_ledger_usage(engine: Engine, now: float, *, settle_s: float = SETTLE_S, limit: int = 500) -> int:
    """Fill used_gpu_s / energy_j of settled ledger rows; returns how many rows were filled."""
    with Session(engine) as s:
        rows = s.execute(select(Ledger).where(and_(
            Ledger.ended_at.is_not(None), Ledger.used_gpu_s.is_(None),
            Ledger.ended_at <= now - settle_s, Ledger.ended_at >= now - RAW_RETENTION_S,
        )).limit(limit)).scalars().all()
        keys = [(r.job_id, r.attempt) for r in rows]
    filled = 0
    for job_id, attempt in keys:  # reads outside the write transaction
        u = job_usage(engine, job_id, attempt)
        with Session(engine) as s:
            row = s.get(Ledger, (job_id, attempt))
            if row is None or row.used_gpu_s is not None:
                continue
            row.used_gpu_s = float(u["used_gpu_s"] or 0.0)
            row.energy_j = u["energy_j"]
            s.add(row)
            s.commit()
            filled += 1
    return filled
