"""The loop's ledger usage kept between ticks (`ledger_usage`) equals the full recompute
(`snapshot.usage_from_ledger` over every row of the look-back window), tick after tick: rows
opening, closing (some dated back, as a lost attempt is), leaving the window, a month turning,
and rows written behind the loop's back (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlmodel import Session, delete

from broker.models import Job, Ledger
from broker.services.ledger_usage import LedgerFold, LedgerUsage
from broker.services.scheduling_queries import LedgerRow
from broker.services.snapshot import lookback_start, usage_from_ledger

MONTH = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp()


def full(rows, now, half_life_s):
    """The reference: every row of the window, as `ledger_since` + `usage_from_ledger` did."""
    since = lookback_start(now, half_life_s)
    return usage_from_ledger([r for r in rows if r.ended_at is None or r.ended_at >= since], now, half_life_s)


def same(got, want):
    for g, w in zip(got, want):
        keys = {k for k in set(g) | set(w) if abs(g.get(k, 0.0)) > 1e-12 or abs(w.get(k, 0.0)) > 1e-12}
        assert {k: g.get(k, 0.0) for k in keys} == pytest.approx({k: w.get(k, 0.0) for k in keys}, rel=1e-9, abs=1e-9)


def simulate(seed: int, start: float, half_life_s: float, ticks: int, step: float):
    """(rows as they stand, now) after each tick of a random open/close history."""
    rng = random.Random(seed)
    rows: dict[tuple[str, int], LedgerRow] = {}
    now = start
    # history from before the run (and before the month): folded at the first tick
    for i in range(20):
        s0 = start - rng.uniform(0, 12 * half_life_s)
        rows[(f"old{i}", 1)] = LedgerRow(f"old{i}", 1, f"p{i % 3}", f"d{i % 2}", rng.choice([0, 1, 4]), s0,
                                         s0 + rng.uniform(0, 2 * half_life_s))
    n = 0
    for _ in range(ticks):
        now += rng.uniform(0.2, step)
        for key, r in list(rows.items()):
            if r.ended_at is None and rng.random() < 0.3:  # closes; a lost one dated back
                end = max(r.started_at, now - (rng.uniform(0, 3 * step) if rng.random() < 0.2 else 0.0))
                rows[key] = r._replace(ended_at=end)
        opened = []
        for _ in range(rng.randint(0, 4)):
            n += 1
            rows[(f"j{n}", 1)] = LedgerRow(f"j{n}", 1, f"p{n % 4}", f"d{n % 2}", rng.choice([1, 2, 8]), now, None)
            opened.append((f"j{n}", 1))
        yield dict(rows), now, opened


class Table:
    """`LedgerUsage`'s queries answered from a dict instead of a database (the pure test)."""

    def __init__(self) -> None:
        self.rows: dict = {}

    def open_ledger_rows(self, s):
        return [r for r in self.rows.values() if r.ended_at is None]

    def ledger_rows_of(self, s, keys):
        return [self.rows[k] for k in keys if k in self.rows]

    def ledger_rows_since(self, s, since):
        return [r for r in self.rows.values() if r.ended_at is None or r.ended_at >= since]

    def closed_ledger_count(self, s, since, until):
        closed = [r for r in self.rows.values() if r.ended_at is not None and since <= r.ended_at <= until]
        return len(closed), sum(r.gpus for r in closed)


