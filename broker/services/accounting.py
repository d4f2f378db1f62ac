"""Accounting: complete each ended attempt's ledger row with what its GPUs really did.

The scheduling loop closes a ledger row (allocated GPU-seconds) the moment an attempt ends;
the agents' last samples for it may still be in flight (push interval 10 s, outage replay
later). So used GPU-seconds and energy are filled in by this periodic task once an attempt
has been over for `settle_s`, from the attributed raw samples (kept 7 days). Rows whose
samples never came stay with used_gpu_s 0.0 and energy unknown (None): "allocated but never
seen busy" is itself the finding.

Accrual of long-running attempts (`accrue_ledger`): an attempt's row is open (ended_at None)
while it runs. So that budgets, usage and reports see a service or a week-long job while it
runs, not only when it ends, the same periodic task moves each open row's `accrued_to` to the
last whole accrual period boundary (hourly by default, UTC) it has run past and sets
`allocated_gpu_s` to gpus x (accrued_to - started_at). When the attempt ends the scheduling loop
closes the row as before (allocated = gpus x (ended_at - started_at)), which only extends what
was accrued. Invariants (checked by `broker.bench.history`):
- every attempt keeps exactly one ledger row; an open row's allocation is gpus x (accrued_to -
  started_at) (0 before its first boundary), a closed one's gpus x its duration (the close
  replaces what was accrued: a LOST attempt charged up to when it was last seen may end before
  its accrued_to, and is not charged past that);
- accrued_to is a multiple of the accrual period.

Why one row per attempt accrued in place rather than one row per hour: an attempt's GPUs never
change while it runs, so [started_at, accrued_to or ended_at] says everything hourly rows
would, every reader of the ledger (budgets, fair share, runtime ratios, the checker) keeps its
one-row-per-attempt key, and reports split the interval at any period boundary exactly
(`broker.services.reports`).
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.models import Ledger
from broker.services.telemetry.queries import job_usage

SETTLE_S = 120.0
RAW_RETENTION_S = 7 * 24 * 3600.0
ACCRUAL_PERIOD_S = 3600.0


def accrual_boundary(now: float, period_s: float = ACCRUAL_PERIOD_S) -> float:
    """The last accrual boundary at or before `now` (UTC multiples of the period)."""
    return now - (now % period_s)


def accrue_ledger(engine: Engine, now: float, *, period_s: float = ACCRUAL_PERIOD_S) -> int:
    """Accrue every open ledger row up to the last period boundary; returns how many moved.

    One UPDATE that only touches rows still open: an attempt the scheduling loop closes at the
    same moment either is closed first (and skipped here) or is closed after (and its closing
    allocation covers what was accrued)."""
    b = accrual_boundary(now, period_s)
    with Session(engine) as s:
        res = s.execute(update(Ledger).where(
            Ledger.ended_at.is_(None), Ledger.started_at < b,
            or_(Ledger.accrued_to.is_(None), Ledger.accrued_to < b),
        ).values(accrued_to=b, allocated_gpu_s=Ledger.gpus * (b - Ledger.started_at))
            .execution_options(synchronize_session=False))
        s.commit()
        return int(res.rowcount or 0)


def run_accounting(engine: Engine, now: float, *, period_s: float = ACCRUAL_PERIOD_S) -> None:
    """The periodic accounting task: accrue running attempts, then fill settled rows' usage."""
    accrue_ledger(engine, now, period_s=period_s)
    fill_ledger_usage(engine, now)


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
