"""Quota, pool and node administration shapes."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from broker.schemas.base import SLUG, Input

MAX_FIGURE = 1e9


class QuotaCreate(Input):
    owner_kind: Literal["department", "project"]
    owner_id: str = Field(pattern=SLUG)
    pool: str = Field(pattern=SLUG)
    gpu_model: str = Field("", max_length=128, description="'' applies to every GPU model of the pool")
    resource: Literal["gpus", "cpus", "memory_gb"] = "gpus"
    guaranteed: float = Field(0.0, ge=0, le=MAX_FIGURE)
    nominal: float = Field(0.0, ge=0, le=MAX_FIGURE)
    limit: Optional[float] = Field(None, ge=0, le=MAX_FIGURE, description="null: unlimited")


class QuotaPatch(Input):
    guaranteed: Optional[float] = Field(None, ge=0, le=MAX_FIGURE)
    nominal: Optional[float] = Field(None, ge=0, le=MAX_FIGURE)
    limit: Optional[float] = Field(None, ge=0, le=MAX_FIGURE, description="null: unlimited")


class QuotaPublic(BaseModel):
    id: int
    owner_kind: str
    owner_id: str
    pool: str
    gpu_model: str
    resource: str
    guaranteed: float
    nominal: float
    limit: Optional[float] = None
    version: int
    etag: str
    updated_at: float


class QuotaList(BaseModel):
    items: list[QuotaPublic]


class PoolPut(Input):
    workload_class: Optional[Literal["operation", "innovation"]] = None
    lend_to_innovation: Optional[bool] = None
    description: Optional[str] = Field(None, max_length=1000)


class PoolAdminPublic(BaseModel):
    name: str
    workload_class: str = Field(alias="class")
    lend_to_innovation: bool
    description: str


class NodePatch(Input):
    pool: Optional[str] = Field(None, pattern=SLUG, description="move the node to this pool; null: back to the "
                                                                "executor's label")
    state: Optional[Literal["ready", "cordoned", "draining"]] = Field(
        None, description="cordoned / draining: no new work; ready lifts an admin's cordon or drain")
    reason: Optional[str] = Field(None, max_length=500, description="why (kept with the state, audited)")


class NodeAdminPublic(BaseModel):
    id: str
    pool: str
    pool_source: Literal["admin", "executor"]
    state: str
    state_reason: str
    health_state: str
    admin_state: Optional[Literal["cordoned", "draining"]] = None
