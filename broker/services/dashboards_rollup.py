"""The pool-rollup fold: per (pool, project, minute / hour) allocated, used and available GPUs.

`run_pool_rollups(engine, now)` is a periodic task (leader only, every 60 s). Each run folds
the buckets from its watermark (`pool_rollup_1m` / `pool_rollup_1h` in `telemetry_marks`),
rewound a little, up to where the GPU rollups are complete:
- minutes up to `rollup_1m` (the minute rollups' watermark; without telemetry, now - 2 min);
- hours up to `rollup_1h` (without telemetry, the last whole hour).
The rewind (10 minutes, 2 hours) re-folds the recent buckets every run, so late telemetry and
attempts that ended since (their ledger row closed) land in the buckets they belong to. What
changes further back is not re-folded: a ledger row closed at a time more than 10 minutes (2
hours for the hour rows) before the run that sees it (a LOST attempt charged up to when its
worker was last seen, after a broker outage) keeps its allocation in the minutes between. A
first run folds at most the last day of minutes and 31 days of hours.

Per bucket and pool (`fold`):
- allocated: the ledger, exactly as the reports count it: each attempt's GPUs x the seconds of
  [started_at, ended_at) inside the bucket (an open attempt up to the end of the fold range);
- used and energy: the GPU rollups at the same resolution, split between the jobs that shared
  a GPU in proportion to their samples (the reports' rule, `reports_queries.usage`): used =
  sum(util) / 100 x seconds per sample, energy = sum(power) x seconds per sample; use no job
  was attributed goes to the pool's own row (project "");
- capacity: the GPUs of the pool's nodes at fold time (the node table keeps no history).

The pool's own row (project "") holds the pool's totals (every project's part plus use no job
was attributed), so the overview reads one row per pool and bucket; the projects page reads the
project rows.

Retention: minute rows older than 8 days and hour rows older than 400 days are deleted.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

MINUTE, HOUR, DAY = 60, 3600, 86400
REWIND_S = {MINUTE: 10 * MINUTE, HOUR: 2 * HOUR}
FIRST_RUN_S = {MINUTE: DAY, HOUR: 31 * DAY}
CHUNK_S = {MINUTE: 6 * HOUR, HOUR: 7 * DAY}
KEEP_S = {MINUTE: 8 * DAY, HOUR: 400 * DAY}
MARK = {MINUTE: "pool_rollup_1m", HOUR: "pool_rollup_1h"}
SOURCE_MARK = {MINUTE: "rollup_1m", HOUR: "rollup_1h"}
LATENESS_S = 120.0

_COLS = ("resolution_s", "pool", "bucket", "project_id", "capacity_gpus", "allocated_gpu_s", "used_gpu_s", "energy_j")


def run_pool_rollups(engine: Engine, now: float) -> dict[str, float]:
    """Fold minutes and hours up to date; returns the new watermarks."""
    out = {}
    for res in (MINUTE, HOUR):
        with Session(engine) as s:
            mark = _mark(s, MARK[res])
            src = _mark(s, SOURCE_MARK[res])
        end = _floor(now - (LATENESS_S if res == MINUTE else 0.0), res)
        if src is not None:
            end = min(end, _floor(src, res))
        start = end - FIRST_RUN_S[res] if mark is None else min(mark, end) - REWIND_S[res]
        t = start
        while t < end:
            stop = min(end, t + CHUNK_S[res])
            fold(engine, res, t, stop, now=now)
            t = stop
        with Session(engine) as s:
            _set_mark(s, MARK[res], max(end, mark or end))
            s.execute(text("DELETE FROM pool_rollups WHERE resolution_s = :r AND bucket < :c"),
                      {"r": res, "c": now - KEEP_S[res]})
            s.commit()
        out[MARK[res]] = max(end, mark or end)
    return out


def fold(engine: Engine, res: int, start: float, end: float, *, now: float) -> int:
    """Recompute the pool rollups of the buckets in [start, end) in one transaction; returns
    the rows written. `start` and `end` are multiples of `res`."""
    cells: dict[tuple[str, float, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    with Session(engine) as s:
        capacity = {pool: int(g or 0) for pool, g in s.execute(
            text("SELECT pool, SUM(gpus) FROM nodes GROUP BY pool")).all()}
        for pool in s.execute(text("SELECT name FROM pools")).scalars():
            capacity.setdefault(pool, 0)
        for pool, project, bucket, util_x, power_x in _use(s, res, start, end):
            c = cells[(pool, float(bucket), project or "")]
            c[2] += float(util_x or 0.0) / 100.0 * res
            c[3] += float(power_x or 0.0) * res
        for pool, project, gpus, a, b in _ledger(s, start, end):
            for bucket, secs in _overlaps(max(a, start), min(b if b is not None else end, end), res):
                cells[(pool, bucket, project)][1] += gpus * secs
        totals: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        for (pool, bucket, project), c in cells.items():
            if project:
                tot = totals[(pool, bucket)]
                for k in (1, 2, 3):
                    tot[k] += c[k]
        t = start
        while t < end:
            for pool, cap in capacity.items():
                own = cells[(pool, float(t), "")]  # unattributed use so far: add the projects' parts
                tot = totals.get((pool, float(t)), (0, 0.0, 0.0, 0.0))
                own[0] = cap
                for k in (1, 2, 3):
                    own[k] += tot[k]
            t += res
        s.execute(text("DELETE FROM pool_rollups WHERE resolution_s = :r AND bucket >= :a AND bucket < :b"),
                  {"r": res, "a": start, "b": end})
        rows = [{"resolution_s": res, "pool": pool, "bucket": bucket, "project_id": project, "capacity_gpus": int(c[0]),
                 "allocated_gpu_s": c[1], "used_gpu_s": c[2], "energy_j": c[3]}
                for (pool, bucket, project), c in cells.items()]
        if rows:
            s.execute(text(f"INSERT INTO pool_rollups ({', '.join(_COLS)}) VALUES "
                           f"({', '.join(':' + c for c in _COLS)})"), rows)
        s.commit()
    return len(rows)


def _use(s: Session, res: int, start: float, end: float):
    """(pool, project, bucket, sum(util) per GPU-sample share, sum(power) per share) of the GPU
    rollups in [start, end): each row's share of its GPU's bucket is its samples / all samples."""
    return s.execute(text(
        "SELECT n.pool, COALESCE(r.project_id, ''), r.bucket, SUM(r.util_sum / t.n), SUM(r.power_sum / t.n) "
        "FROM gpu_rollups r JOIN (SELECT node_id, gpu_index, bucket, CAST(SUM(samples) AS FLOAT) AS n "
        "FROM gpu_rollups WHERE resolution_s = :r AND bucket >= :a AND bucket < :b "
        "GROUP BY node_id, gpu_index, bucket) t "
        "ON t.node_id = r.node_id AND t.gpu_index = r.gpu_index AND t.bucket = r.bucket "
        "JOIN nodes n ON n.id = r.node_id "
        "WHERE r.resolution_s = :r AND r.bucket >= :a AND r.bucket < :b AND t.n > 0 "
        "GROUP BY n.pool, COALESCE(r.project_id, ''), r.bucket"), {"r": res, "a": start, "b": end}).all()


def _ledger(s: Session, start: float, end: float):
    """(pool, project, gpus, started_at, ended_at or None) of the attempts overlapping [start, end)."""
    return s.execute(text(
        "SELECT pool, project_id, gpus, started_at, ended_at FROM ledger "
        "WHERE started_at < :b AND (ended_at IS NULL OR ended_at > :a) AND gpus > 0"),
        {"a": start, "b": end}).all()


def _overlaps(a: float, b: float, res: int) -> Iterable[tuple[float, float]]:
    """(bucket, seconds of [a, b) inside it) for each bucket of width `res` it touches."""
    t = a
    while t < b:
        bucket = _floor(t, res)
        stop = min(b, bucket + res)
        yield float(bucket), stop - t
        t = stop


def _floor(t: float, res: int) -> float:
    return float(t - (t % res))


def _mark(s: Session, name: str) -> float | None:
    row = s.execute(text("SELECT value FROM telemetry_marks WHERE name = :n"), {"n": name}).first()
    return None if row is None else float(row[0])


def _set_mark(s: Session, name: str, value: float) -> None:
    if s.execute(text("UPDATE telemetry_marks SET value = :v WHERE name = :n"), {"n": name, "v": value}).rowcount == 0:
        s.execute(text("INSERT INTO telemetry_marks (name, value) VALUES (:n, :v)"), {"n": name, "v": value})