CASES = {
    # name: (start, half-life, ticks, seconds per tick at most)
    "mid-month, a day's half-life": (MONTH + 20 * 86400, 86400.0, 60, 600.0),
    "window moving within the month's first hours (rows leave it)": (MONTH + 30.0, 10.0, 80, 3.0),
    "the month turns": (MONTH - 50.0, 30.0, 60, 3.0),
    "no decay (infinite half-life)": (MONTH + 5 * 86400, float("inf"), 30, 60.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_running_sums_equal_the_full_recompute_tick_after_tick(monkeypatch, name):
    from broker.services import ledger_usage

    start, half_life, ticks, step = CASES[name]
    table = Table()
    for fn in ("open_ledger_rows", "ledger_rows_of", "ledger_rows_since", "closed_ledger_count"):
        monkeypatch.setattr(ledger_usage.repo, fn, getattr(table, fn))
    usage = LedgerUsage()
    for seed in range(3):
        usage.clear()
        for rows, now, opened in simulate(seed, start, half_life, ticks, step):
            table.rows = rows
            same(usage.usage(None, now, half_life), full(rows.values(), now, half_life))
            usage.watch(opened)
    assert usage.rebuilds <= 3 + 3  # one per seed, and one per turn of the month at most


def test_a_row_written_behind_the_loops_back_is_seen_through_the_count(monkeypatch):
    from broker.services import ledger_usage

    table = Table()
    for fn in ("open_ledger_rows", "ledger_rows_of", "ledger_rows_since", "closed_ledger_count"):
        monkeypatch.setattr(ledger_usage.repo, fn, getattr(table, fn))
    now = MONTH + 86400
    table.rows = {("a", 1): LedgerRow("a", 1, "p", "d", 2, now - 100, now - 50)}
    usage = LedgerUsage()
    same(usage.usage(None, now, 3600.0), full(table.rows.values(), now, 3600.0))
    table.rows[("b", 1)] = LedgerRow("b", 1, "p", "d", 4, now - 90, now - 10)  # closed, never watched
    same(usage.usage(None, now + 1, 3600.0), full(table.rows.values(), now + 1, 3600.0))
    assert usage.rebuilds == 2


def test_a_fold_decays_as_the_rows_would_each():
    now = MONTH + 1000.0
    rows = [LedgerRow("a", 1, "p", "d", 3, now - 500, now - 100), LedgerRow("b", 1, "p", "d", 1, now - 50, now)]
    fold = LedgerFold(now, 300.0)
    for r in rows:
        fold.fold(r)
    fold.fold(rows[0])  # twice: counted once
    for later in (now, now + 10, now + 1000):
        fold.advance(later)
        same(fold.usage([], later), usage_from_ledger(rows, later, 300.0))


def test_the_database_queries_feed_the_same_figures(engine):
    """On SQLite and PostgreSQL: open rows, closes seen through the watch set, a row closed
    behind the loop's back, a row deleted."""
    from tests.broker.test_jobstate import make_job

    now = 1_790_000_000.0
    with Session(engine, expire_on_commit=False) as s:
        jobs = [make_job(s) for _ in range(4)]
        s.commit()
    ids = [j.id for j in jobs]
    try:
        def put(*rows):
            with Session(engine) as s:
                for jid, gpus, start, end in rows:
                    s.merge(Ledger(job_id=jid, attempt=1, project_id="ouh-liver", department_id="ouh", gpus=gpus,
                                   started_at=start, ended_at=end))
                s.commit()

        def check(at):
            with Session(engine) as s:
                got = usage.usage(s, at, 600.0)
                want = full([LedgerRow(r.job_id, r.attempt, r.project_id, r.department_id, r.gpus, r.started_at,
                                       r.ended_at) for r in s.query(Ledger).all()], at, 600.0)
            same(got, want)

        usage = LedgerUsage()
        put((ids[0], 2, now - 300, now - 100), (ids[1], 1, now - 50, None))
        check(now)
        put((ids[2], 4, now + 1, None))
        usage.watch([(ids[2], 1)])
        check(now + 5)
        put((ids[1], 1, now - 50, now + 6), (ids[2], 4, now + 1, now + 8))  # both close
        check(now + 10)
        assert usage.rebuilds == 1
        put((ids[3], 8, now + 2, now + 9))  # closed behind the loop's back
        check(now + 11)
        assert usage.rebuilds == 2
        with Session(engine) as s:
            s.exec(delete(Ledger).where(Ledger.job_id == ids[0]))
            s.commit()
        check(now + 12)
        assert usage.rebuilds == 3
    finally:
        with Session(engine) as s:
            s.exec(delete(Ledger).where(Ledger.job_id.in_(ids)))
            s.commit()
