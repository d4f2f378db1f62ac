"""Catalog shapes: projects, nodes and pools as every user sees them, and their lists."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class ProjectPublic(BaseModel):
    id: str
    name: str
    department: str
    department_name: str = ""
    weight: float
    budget_gpu_hours: Optional[float] = None
    allow_process_runtime: bool = Field(False, description="may run runtime 'process' jobs (host processes, "
                                        "enabled by a platform-admin)")


class NodePublic(BaseModel):
    id: str
    hostname: str
    pool: str
    gpu_model: str
    gpus: int
    cpus: float
    memory_gb: float
    state: str
    state_reason: str = ""
    last_heartbeat: Optional[float] = None
    labels: dict[str, str] = {}
    pool_source: Literal["admin", "executor"] = "executor"  # who set the pool: an admin's move or the label
    health_state: str = "ready"  # from the executor and the node agent's telemetry
    admin_state: Optional[Literal["cordoned", "draining"]] = None  # a platform-admin's cordon or drain
    runtimes: list[Literal["container", "process"]] = ["container", "process"]  # what jobs the node can run


class PoolPublic(BaseModel):
    name: str
    workload_class: str = Field(alias="class")
    lend_to_innovation: bool
    description: str = ""
    nodes: int = 0
    gpus: int = 0
    cpus: float = 0.0
    memory_gb: float = 0.0
    gpu_models: list[str] = []

    model_config = ConfigDict(populate_by_name=True)


class ProjectList(BaseModel):
    items: list[ProjectPublic]


class NodeList(BaseModel):
    items: list[NodePublic]


class PoolList(BaseModel):
    items: list[PoolPublic]
