"""Budget and fair-share usage from the ledger, kept between ticks of the scheduling loop.

Why: the snapshot's usage (`snapshot.usage_from_ledger`: GPU-hours spent this month per project
and department, decayed GPU-seconds per project) was recomputed from every ledger row of the
look-back window each tick: thousands of ORM rows a tick on a busy region, growing with the
run (BENCHMARKS.md, "Scale"). A closed row never changes again (only the loop closes rows and
nothing reopens one), so its share is computed once and folded into running sums:

- spent this month: a closed row's part of the month is a constant (until the month changes:
  then everything is folded again);
- decayed usage: the folded per-project sum is kept as of one instant `t_ref` and multiplied by
  0.5 ** (elapsed / half-life) when time moves on (the decay of a sum is the sum of the decays);
- a folded row that falls out of the look-back window (ended before `lookback_start(now)`) is
  taken out of the sums again (its decayed share then, its month part is 0: the window starts
  before the month).

Open rows (and any row dated after `now`) are computed in full each tick, as before. Which rows
to fold: those seen open at the last tick and those admitted since (`watch`); every tick also
counts the closed rows of the window in the database, and a count (or GPU total) that differs
from the folded one (a row written by someone else: a restore, a test, another broker) makes
the next figures come from a full re-read. Invariant: `usage()` returns what
`usage_from_ledger(every row of the window, now, half_life_s)` returns, up to float rounding.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Iterable

from sqlmodel import Session

from broker.services import scheduling_queries as repo
from broker.services.scheduling_queries import LedgerRow
from broker.services.snapshot import lookback_start, month_start, row_usage
from quotas.fairshare import decay

Usage = tuple[dict[str, float], dict[str, float], dict[str, float]]


class LedgerFold:
    """The pure part: closed rows folded into running sums; no session, no clock."""

    def __init__(self, now: float, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self.period = month_start(now)
        self.t_ref = now  # the instant `_decayed` is expressed at
        self.max_end = float("-inf")  # latest end folded: `now` must not go back before it
        self._spent_p: dict[str, float] = defaultdict(float)
        self._spent_d: dict[str, float] = defaultdict(float)
        self._decayed: dict[str, float] = defaultdict(float)
        self._count_p: dict[str, int] = defaultdict(int)
        # (end, job id, attempt, project, department, gpus, undecayed GPU-s, month GPU-h) of each folded row
        self._heap: list[tuple[float, str, int, str, str, int, float, float]] = []
        self._keys: set[tuple[str, int]] = set()
        self.gpus = 0  # sum of gpus of the folded rows (the consistency check)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._keys

    def usable_at(self, now: float, half_life_s: float) -> bool:
        """False when the folded sums cannot be carried to `now` (month changed, clock went
        back, another half-life): fold again from scratch."""
        return (half_life_s == self.half_life_s and month_start(now) == self.period and now >= self.t_ref
                and now >= self.max_end)

    def foldable(self, row: LedgerRow, now: float) -> bool:
        """A closed row dated no later than `now`, inside the look-back window."""
        return row.ended_at is not None and lookback_start(now, self.half_life_s) <= row.ended_at <= now

    def fold(self, row: LedgerRow) -> None:
        """Add a closed row (`foldable` at `t_ref`) once; a second fold of its key is ignored."""
        if row.key in self._keys:
            return
        end = row.ended_at
        spent, acc = (0.0, 0.0) if end <= row.started_at or row.gpus <= 0 else \
            row_usage(row.gpus, row.started_at, end, self.period, self.half_life_s)
        self._keys.add(row.key)
        self.gpus += row.gpus
        self.max_end = max(self.max_end, end)
        self._count_p[row.project_id] += 1
        self._spent_p[row.project_id] += spent
        self._spent_d[row.department_id] += spent
        self._decayed[row.project_id] += decay(acc, self.t_ref - end, self.half_life_s)
        heapq.heappush(self._heap, (end, row.job_id, row.attempt, row.project_id, row.department_id, row.gpus,
                                    acc, spent))

    def advance(self, now: float) -> None:
        """Carry the sums to `now` (`usable_at(now)` holds): decay, and take out the rows that
        left the look-back window."""
        if now > self.t_ref:
            for p, v in self._decayed.items():
                self._decayed[p] = decay(v, now - self.t_ref, self.half_life_s)
            self.t_ref = now
        since = lookback_start(now, self.half_life_s)
        while self._heap and self._heap[0][0] < since:
            end, jid, att, project, dept, gpus, acc, spent = heapq.heappop(self._heap)
            self._keys.discard((jid, att))
            self.gpus -= gpus
            self._count_p[project] -= 1
            if self._count_p[project] <= 0:  # nothing left of it: exactly 0, no float residue
                del self._count_p[project]
                self._decayed.pop(project, None)
                self._spent_p.pop(project, None)
            else:
                self._decayed[project] -= decay(acc, now - end, self.half_life_s)
                self._spent_p[project] -= spent
            self._spent_d[dept] -= spent

    def usage(self, live: Iterable[LedgerRow], now: float) -> Usage:
        """The folded sums (carried to `now` by `advance`) plus the live rows (open, or dated
        after now), computed in full as `usage_from_ledger` does."""
        spent_p, spent_d, decayed = dict(self._spent_p), dict(self._spent_d), dict(self._decayed)
        for r in live:
            end = now if r.ended_at is None else min(r.ended_at, now)
            if end <= r.started_at or r.gpus <= 0:
                continue
            spent, acc = row_usage(r.gpus, r.started_at, end, self.period, self.half_life_s)
            spent_p[r.project_id] = spent_p.get(r.project_id, 0.0) + spent
            spent_d[r.department_id] = spent_d.get(r.department_id, 0.0) + spent
            decayed[r.project_id] = decayed.get(r.project_id, 0.0) + decay(acc, now - end, self.half_life_s)
        return spent_p, spent_d, decayed


class LedgerUsage:
    """`LedgerFold` fed from the database: what the scheduling loop calls each tick."""

    def __init__(self) -> None:
        self._fold: LedgerFold | None = None
        self._watch: set[tuple[str, int]] = set()  # open at the last tick, or admitted since
        self.rebuilds = 0  # full re-reads since the start (what a test looks at)

    def clear(self) -> None:
        self._fold = None
        self._watch.clear()

    def watch(self, keys: Iterable[tuple[str, int]]) -> None:
        """Ledger rows this loop just wrote (admissions): fold them once they are closed."""
        self._watch.update(keys)

    def usage(self, s: Session, now: float, half_life_s: float) -> Usage:
        """(spent GPU-hours this month per project, per department, decayed GPU-seconds per
        project) at `now`, as `usage_from_ledger` over the window's rows would say."""
        fold = self._fold
        if fold is None or not fold.usable_at(now, half_life_s):
            fold, live = self._rebuild(s, now, half_life_s)
            return fold.usage(live, now)
        fold.advance(now)
        live = list(repo.open_ledger_rows(s))
        for r in repo.ledger_rows_of(s, self._watch - {r.key for r in live}):
            if r.ended_at is None:
                live.append(r)  # opened again? (nothing does that): count it as open
            elif fold.foldable(r, now):
                fold.fold(r)
            elif r.ended_at > now:
                live.append(r)
        count, gpus = repo.closed_ledger_count(s, lookback_start(now, half_life_s), now)
        if (count, gpus) != (len(fold), fold.gpus):  # rows we did not see close: read them all
            fold, live = self._rebuild(s, now, half_life_s)
        self._watch = {r.key for r in live}
        return fold.usage(live, now)

    def _rebuild(self, s: Session, now: float, half_life_s: float) -> tuple[LedgerFold, list[LedgerRow]]:
        self.rebuilds += 1
        fold = self._fold = LedgerFold(now, half_life_s)
        live = []
        for r in repo.ledger_rows_since(s, lookback_start(now, half_life_s)):
            if fold.foldable(r, now):
                fold.fold(r)
            else:
                live.append(r)
        self._watch = {r.key for r in live}
        return fold, live
