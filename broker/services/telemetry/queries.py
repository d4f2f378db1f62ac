"""Telemetry reads: series per node, GPU, job and project over a time range; job summaries.

Resolution: "raw" reads gpu_samples, "1m"/"1h" read gpu_rollups, "auto" picks by span (raw up
to 6 h, minutes up to 7 days, hours beyond). Each resolution has a maximum span so that one
request cannot ask for millions of rows; beyond it the answer is 422 RANGE_TOO_LARGE.
Rollup rows are summed over jobs within a (GPU, bucket) for node views, so a GPU shared by
two jobs shows once. Averages are sum / count of the non-null readings.

Rollups lag real time by the rollup lateness (about 2 minutes); raw data is complete.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.errors import Invalid

RESOLUTIONS = {"raw": 0, "1m": 60, "1h": 3600}
MAX_SPAN_S = {"raw": 24 * 3600.0, "1m": 31 * 86400.0, "1h": 5 * 366 * 86400.0}
MAX_ROWS = 100_000

RAW_FIELDS = ("util_gpu", "util_memory", "memory_used_mb", "memory_total_mb", "power_w", "energy_mj", "temp_gpu",
              "temp_memory", "sm_clock_mhz", "mem_clock_mhz", "gr_active", "tensor_active", "dram_active", "xid",
              "job_id", "attempt", "project_id", "job_memory_mb")


def pick_resolution(resolution: str, start: float, end: float) -> str:
    if end <= start:
        raise Invalid("end must be after start", code="BAD_RANGE", details={"start": start, "end": end})
    if resolution == "auto":
        span = end - start
        return "raw" if span <= 6 * 3600 else "1m" if span <= 7 * 86400 else "1h"
    if resolution not in RESOLUTIONS:
        raise Invalid(f"resolution must be one of auto, raw, 1m, 1h; got {resolution!r}", code="BAD_RESOLUTION")
    if end - start > MAX_SPAN_S[resolution]:
        raise Invalid(f"a {resolution} query may span at most {int(MAX_SPAN_S[resolution])} s",
                      code="RANGE_TOO_LARGE", details={"max_span_s": MAX_SPAN_S[resolution]})
    return resolution


def _avg(sum_col: str, n_col: str) -> str:
    return f"CASE WHEN SUM({n_col}) > 0 THEN SUM({sum_col}) / SUM({n_col}) END"


_ROLLUP_SELECT = (f"SUM(samples) AS samples, {_avg('util_sum', 'util_n')} AS util_avg, MAX(util_max) AS util_max, "
                  f"{_avg('mem_sum', 'mem_n')} AS mem_avg, MAX(mem_max) AS mem_max, "
                  f"{_avg('power_sum', 'power_n')} AS power_avg, MAX(power_max) AS power_max, "
                  f"{_avg('gr_sum', 'gpm_n')} AS gr_active_avg, {_avg('tensor_sum', 'gpm_n')} AS tensor_active_avg, "
                  f"{_avg('dram_sum', 'gpm_n')} AS dram_active_avg, MAX(temp_max) AS temp_max")


def _rows(s: Session, sql: str, params: dict) -> tuple[list[dict[str, Any]], bool]:
    res = s.execute(text(sql + f" LIMIT {MAX_ROWS + 1}"), params).mappings().all()
    return [dict(r) for r in res[:MAX_ROWS]], len(res) > MAX_ROWS


def node_series(engine: Engine, node_id: str, start: float, end: float, resolution: str = "auto",
                gpu: int | None = None) -> dict[str, Any]:
    res = pick_resolution(resolution, start, end)
    params: dict[str, Any] = {"n": node_id, "a": start, "b": end, "g": gpu}
    gpu_filter = "" if gpu is None else " AND gpu_index = :g"
    with Session(engine) as s:
        if res == "raw":
            sql = (f"SELECT gpu_index AS gpu, ts, {', '.join(RAW_FIELDS)} FROM gpu_samples "
                   f"WHERE node_id = :n AND ts >= :a AND ts < :b{gpu_filter} ORDER BY ts, gpu_index")
        else:
            params["r"] = RESOLUTIONS[res]
            sql = (f"SELECT gpu_index AS gpu, bucket AS ts, {_ROLLUP_SELECT} FROM gpu_rollups "
                   f"WHERE resolution_s = :r AND node_id = :n AND bucket >= :a AND bucket < :b{gpu_filter} "
                   f"GROUP BY gpu_index, bucket ORDER BY bucket, gpu_index")
        points, truncated = _rows(s, sql, params)
    return {"node_id": node_id, "resolution": res, "start": start, "end": end, "points": points,
            "truncated": truncated}


def job_series(engine: Engine, job_id: str, start: float, end: float, resolution: str = "auto") -> dict[str, Any]:
    res = pick_resolution(resolution, start, end)
    params: dict[str, Any] = {"j": job_id, "a": start, "b": end}
    with Session(engine) as s:
        if res == "raw":
            sql = ("SELECT node_id, gpu_index AS gpu, ts, attempt, util_gpu, memory_used_mb, job_memory_mb, power_w, "
                   "gr_active, tensor_active, dram_active FROM gpu_samples "
                   "WHERE job_id = :j AND ts >= :a AND ts < :b ORDER BY ts, node_id, gpu_index")
        else:
            params["r"] = RESOLUTIONS[res]
            sql = (f"SELECT node_id, gpu_index AS gpu, bucket AS ts, {_ROLLUP_SELECT} FROM gpu_rollups "
                   f"WHERE resolution_s = :r AND job_id = :j AND bucket >= :a AND bucket < :b "
                   f"GROUP BY node_id, gpu_index, bucket ORDER BY bucket, node_id, gpu_index")
        points, truncated = _rows(s, sql, params)
    return {"job_id": job_id, "resolution": res, "start": start, "end": end, "points": points, "truncated": truncated}


def project_series(engine: Engine, project_id: str, start: float, end: float, resolution: str = "auto") -> dict[str, Any]:
    """Per bucket: how many GPUs the project's jobs used and how busy they were (rollups only)."""
    res = pick_resolution(resolution, start, end)
    if res == "raw":
        res = "1m"  # project views aggregate over GPUs: minutes are the finest useful grain
        if end - start > MAX_SPAN_S["1m"]:
            res = "1h"
    params = {"p": project_id, "a": start, "b": end, "r": RESOLUTIONS[res]}
    with Session(engine) as s:
        sql = (f"SELECT bucket AS ts, COUNT(DISTINCT node_id || ':' || CAST(gpu_index AS VARCHAR(8))) AS gpus, "
               f"{_ROLLUP_SELECT} FROM gpu_rollups WHERE resolution_s = :r AND project_id = :p "
               f"AND bucket >= :a AND bucket < :b GROUP BY bucket ORDER BY bucket")
        points, truncated = _rows(s, sql, params)
    return {"project_id": project_id, "resolution": res, "start": start, "end": end, "points": points,
            "truncated": truncated}


