"""Shapes of the operations API: idle policies and flagged allocations, notification subscriptions."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from broker.schemas.base import Input


class IdlePolicyPut(Input):
    util_below_pct: float = Field(5.0, gt=0, le=100, description="every reading below this utilization, percent")
    memory_below_mib: float = Field(1024.0, ge=0, description="... and below this GPU memory used, MiB")
    window_s: float = Field(1800.0, ge=60, le=7 * 86400, description="... for this long")
    reclaim: bool = Field(False, description="preempt idle innovation work here while other jobs wait")


class IdlePolicyPublic(BaseModel):
    pool: str
    util_below_pct: float
    memory_below_mib: float
    window_s: float
    reclaim: bool
    updated_at: float


class IdlePolicyList(BaseModel):
    items: list[IdlePolicyPublic]


class IdleAllocationPublic(BaseModel):
    job_id: str
    attempt: int
    project_id: str
    pool: str
    workload_class: str
    gpus: int
    flagged_at: float
    util_max_pct: Optional[float]
    memory_max_mib: Optional[float]
    cleared_at: Optional[float]
    reclaimed_at: Optional[float]


class IdleAllocationList(BaseModel):
    items: list[IdleAllocationPublic]


class SubscriptionCreate(Input):
    events: list[str] = Field(min_length=1, max_length=16)
    channel: Literal["webhook", "email"]
    target: str = Field(min_length=3, max_length=500, description="https URL (webhook) or e-mail address")
    project: Optional[str] = Field(None, max_length=64, description="None: every project (admins and ops-viewers)")


class SubscriptionPublic(BaseModel):
    id: str
    owner: str
    project_id: Optional[str]
    events: list[str]
    channel: str
    target: str
    created_at: float


class SubscriptionList(BaseModel):
    items: list[SubscriptionPublic]
    events: dict[str, str]  # event kind -> what produces it
