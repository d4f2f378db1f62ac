"""Rollups (1 minute from raw, 1 hour from minutes) and retention. Periodic tasks call these.

How a bucket stays right when data arrives late (an agent replaying after an outage):
- `rollup_1m` is the watermark: every minute before it has been rolled up;
- ingest of a sample older than the watermark lowers `dirty_1m` to that sample's minute and
  bumps `dirty_gen`;
- the next run recomputes from min(watermark, dirty) and clears `dirty_1m` only if `dirty_gen`
  is unchanged (compare-and-set), so a late sample committed during a run is never forgotten.
Recomputing a range deletes its rollup rows and re-inserts them from the source rows, so a
run is idempotent and rollups stay a pure function of the raw data (see models.py).

Hours are computed from minutes, for hours whose minutes are all done.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

MINUTE, HOUR = 60, 3600
_INF = 1e18
_CHUNK_S = 6 * HOUR  # one transaction recomputes at most this much raw time
# Every run also redoes the minutes just before the watermark: an ingest that read the old
# watermark while a run was committing (so did not mark its samples dirty) lands in there.
_REWIND_S = 5 * MINUTE


def _get(s: Session, name: str) -> float | None:
    row = s.execute(text("SELECT value FROM telemetry_marks WHERE name=:n"), {"n": name}).first()
    return None if row is None else float(row[0])


def _set(s: Session, name: str, value: float) -> None:
    res = s.execute(text("UPDATE telemetry_marks SET value=:v WHERE name=:n"), {"n": name, "v": value})
    if res.rowcount == 0:
        s.execute(text("INSERT INTO telemetry_marks (name, value) VALUES (:n, :v) ON CONFLICT (name) DO NOTHING"),
                  {"n": name, "v": value})


def watermark(s: Session) -> float | None:
    """Every minute before this has been rolled up (None: rollups never ran)."""
    return _get(s, "rollup_1m")


def mark_dirty_if_late(s: Session, min_ts: float) -> None:
    """Called by ingest inside its transaction, for samples older than the watermark."""
    wm = _get(s, "rollup_1m")
    if wm is None or min_ts >= wm:
        return
    bucket = min_ts - (min_ts % MINUTE)
    _set(s, "dirty_1m", min(_get(s, "dirty_1m") or _INF, bucket))
    s.execute(text("UPDATE telemetry_marks SET value = value + 1 WHERE name='dirty_gen'"))
    if _get(s, "dirty_gen") is None:
        _set(s, "dirty_gen", 1)


def _bucket_sql(dialect: str, col: str, width: int) -> str:
    if dialect == "postgresql":
        return f"(floor({col} / {width}) * {width})"
    return f"(CAST({col} / {width} AS INTEGER) * {width})"  # ts > 0: truncation is floor


def recompute_minutes(s: Session, dialect: str, start: float, end: float) -> None:
    b = _bucket_sql(dialect, "ts", MINUTE)
    mem = "COALESCE(job_memory_mb, memory_used_mb)"
    s.execute(text("DELETE FROM gpu_rollups WHERE resolution_s=60 AND bucket >= :a AND bucket < :b"),
              {"a": start, "b": end})
    s.execute(text(f"""
        INSERT INTO gpu_rollups (resolution_s, node_id, gpu_index, bucket, job_id, project_id, samples,
            util_n, util_sum, util_max, mem_n, mem_sum, mem_max, power_n, power_sum, power_max,
            gpm_n, gr_sum, tensor_sum, dram_sum, temp_max)
        SELECT 60, node_id, gpu_index, {b}, COALESCE(job_id, ''), MAX(project_id), COUNT(*),
            COUNT(util_gpu), COALESCE(SUM(util_gpu), 0), MAX(util_gpu),
            COUNT({mem}), COALESCE(SUM({mem}), 0), MAX({mem}),
            COUNT(power_w), COALESCE(SUM(power_w), 0), MAX(power_w),
            COUNT(gr_active), COALESCE(SUM(gr_active), 0), COALESCE(SUM(tensor_active), 0),
            COALESCE(SUM(dram_active), 0), MAX(temp_gpu)
        FROM gpu_samples WHERE ts >= :a AND ts < :b
        GROUP BY node_id, gpu_index, {b}, COALESCE(job_id, '')"""), {"a": start, "b": end})


def recompute_hours(s: Session, dialect: str, start: float, end: float) -> None:
    b = _bucket_sql(dialect, "bucket", HOUR)
    s.execute(text("DELETE FROM gpu_rollups WHERE resolution_s=3600 AND bucket >= :a AND bucket < :b"),
              {"a": start, "b": end})
    s.execute(text(f"""
        INSERT INTO gpu_rollups (resolution_s, node_id, gpu_index, bucket, job_id, project_id, samples,
            util_n, util_sum, util_max, mem_n, mem_sum, mem_max, power_n, power_sum, power_max,
            gpm_n, gr_sum, tensor_sum, dram_sum, temp_max)
        SELECT 3600, node_id, gpu_index, {b}, job_id, MAX(project_id), SUM(samples),
            SUM(util_n), SUM(util_sum), MAX(util_max), SUM(mem_n), SUM(mem_sum), MAX(mem_max),
            SUM(power_n), SUM(power_sum), MAX(power_max), SUM(gpm_n), SUM(gr_sum), SUM(tensor_sum),
            SUM(dram_sum), MAX(temp_max)
        FROM gpu_rollups WHERE resolution_s=60 AND bucket >= :a AND bucket < :b
        GROUP BY node_id, gpu_index, {b}, job_id"""), {"a": start, "b": end})


def run_rollups(engine: Engine, now: float, lateness_s: float = 120.0) -> dict[str, float]:
    """Bring minute and hour rollups up to date; returns the new watermarks."""
    dialect = engine.dialect.name
    end = (now - lateness_s) - ((now - lateness_s) % MINUTE)
    with Session(engine) as s:
        wm = _get(s, "rollup_1m")
        dirty = _get(s, "dirty_1m")
        gen = _get(s, "dirty_gen")
        if wm is None:
            first = s.execute(text("SELECT MIN(ts) FROM gpu_samples")).scalar()
            wm = end if first is None else float(first) - (float(first) % MINUTE)
        start = min(wm - _REWIND_S, dirty if dirty is not None else _INF)
        hour_dirty = start - (start % HOUR)
        t = start
        while t < end:
            chunk_end = min(end, t + _CHUNK_S)
            recompute_minutes(s, dialect, t, chunk_end)
            s.commit()
            t = chunk_end
        _set(s, "rollup_1m", max(wm, end))
        if dirty is not None:
            # clear the dirty mark only if no late sample arrived while we worked
            cur_gen = _get(s, "dirty_gen")
            if cur_gen == gen:
                _set(s, "dirty_1m", _INF)
        s.commit()

        minute_wm = max(wm, end)
        hour_end = minute_wm - (minute_wm % HOUR)
        hwm = _get(s, "rollup_1h")
        if hwm is None:
            hwm = min(hour_dirty, hour_end)
        hstart = min(hwm, hour_dirty)
        if hstart < hour_end:
            recompute_hours(s, dialect, hstart, hour_end)
        _set(s, "rollup_1h", max(hwm, hour_end))
        s.commit()
    return {"rollup_1m": minute_wm, "rollup_1h": max(hwm, hour_end)}


def apply_retention(engine: Engine, now: float, raw_s: float, minute_s: float, hour_s: float) -> dict[str, int]:
    """Delete raw samples, host samples and rollups older than their retention."""
    out = {}
    with Session(engine) as s:
        for name, sql, keep in (
            ("gpu_samples", "DELETE FROM gpu_samples WHERE ts < :c", raw_s),
            ("host_samples", "DELETE FROM host_samples WHERE ts < :c", raw_s),
            ("rollups_1m", "DELETE FROM gpu_rollups WHERE resolution_s=60 AND bucket < :c", minute_s),
            ("rollups_1h", "DELETE FROM gpu_rollups WHERE resolution_s=3600 AND bucket < :c", hour_s),
        ):
            out[name] = s.execute(text(sql), {"c": now - keep}).rowcount or 0
            s.commit()
    return out