def job_usage(engine: Engine, job_id: str, attempt: int | None = None) -> dict[str, Any]:
    """Per-job GPU utilization and memory, average and peak, from attributed samples.

    Raw samples first (exact); when they have aged out, the minute rollups (same averages,
    peaks of the minute maxima). Memory is the job's own processes' memory where the agent
    could attribute it, the GPU's used memory otherwise. `energy_j` and `used_gpu_s` (for the
    ledger) come from raw samples only, and are None once those have aged out.
    """
    mem = "COALESCE(job_memory_mb, memory_used_mb)"
    att = "" if attempt is None else " AND attempt = :t"
    with Session(engine) as s:
        row = s.execute(text(
            f"SELECT COUNT(*) AS samples, AVG(util_gpu) AS util_avg, MAX(util_gpu) AS util_max, AVG({mem}) AS mem_avg, "
            f"MAX({mem}) AS mem_max, AVG(tensor_active) AS tensor_active_avg, MIN(ts) AS first_ts, MAX(ts) AS last_ts "
            f"FROM gpu_samples WHERE job_id = :j{att}"), {"j": job_id, "t": attempt}).mappings().one()
        source = "raw"
        out = dict(row)
        if not out["samples"] and attempt is None:
            out = dict(s.execute(text(
                f"SELECT SUM(samples) AS samples, {_avg('util_sum', 'util_n')} AS util_avg, MAX(util_max) AS util_max, "
                f"{_avg('mem_sum', 'mem_n')} AS mem_avg, MAX(mem_max) AS mem_max, "
                f"{_avg('tensor_sum', 'gpm_n')} AS tensor_active_avg, MIN(bucket) AS first_ts, MAX(bucket) AS last_ts "
                "FROM gpu_rollups WHERE resolution_s = 60 AND job_id = :j"), {"j": job_id}).mappings().one())
            source = "1m"
        per_gpu = s.execute(text(
            f"SELECT MAX(energy_mj) - MIN(energy_mj), AVG(util_gpu), MAX(ts) - MIN(ts), COUNT(*) FROM gpu_samples "
            f"WHERE job_id = :j{att} GROUP BY node_id, gpu_index"), {"j": job_id, "t": attempt}).all()
    gpus = len(per_gpu)
    # energy: the NVML total-energy counter's rise over the job's readings, per GPU, summed;
    # used GPU-seconds: average utilization x time spanned, per GPU (one reading ~ one interval)
    energy = [r[0] for r in per_gpu if r[0] is not None]
    used = [(r[1] / 100.0) * (r[2] * r[3] / max(1, r[3] - 1)) for r in per_gpu if r[1] is not None and r[3]]
    samples = int(out["samples"] or 0)
    return {
        "job_id": job_id,
        "attempt": attempt,
        "source": source if samples else None,
        "samples": samples,
        "gpus": int(gpus or 0),
        "gpu_util_avg": _f(out["util_avg"]),
        "gpu_util_peak": _f(out["util_max"]),
        "memory_used_mb_avg": _f(out["mem_avg"]),
        "memory_used_mb_peak": _f(out["mem_max"]),
        "tensor_active_avg": _f(out["tensor_active_avg"]),
        "first_ts": _f(out["first_ts"]),
        "last_ts": _f(out["last_ts"]),
        "energy_j": round(sum(energy) / 1000.0, 3) if energy else None,
        "used_gpu_s": round(sum(used), 3) if used else None,
    }


def nodes_health(engine: Engine) -> list[dict[str, Any]]:
    """Every node with its state and, where an agent reports, what the agent says."""
    with Session(engine) as s:
        rows = s.execute(text(
            "SELECT n.id AS node_id, n.pool, n.state, n.state_reason, n.last_heartbeat, a.agent_version, "
            "a.gpu_backend, a.cpu_only, a.cpu_only_reason, a.driver_version, a.cuda_version, a.device_count, "
            "a.buffered_reports, a.dropped_reports, a.reports, a.samples, a.fatal_at, a.fatal_reason "
            "FROM nodes n LEFT JOIN agent_state a ON a.node_id = n.id ORDER BY n.pool, n.id")).mappings().all()
    out = []
    for r in rows:
        d = dict(r)
        d["cpu_only"] = bool(d["cpu_only"]) if d["cpu_only"] is not None else None
        d["has_agent"] = d["agent_version"] is not None
        out.append(d)
    return out


def _f(v: Any) -> float | None:
    return None if v is None else float(v)
