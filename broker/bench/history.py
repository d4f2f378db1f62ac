"""The history checker: what must hold after any crash, restart, failover or outage.

It reads the broker's database and the shared fake executor's record
(`broker.adapters.fake_shared`) and returns every violation it finds, as sentences (an empty
list means the history is clean). The rules:

1. every acknowledged job exists exactly once (a submit answered 201 is never lost), and no
   client key (the job's name in these tests, also its Idempotency-Key) made two jobs;
2. no attempt of a job was admitted twice (one ADMITTED transition per job and attempt);
3. the executor ran no attempt the database never admitted, created each attempt at most once
   (a launch repeated after a crash is a re-adoption, counted but harmless), and never ran two
   attempts of one job at the same time;
4. every ended attempt has exactly one closed ledger row with allocated GPU-seconds equal to
   GPUs x its duration; an open ledger row belongs to the job's current, resource-holding
   attempt, and has accrued exactly GPUs x (accrued_to - started_at) (periodic accrual of
   running attempts, `broker.services.accounting`);
5. usage and budgets equal the sum of the ledger: the spent GPU-hours a project's usage view
   reports (given as `reported_spent`) equal this month's part of its ledger rows. Compare once
   every attempt has ended: a running attempt's share grows between the two readings.

Why a checker and not assertions in each test: the same rules hold whatever was injected, so
one function states them once and every fault case ends by calling it.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.adapters.fake_shared import START_S
from broker.models import HOLDING, Attempt, Job, JobEvent, Ledger
from broker.services.snapshot import month_start

_TOL = 1e-6


@dataclass
class History:
    """What the checker saw (figures for reports) and what it found wrong."""

    jobs: int = 0
    attempts: int = 0
    launches: int = 0
    relaunches: int = 0  # launch calls for an attempt that already existed (re-adoption)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check_history(engine: Engine, executor_db: str, *, acked: Mapping[str, str], submitted: Iterable[str] = (),
                  reported_spent: Mapping[str, float] | None = None, now: float | None = None) -> History:
    """`acked`: client key -> job id for every submit answered 201; `submitted`: every key sent
    (answered or not); `reported_spent`: project -> spent GPU-hours its usage view reports."""
    h = History()
    bad = h.violations
    with Session(engine) as s:
        jobs = {j.id: j for j in s.execute(select(Job)).scalars()}
        attempts = {(a.job_id, a.number): a for a in s.execute(select(Attempt)).scalars()}
        ledger = {(r.job_id, r.attempt): r for r in s.execute(select(Ledger)).scalars()}
        admitted = Counter((e.job_id, e.attempt) for e in s.execute(
            select(JobEvent).where(JobEvent.kind == "transition", JobEvent.to_status == "ADMITTED")).scalars())
    h.jobs, h.attempts = len(jobs), len(attempts)

    # 1. acknowledged jobs, once each
    by_name = Counter(j.name for j in jobs.values())
    for key, jid in sorted(acked.items()):
        if jid not in jobs:
            bad.append(f"acknowledged job {jid} (key {key}) does not exist")
        elif jobs[jid].name != key:
            bad.append(f"acknowledged job {jid} is named {jobs[jid].name!r}, not its key {key!r}")
    for key in set(submitted) | set(acked):
        if by_name.get(key, 0) > 1:
            bad.append(f"key {key} made {by_name[key]} jobs")

    # 2. one admission per attempt
    for (jid, att), n in sorted(admitted.items()):
        if n > 1:
            bad.append(f"job {jid} attempt {att} was admitted {n} times")

    # 3. the executor's record
    ex = sqlite3.connect(executor_db)
    try:
        rows = ex.execute("SELECT job_id, attempt, launched_at, run_s, stopped_at, released_at FROM attempts").fetchall()
        created = Counter((j, a) for j, a, c in ex.execute("SELECT job_id, attempt, created FROM launches") if c)
        h.launches = sum(created.values())
        h.relaunches = ex.execute("SELECT count(*) FROM launches WHERE created = 0").fetchone()[0]
    finally:
        ex.close()
    for key, n in sorted(created.items()):
        if n > 1:
            bad.append(f"attempt {key[0]}/{key[1]} was created {n} times in the executor")
    live: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for jid, att, launched, run_s, stopped, released in rows:
        if (jid, att) not in attempts:
            bad.append(f"the executor ran {jid}/{att}, which the database never admitted")
        ends = [t for t in (stopped, released, launched + START_S + run_s if run_s is not None else None)
                if t is not None]
        live[jid].append((launched, min(ends) if ends else float("inf"), att))
    for jid, spans in live.items():
        spans.sort()
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1 - _TOL:
                bad.append(f"job {jid}: attempts {an} and {bn} were live at the same time ({b0:.3f} < {a1:.3f})")

    # 4. the ledger
    for key, a in sorted(attempts.items()):
        led = ledger.get(key)
        if a.ended_at is not None:
            if led is None:
                bad.append(f"ended attempt {key[0]}/{key[1]} has no ledger row")
            elif led.ended_at is None:
                bad.append(f"ended attempt {key[0]}/{key[1]} has an open ledger row")
            elif abs(led.allocated_gpu_s - (led.ended_at - led.started_at) * led.gpus) > 1e-3:
                bad.append(f"ledger {key[0]}/{key[1]}: allocated {led.allocated_gpu_s} != gpus x duration")
    for key, led in sorted(ledger.items()):
        if led.ended_at is None:
            job = jobs.get(key[0])
            if job is None or job.attempt != key[1] or job.status not in {st.value for st in HOLDING}:
                bad.append(f"open ledger row {key[0]}/{key[1]} belongs to no attempt holding resources")
            accrued = 0.0 if led.accrued_to is None else (led.accrued_to - led.started_at) * led.gpus
            if abs(led.allocated_gpu_s - accrued) > 1e-3:
                bad.append(f"open ledger row {key[0]}/{key[1]}: allocated {led.allocated_gpu_s} != gpus x accrued "
                           f"time ({accrued})")
        if key not in attempts:
            bad.append(f"ledger row {key[0]}/{key[1]} has no attempt")

    # 5. usage and budgets = sum of the ledger
    if reported_spent is not None:
        import time

        t = time.time() if now is None else now
        period = month_start(t)
        mine: dict[str, float] = defaultdict(float)
        for led in ledger.values():
            end = t if led.ended_at is None else min(led.ended_at, t)
            mine[led.project_id] += max(0.0, end - max(led.started_at, period)) * led.gpus / 3600.0
        for project, spent in sorted(reported_spent.items()):
            if abs(spent - mine.get(project, 0.0)) > 1e-4:
                bad.append(f"project {project}: usage reports {spent:.6f} GPU-h spent, the ledger sums to "
                           f"{mine.get(project, 0.0):.6f}")
    return h
