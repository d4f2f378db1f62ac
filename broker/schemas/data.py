"""Shapes of secrets and datasets (`/api/v1/projects/{id}/secrets`, `/api/v1/datasets`).

A secret's value goes in (`SecretPut`) and never comes out: `SecretPublic` has no value field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from broker.schemas.base import SLUG, Input

DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
ABS_PATH = r"^/[A-Za-z0-9._/+@=-]{0,1023}$"  # no spaces, no shell or option characters


class SecretPut(Input):
    value: str = Field(min_length=1, max_length=64 * 1024, description="the secret; write-only")


class SecretVersionPublic(BaseModel):
    version: int
    created_at: float
    created_by: str = ""


class SecretPublic(BaseModel):
    project: str
    name: str
    version: int
    created_at: float
    updated_at: float
    versions: list[SecretVersionPublic]


class SecretList(BaseModel):
    items: list[SecretPublic]


class DatasetCreate(Input):
    name: str = Field(pattern=DATASET_NAME)
    description: str = Field("", max_length=2000)
    department: str = Field(pattern=SLUG, description="the owning department")
    path: str = Field(pattern=ABS_PATH, description="absolute path of the data on the nodes that hold it")
    shared: bool = Field(False, description="the path exists on every node (a shared filesystem)")
    nodes: list[Annotated[str, Field(pattern=NODE_NAME)]] = Field(default_factory=list, max_length=256,
                                                                  description="nodes that hold it")
    pools: list[Annotated[str, Field(pattern=SLUG)]] = Field(default_factory=list, max_length=64,
                                                             description="pools whose nodes all hold it")
    writable: bool = Field(False, description="may a read-write grant mount it writable")
    retention: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _where(self) -> "DatasetCreate":
        if ".." in self.path.split("/"):
            raise ValueError("path must not contain '..'")
        if not self.shared and not self.nodes and not self.pools:
            raise ValueError("say where the dataset lives: shared=true, or nodes / pools")
        return self


class DatasetPublic(BaseModel):
    id: str
    name: str
    description: str
    department: str
    path: str
    shared: bool
    nodes: list[str]
    pools: list[str]
    writable: bool
    retention: str
    created_at: float
    created_by: str = ""


class DatasetList(BaseModel):
    items: list[DatasetPublic]


class DatasetGrantPut(Input):
    mode: Literal["ro", "rw"] = "ro"
    allow_process: bool = Field(False, description="runtime 'process' jobs may mount it (platform-admin only)")


class DatasetGrantPublic(BaseModel):
    dataset: str
    project: str
    mode: str
    allow_process: bool
    created_at: float


class DatasetAccessPublic(BaseModel):
    job: str
    attempt: int
    project: str
    mode: str
    path: str
    at: float


class DatasetAccessList(BaseModel):
    items: list[DatasetAccessPublic]


class MountIn(Input):
    dataset: str = Field(pattern=DATASET_NAME, description="dataset name or id")
    path: str = Field(pattern=ABS_PATH, description="where the job sees it")
    mode: Literal["ro", "rw"] = "ro"

    @model_validator(mode="after")
    def _path(self) -> "MountIn":
        if ".." in self.path.split("/") or self.path in ("/", "/proc", "/sys", "/dev", "/run/secrets"):
            raise ValueError(f"mount path {self.path!r} is not allowed")
        return self


