"""Job shapes: the submit body (`JobCreate`), a job, its attempts, placements and events.

Input models forbid unknown fields (`extra="forbid"`): a body that names a server-owned field
(status, node, gpu ids, attempt...) or a typo is refused with 422 instead of being silently
ignored. Limits on command and env are part of the schema so that OpenAPI documents them.

Output models describe what the routes return; the hot submit path builds the same shape as
a plain dict (`broker.services.views`) and tests check it validates against `JobPublic`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.schemas.base import IMAGE, NAME, SLUG, Input
from broker.schemas.data import MountIn

MAX_COMMAND_ARGS = 256
MAX_ARG_CHARS = 4096
MAX_COMMAND_CHARS = 16 * 1024
MAX_ENV_VARS = 128
MAX_ENV_VALUE_CHARS = 8 * 1024
SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Set by the runner for every worker: a job may not override them.
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "RANK", "LOCAL_RANK",
                          "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "BROKER_JOB_ID", "BROKER_ATTEMPT"})


class ResourcesIn(Input):
    gpus: int = Field(0, ge=0, le=64, description="whole GPUs per worker")
    cpus: float = Field(1.0, gt=0, le=1024, description="CPU cores per worker")
    memory_gb: float = Field(1.0, gt=0, le=16384, description="memory per worker, GiB")
    gpu_model: Optional[str | list[str]] = Field(
        None, description="a GPU model (or a list of acceptable ones); omit for any")

    @field_validator("gpu_model")
    @classmethod
    def _models(cls, v):
        if v is None:
            return v
        items = [v] if isinstance(v, str) else v
        if not items or len(items) > 16 or any(not (0 < len(m) <= 128) for m in items):
            raise ValueError("gpu_model must be a non-empty name or a list of 1..16 names")
        return v

    def models(self) -> list[str]:
        if self.gpu_model is None:
            return []
        return [self.gpu_model] if isinstance(self.gpu_model, str) else list(self.gpu_model)


class JobCreate(Input):
    """POST /api/v1/jobs."""

    name: str = Field(pattern=NAME, description="a short name; letters, digits, . _ -")
    project: str = Field(pattern=SLUG, description="project id, e.g. ouh-liver")
    workload_class: Literal["operation", "innovation"] = Field("innovation", alias="class")
    image: str = Field("", max_length=512, description="container image; required for runtime container")
    command: list[str] = Field(min_length=1, max_length=MAX_COMMAND_ARGS)
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_VARS)
    resources: ResourcesIn = Field(default_factory=ResourcesIn)
    workers: int = Field(1, ge=1, le=256, description="gang size: all start or none")
    max_runtime_s: float = Field(3600.0, gt=0, le=30 * 24 * 3600)
    priority: int = Field(0, ge=-1000, le=1000)
    runtime: Literal["container", "process"] = "container"
    max_retries: int = Field(3, ge=0, le=100, description="reruns after a lost attempt (node or runner gone); "
                             "preemptions always requeue and never count")
    pool: Optional[str] = Field(None, pattern=SLUG, description="pin to one pool; omit to let the class decide")
    checkpointable: bool = Field(False, description="the job saves its state in BROKER_CHECKPOINT_DIR (kept "
                                 "across attempts) and resumes from it, so a preemption loses only the work "
                                 "since its last checkpoint; every job gets BROKER_NOTICE_FILE, written "
                                 "before SIGTERM with the reason and deadline")
    secrets: list[str] = Field(default_factory=list, max_length=32,
                               description="names of project secrets the job reads as files at /run/secrets/NAME "
                               "(mode 0400, on tmpfs); never passed as env, never shown")

    mounts: list[MountIn] = Field(default_factory=list, max_length=16,
                                  description="datasets granted to the project, mounted read-only unless "
                                  "granted and asked rw; the job runs only where the data is")

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for n in v:
            if not SECRET_NAME.match(n):
                raise ValueError(f"secret name {n[:64]!r} is not valid (1-64 letters, digits, . _ -)")
        if len(set(v)) != len(v):
            raise ValueError("a secret is named twice")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v[0].strip():
            raise ValueError("command[0] (the program) must not be empty")
        for i, a in enumerate(v):
            if len(a) > MAX_ARG_CHARS:
                raise ValueError(f"command[{i}] is longer than {MAX_ARG_CHARS} characters")
            if "\x00" in a:
                raise ValueError(f"command[{i}] contains a NUL byte")
        total = sum(len(a) for a in v)
        if total > MAX_COMMAND_CHARS:
            raise ValueError(f"command is {total} characters long; the limit is {MAX_COMMAND_CHARS}")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not ENV_NAME.match(k):
                raise ValueError(f"env name {k[:64]!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")
            if k in RESERVED_ENV:
                raise ValueError(f"env {k} is set by the broker for each worker and cannot be given")
            if len(val) > MAX_ENV_VALUE_CHARS or "\x00" in val:
                raise ValueError(f"env {k} value is too long or contains a NUL byte")
        return v

    @model_validator(mode="after")
    def _image(self) -> "JobCreate":
        if self.runtime == "container":
            if not self.image:
                raise ValueError("image is required for runtime 'container'")
            if not re.match(IMAGE, self.image):
                raise ValueError("image is not a valid image reference")
        return self


class PendingReasonPublic(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ResourcesPublic(BaseModel):
    gpus: int
    cpus: float
    memory_gb: float
    gpu_model: Optional[list[str]] = None


class FlavorPublic(BaseModel):
    pool: Optional[str] = None
    gpu_model: Optional[str] = None


class AttemptPublic(BaseModel):
    number: int
    status: str
    admitted_at: Optional[float] = None
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    exit_code: Optional[int] = None
    reason: str = ""


class PlacementPublic(BaseModel):
    attempt: int
    rank: int
    node: str
    gpu_indices: list[int] = []
    cuda_visible_devices: str = ""


class JobUsagePublic(BaseModel):
    """GPU use of the job measured by the node agents (attributed samples), all attempts."""

    samples: int = 0
    gpus: int = 0
    gpu_util_avg: Optional[float] = None
    gpu_util_peak: Optional[float] = None
    memory_used_mb_avg: Optional[float] = None
    memory_used_mb_peak: Optional[float] = None
    tensor_active_avg: Optional[float] = None
    energy_j: Optional[float] = None
    used_gpu_s: Optional[float] = None


class JobPublic(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str
    project: str
    workload_class: str = Field(alias="class")
    image: str
    command: list[str]
    env: dict[str, str]
    resources: ResourcesPublic
    workers: int
    max_runtime_s: float
    priority: int
    runtime: str
    max_retries: int
    pool: Optional[str] = None
    checkpointable: bool = False
    secrets: list[str] = []  # names only: a value is never returned
    mounts: list[dict[str, Any]] = []  # {dataset (id), name, path, mode}
    status: str
    attempt: int
    version: int
    pending_reason: Optional[PendingReasonPublic] = None
    queue_position: Optional[int] = None
    estimated_start: Optional[float] = None
    submit_time: float
    created_at: float
    admitted_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    cancel_requested_at: Optional[float] = None
    exit_code: Optional[int] = None
    message: str = ""
    borrowing: bool = False
    flavor: Optional[FlavorPublic] = None
    attempts: list[AttemptPublic] = []
    placements: list[PlacementPublic] = []
    usage: Optional[JobUsagePublic] = None  # GET /api/v1/jobs/{id} only, once the job has started


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: Optional[str] = None


class JobEventPublic(BaseModel):
    id: int
    ts: float
    kind: str
    from_status: Optional[str] = None
    to_status: Optional[str] = None
    attempt: Optional[int] = None
    message: str = ""
    details: dict[str, Any] = {}


class JobEventList(BaseModel):
    items: list[JobEventPublic]
