"""Telemetry tables: raw GPU samples (short retention), 1-minute and 1-hour rollups, agent state.

Why this shape:
- `gpu_samples` is append-only and hot (one row per GPU per second per node). It has no
  foreign keys (a sample must never be refused because the node row is not there yet) and
  three indexes, one per query path: (node, gpu, ts) for node charts, (job, ts) for per-job
  use (partial: attributed rows only), (ts) for retention deletes (BRIN on PostgreSQL). Attribution is denormalised into the row (job, attempt,
  project of the process using the most memory on that GPU), so per-job queries need no join.
- `gpu_rollups` holds sums, counts and maxima, not averages, so an hour is computed exactly
  from its minutes, and a range from its buckets: avg = sum / count. One row per
  (resolution, node, gpu, bucket, job): a GPU shared by two jobs in one minute gives two rows.
  `job_id` is "" for idle or unattributed use (a NULL would defeat the unique key).
- `agent_state` is the per-node agent record: last accepted `seq` (duplicate detection on
  replay), last report time, agent self-description, and the GPU-health latch
  (`fatal_at`, `fatal_reason`) that node health reads.
- `telemetry_marks` stores named watermarks (how far rollups have run, and from where a late
  replay made them dirty).

Invariant: rollup rows for a bucket are always a pure function of the raw (or minute) rows
of that bucket; recomputing a bucket deletes and re-inserts it.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# BIGINT ids on PostgreSQL, INTEGER PRIMARY KEY (rowid alias, autoincrement) on SQLite.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class GpuSample(SQLModel, table=True):
    __tablename__ = "gpu_samples"
    __table_args__ = (
        Index("ix_gpu_samples_node_gpu_ts", "node_id", "gpu_index", "ts"),
        # only attributed rows: idle GPUs cost this index nothing
        Index("ix_gpu_samples_job_ts", "job_id", "ts", postgresql_where=text("job_id IS NOT NULL"),
              sqlite_where=text("job_id IS NOT NULL")),
        # retention scans by time; rows arrive in time order, so a BRIN index (a few pages,
        # almost free to maintain) is enough on PostgreSQL; SQLite gets a plain index
        Index("ix_gpu_samples_ts", "ts", postgresql_using="brin"),
    )

    id: Optional[int] = Field(default=None, sa_column=Column(_BigId, primary_key=True, autoincrement=True))
    node_id: str = Field(max_length=200)
    gpu_index: int
    uuid: str = Field(default="", max_length=128)
    ts: float
    util_gpu: Optional[float] = None
    util_memory: Optional[float] = None
    memory_used_mb: Optional[float] = None
    memory_total_mb: Optional[float] = None
    power_w: Optional[float] = None
    energy_mj: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    temp_gpu: Optional[float] = None
    temp_memory: Optional[float] = None
    sm_clock_mhz: Optional[float] = None
    mem_clock_mhz: Optional[float] = None
    pcie_replay: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    ecc_uncorrectable: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    ecc_correctable: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    gr_active: Optional[float] = None  # GPM graphics activity, percent
    tensor_active: Optional[float] = None
    dram_active: Optional[float] = None
    xid: Optional[int] = None  # last Xid in this reading, if any
    job_id: Optional[str] = Field(default=None, max_length=64)
    attempt: Optional[int] = None
    project_id: Optional[str] = Field(default=None, max_length=64)
    job_memory_mb: Optional[float] = None  # memory of the attributed job's processes on this GPU


class HostSampleRow(SQLModel, table=True):
    __tablename__ = "host_samples"
    __table_args__ = (Index("ix_host_samples_node_ts", "node_id", "ts"),
                      Index("ix_host_samples_ts", "ts", postgresql_using="brin"))

    id: Optional[int] = Field(default=None, sa_column=Column(_BigId, primary_key=True, autoincrement=True))
    node_id: str = Field(max_length=200)
    ts: float
    cpu_percent: Optional[float] = None
    load1: Optional[float] = None
    mem_used_mb: Optional[float] = None
    mem_total_mb: Optional[float] = None
    disk_used_gb: Optional[float] = None
    disk_total_gb: Optional[float] = None


class GpuRollup(SQLModel, table=True):
    __tablename__ = "gpu_rollups"
    __table_args__ = (
        UniqueConstraint("resolution_s", "node_id", "gpu_index", "bucket", "job_id", name="uq_gpu_rollups_key"),
        Index("ix_gpu_rollups_job", "resolution_s", "job_id", "bucket"),
        Index("ix_gpu_rollups_project", "resolution_s", "project_id", "bucket"),
        Index("ix_gpu_rollups_bucket", "resolution_s", "bucket"),
    )

    id: Optional[int] = Field(default=None, sa_column=Column(_BigId, primary_key=True, autoincrement=True))
    resolution_s: int  # 60 or 3600
    node_id: str = Field(max_length=200)
    gpu_index: int
    bucket: float  # bucket start, epoch seconds, a multiple of resolution_s
    job_id: str = Field(default="", max_length=64)
    project_id: Optional[str] = Field(default=None, max_length=64)
    samples: int = 0
    util_n: int = 0
    util_sum: float = 0.0
    util_max: Optional[float] = None
    mem_n: int = 0
    mem_sum: float = 0.0
    mem_max: Optional[float] = None
    power_n: int = 0
    power_sum: float = 0.0
    power_max: Optional[float] = None
    gpm_n: int = 0
    gr_sum: float = 0.0
    tensor_sum: float = 0.0
    dram_sum: float = 0.0
    temp_max: Optional[float] = None


class AgentState(SQLModel, table=True):
    __tablename__ = "agent_state"

    node_id: str = Field(primary_key=True, max_length=200)
    last_seq: int = Field(default=-1, sa_column=Column(BigInteger, nullable=False, default=-1))
    last_report_at: float = 0.0  # broker clock: this is the heartbeat
    agent_version: str = Field(default="", max_length=64)
    agent_started_at: float = 0.0
    gpu_backend: str = Field(default="", max_length=16)
    cpu_only: bool = False
    cpu_only_reason: str = Field(default="", max_length=256)
    driver_version: str = Field(default="", max_length=64)
    cuda_version: str = Field(default="", max_length=32)
    device_count: int = 0
    buffered_reports: int = 0
    dropped_reports: int = 0
    reports: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    samples: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    fatal_at: Optional[float] = None  # last fatal GPU condition seen (broker clock)
    fatal_reason: str = Field(default="", max_length=512)


class TelemetryMark(SQLModel, table=True):
    __tablename__ = "telemetry_marks"

    name: str = Field(primary_key=True, max_length=64)
    value: float = 0.0


TELEMETRY_TABLES = [GpuSample, HostSampleRow, GpuRollup, AgentState, TelemetryMark]
