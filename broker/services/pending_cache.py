"""The queue as the scheduling loop last read it, kept between ticks.

On a deep queue, reading every PENDING row as an ORM object and converting it for the core
every tick cost more than the cycle itself (about 1 s of CPU per tick at 10,000 pending jobs:
BENCHMARKS.md, "Scale"). A job row changes through the state machine, which bumps its
`version` (admission, cancel, requeue, priority or quota edits that go through
`jobstate`). So each tick reads only `(id, version)` of the queue and loads the rows that are
new or whose version moved; the rest come from here, detached from any session, together
with their core `Job` (converted once per version).

Two kinds of change do not bump the version and are handled here:
- the pending reason (code, message, position, estimate): written by this loop only, which
  tells the cache what it wrote (`reasons_written`);
- a few server-owned flags set elsewhere without a version bump (a service replica's
  `preemptible`): every row is re-read at least every `max_age_s`, so such a change is seen
  within that time. The whole cache is also dropped after a tick that failed, and when this
  broker was not the one scheduling for a while (another leader may have written reasons).
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from broker.db import one_of
from broker.models import Job, JobStatus

CHUNK = 500


class PendingCache:
    def __init__(self, *, max_age_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._rows: dict[str, Job] = {}
        # per cached row: (version, when loaded, queue order key): plain values, compared every
        # tick for the whole queue without touching the ORM objects' instrumented attributes
        self._meta: dict[str, tuple[int, float, tuple[float, str]]] = {}
        self._converted: dict[str, tuple[int, object]] = {}
        self.loads = 0  # rows read in full since the start (what a test or a bench looks at)

    def clear(self) -> None:
        self._rows.clear()
        self._meta.clear()
        self._converted.clear()

    def load(self, session: Session) -> list[Job]:
        """Every PENDING job in queue order (submit time, id), detached: rows unchanged since
        the last tick come from the cache, the others are read (without the columns only a
        launch reads: command, env, secret names; touching one raises)."""
        now = self.clock()
        current = session.execute(select(Job.id, Job.version).where(Job.status == JobStatus.PENDING.value)).all()
        want = {jid: v for jid, v in current}
        for jid in [j for j in self._rows if j not in want]:
            self._forget(jid)
        meta = self._meta
        oldest = now - self.max_age_s
        stale = [jid for jid, v in want.items() if (m := meta.get(jid)) is None or m[0] != v or m[1] <= oldest]
        for k in range(0, len(stale), CHUNK):
            rows = session.execute(
                select(Job).where(one_of(session, Job.id, stale[k:k + CHUNK]), Job.status == JobStatus.PENDING.value)
                .options(defer(Job.command, raiseload=True), defer(Job.env, raiseload=True),
                         defer(Job.secrets, raiseload=True))
            ).scalars().all()
            for row in rows:
                session.expunge(row)
                self._rows[row.id] = row
                meta[row.id] = (row.version, now, (row.submit_time, row.id))
                self._converted.pop(row.id, None)
            self.loads += len(rows)
        rows = self._rows
        return [rows[k[1]] for k in sorted(meta[j][2] for j in want if j in rows)]

    def converted(self, row: Job, convert: Callable[[Job], object]) -> object:
        """`convert(row)`, computed once per version of the row."""
        got = self._converted.get(row.id)
        if got is not None and got[0] == row.version:
            return got[1]
        value = convert(row)
        self._converted[row.id] = (row.version, value)
        return value

    def reasons_written(self, reasons: Sequence[Mapping]) -> None:
        """What `jobstate.set_pending_reasons` just wrote (the same defaults), so the cached
        rows say it too."""
        for r in reasons:
            row = self._rows.get(r["job_id"])
            if row is None:
                continue
            for attr, value in (("pending_code", r["code"]), ("pending_message", r.get("message", "")),
                                ("pending_details", dict(r.get("details") or {})),
                                ("queue_position", r.get("queue_position")),
                                ("estimated_start", r.get("estimated_start"))):
                set_committed_value(row, attr, value)

    def left_queue(self, job_id: str) -> None:
        """The job was admitted (or otherwise moved on) by this loop."""
        self._forget(job_id)

    def _forget(self, jid: str) -> None:
        self._rows.pop(jid, None)
        self._meta.pop(jid, None)
        self._converted.pop(jid, None)

