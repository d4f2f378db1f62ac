"""Dashboard table: per-pool (and per-project) rollups of allocated, used and available GPUs.

Why a table of its own: the overview's "allocated vs used vs capacity per pool over 30 days"
would otherwise sum millions of per-GPU rollup rows (1,000 nodes x 8 GPUs x 720 hours) and
split thousands of ledger intervals per request. A periodic task on the leader
(`broker.services.dashboards_rollup`) folds each minute and hour once into a few rows per
(pool, project, bucket), and the dashboards read those.

One row per (resolution, pool, bucket, project); `project_id` is "" for the pool's own row,
which carries the capacity (GPUs in the pool's nodes when the bucket was folded) and the pool's
totals (all projects plus GPU use no job was attributed). Sums, never averages: a range is the
sum of its buckets.

Invariant: the rows of a bucket are a pure function of the GPU rollups, the ledger and the
nodes when it was folded; folding a bucket again deletes and re-inserts its rows.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

_BigId = BigInteger().with_variant(Integer(), "sqlite")


class PoolRollup(SQLModel, table=True):
    __tablename__ = "pool_rollups"
    __table_args__ = (
        UniqueConstraint("resolution_s", "pool", "bucket", "project_id", name="uq_pool_rollups_key"),
        Index("ix_pool_rollups_bucket", "resolution_s", "bucket"),
        Index("ix_pool_rollups_project", "resolution_s", "project_id", "bucket"),
    )

    id: Optional[int] = Field(default=None, sa_column=Column(_BigId, primary_key=True, autoincrement=True))
    resolution_s: int  # 60 or 3600
    pool: str = Field(max_length=64)
    bucket: float  # bucket start, epoch seconds, a multiple of resolution_s
    project_id: str = Field(default="", max_length=64)  # "": the pool's own row
    capacity_gpus: int = 0  # pool row only
    # pool row: the pool's totals; project rows: that project's part
    allocated_gpu_s: float = 0.0  # ledger: GPUs held by attempts x seconds inside the bucket
    used_gpu_s: float = 0.0  # rollups: attributed utilization x seconds
    energy_j: float = 0.0  # rollups: mean power x seconds


DASHBOARD_TABLES = [PoolRollup]
