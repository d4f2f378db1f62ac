"""Telemetry rows: the sample and host-reading columns, the pure functions that turn one agent
report into DB rows and claim parameters, and report parsing. Shared by the generic ingest
(`service`) and the PostgreSQL fast path (`pg_ingest`), which import it and not each other.
"""

from __future__ import annotations

import re

from typing import Any

from pydantic import ValidationError

from agents.schema import DeviceSample, TelemetryReport
from broker.errors import Invalid

SAMPLE_COLUMNS = (
    "node_id", "gpu_index", "uuid", "ts", "util_gpu", "util_memory", "memory_used_mb", "memory_total_mb",
    "power_w", "energy_mj", "temp_gpu", "temp_memory", "sm_clock_mhz", "mem_clock_mhz", "pcie_replay",
    "ecc_uncorrectable", "ecc_correctable", "gr_active", "tensor_active", "dram_active", "xid",
    "job_id", "attempt", "project_id", "job_memory_mb",
)
JOB_INDEX, PROJECT_INDEX = SAMPLE_COLUMNS.index("job_id"), SAMPLE_COLUMNS.index("project_id")
_INT = {"gpu_index", "xid", "attempt"}
_BIGINT = {"energy_mj", "pcie_replay", "ecc_uncorrectable", "ecc_correctable"}
_TEXT = {"node_id", "uuid", "job_id", "project_id"}
# binary COPY needs the exact column types (see models.GpuSample)
SAMPLE_PG_TYPES = ["text" if c in _TEXT else "int4" if c in _INT else "int8" if c in _BIGINT else "float8"
                   for c in SAMPLE_COLUMNS]
HOST_COLUMNS = ("node_id", "ts", "cpu_percent", "load1", "mem_used_mb", "mem_total_mb", "disk_used_gb", "disk_total_gb")


def sample_row(node_id: str, s: DeviceSample) -> tuple:
    """One DB row (in SAMPLE_COLUMNS order) for one reading (pure).

    Attribution: the job whose processes hold the most GPU memory on the device owns the
    row; `job_memory_mb` is the sum over that job's processes.
    """
    job = attempt = project = None
    job_mem = None
    if s.processes:
        per_job: dict[str, float] = {}
        meta: dict[str, tuple] = {}
        for p in s.processes:
            if p.job_id:
                per_job[p.job_id] = per_job.get(p.job_id, 0.0) + (p.used_memory_mb or 0.0)
                meta.setdefault(p.job_id, (p.attempt, p.project))
        if per_job:
            job = max(per_job, key=lambda j: (per_job[j], j))
            job_mem = per_job[job]
            attempt, project = meta[job]
    g = s.gpm
    return (
        node_id, s.index, s.uuid, s.ts, s.util_gpu, s.util_memory, s.memory_used_mb, s.memory_total_mb,
        s.power_w, s.energy_mj, s.temp_gpu, s.temp_memory, s.sm_clock_mhz, s.mem_clock_mhz, s.pcie_replay,
        s.ecc_uncorrectable, s.ecc_correctable,
        g.graphics_activity if g else None, g.tensor_activity if g else None, g.dram_bw_util if g else None,
        s.xid_events[-1].xid if s.xid_events else None,
        job, attempt, project, job_mem,
    )


def claim_params(r: TelemetryReport, now: float, n: int, faults: list[str]) -> dict[str, Any]:
    """Bind parameters of the agent_state claim (shared by the generic and the PostgreSQL path)."""
    hb = r.heartbeat
    return dict(
        n=r.node_id, seq=r.seq, now=now, ver=r.agent_version[:64], started=hb.started_at, backend=hb.gpu_backend,
        cpu_only=hb.cpu_only, reason=(hb.cpu_only_reason or "")[:256], driver=(hb.driver_version or "")[:64],
        cuda=(hb.cuda_version or "")[:32], devices=hb.device_count, buffered=hb.buffered_reports,
        dropped=hb.dropped_reports, samples=n, fatal_at=now if faults else None,
        fatal_reason="; ".join(faults)[:500],
    )


def host_row(r: TelemetryReport) -> tuple | None:
    h = r.host
    if h is None:
        return None
    return (r.node_id, h.ts, h.cpu_percent, h.load1, h.mem_used_mb, h.mem_total_mb, h.disk_used_gb, h.disk_total_gb)


# A NUL or a lone surrogate can reach a JSON string only as a \u escape: PostgreSQL cannot
# store the first and UTF-8 cannot encode the second, so a report holding one is refused
# whole, on SQLite as on PostgreSQL (a scan of the raw bytes: no walk over every string).
_UNSTORABLE_ESCAPE = re.compile(rb"\\u0000"
                                rb"|\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"  # high, no low after
                                rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")  # low alone


def parse_report(body: bytes) -> TelemetryReport:
    """Validate a report from raw bytes; Invalid (422) with per-field details when it is not one."""
    if _UNSTORABLE_ESCAPE.search(body):
        raise Invalid("invalid telemetry report: a string holds a NUL character or a lone surrogate",
                      code="INVALID_REPORT", details={"fields": [{"field": "body", "type": "unstorable_character",
                                                                   "message": "NUL or lone surrogate"}]})
    try:
        return TelemetryReport.model_validate_json(body)
    except ValidationError as e:
        fields = [
            {"field": ".".join(str(p) for p in err.get("loc", ())) or "body", "message": str(err.get("msg", "")),
             "type": err.get("type", "")}
            for err in e.errors()[:20]
        ]
        first = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        raise Invalid(f"invalid telemetry report: {first}", code="INVALID_REPORT", details={"fields": fields}) from None
