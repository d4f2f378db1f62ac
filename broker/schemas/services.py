"""Service shapes: the deploy body (`ServiceCreate`), a change (`ServicePatch`), a service, its
revisions, replicas and events.

A service's replica is an ordinary job, so the replica part of the spec (image, command, env,
resources, runtime, pool, priority) is checked by the job submit schema itself
(`ServiceCreate.job_create`): the same limits, the same reserved variables, the same image
rule. `PORT` is reserved besides: the broker sets it (the port a `runtime: process` replica
must listen on; a container listens on `port`).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.schemas.base import SLUG, Input
from broker.schemas.jobs import MAX_COMMAND_ARGS, MAX_ENV_VARS, JobCreate, ResourcesIn

# a replica runs until the service changes; the runner still needs a bound (it is replaced then)
REPLICA_MAX_RUNTIME_S = 30 * 24 * 3600.0
SERVICE_RESERVED_ENV = frozenset({"PORT", "BROKER_SERVICE"})


class ReplicasIn(Input):
    min: int = Field(1, ge=0, le=64, description="replicas kept at all times (operation: never preempted)")
    max: int = Field(1, ge=1, le=64, description="the autoscaler's ceiling; replicas above min are preemptible")

    @model_validator(mode="after")
    def _order(self) -> "ReplicasIn":
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must not exceed replicas.max ({self.max})")
        return self


class ProbeIn(Input):
    """HTTP GET of `path` (2xx/3xx passes) or, with `tcp: true`, a TCP connect to the port."""

    path: Optional[str] = Field(None, pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%?-]{0,511}$")
    tcp: bool = False
    period_s: float = Field(1.0, ge=0.2, le=300)
    timeout_s: float = Field(1.0, gt=0, le=60)
    failure_threshold: int = Field(2, ge=1, le=100)
    initial_delay_s: float = Field(0.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _kind(self) -> "ProbeIn":
        if self.tcp and self.path:
            raise ValueError("a probe is either an HTTP path or tcp, not both")
        if not self.tcp and not self.path:
            self.path = "/"
        return self


class RestartIn(Input):
    backoff_initial_s: float = Field(1.0, ge=0, le=600)
    backoff_max_s: float = Field(60.0, ge=0, le=3600)
    progress_deadline_s: float = Field(120.0, ge=1, le=24 * 3600,
                                       description="a new revision not ready within this is rolled back")


class AutoscaleIn(Input):
    target_inflight: float = Field(4.0, gt=0, le=10_000, description="requests in flight per replica")
    cooldown_s: float = Field(60.0, ge=0, le=24 * 3600, description="wait before scaling down")


class RateLimitIn(Input):
    """The entry point's limits (429 RATE_LIMITED with Retry-After above them), per broker process."""

    per_s: Optional[float] = Field(None, gt=0, le=1_000_000,
                                   description="requests per second to the whole service (none: unlimited)")
    burst: Optional[int] = Field(None, ge=1, le=10_000_000, description="the service's burst (default: per_s, >= 1)")
    per_caller_per_s: Optional[float] = Field(None, gt=0, le=1_000_000,
                                              description="requests per second per token or API key "
                                                          "(none: the broker's default)")
    per_caller_burst: Optional[int] = Field(None, ge=1, le=10_000_000,
                                            description="a caller's burst (default: 2 x per_caller_per_s)")


class ServiceCreate(Input):
    """POST /api/v1/services (and `broker services deploy -f svc.yaml`)."""

    name: str = Field(pattern=SLUG, description="lower-case letters, digits and -; unique in the project")
    project: str = Field(pattern=SLUG)
    workload_class: Literal["operation", "innovation"] = Field("innovation", alias="class")
    image: str = Field("", max_length=512)
    command: list[str] = Field(min_length=1, max_length=MAX_COMMAND_ARGS)
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_VARS)
    resources: ResourcesIn = Field(default_factory=lambda: ResourcesIn(gpus=0))
    replicas: ReplicasIn = Field(default_factory=ReplicasIn)
    port: int = Field(8080, ge=1, le=65535, description="the port a container replica listens on")
    runtime: Literal["container", "process"] = "container"
    pool: Optional[str] = Field(None, pattern=SLUG)
    priority: int = Field(0, ge=-1000, le=1000)
    readiness: ProbeIn = Field(default_factory=ProbeIn)
    liveness: Optional[ProbeIn] = None
    restart: RestartIn = Field(default_factory=RestartIn)
    autoscale: AutoscaleIn = Field(default_factory=AutoscaleIn)
    request_timeout_s: float = Field(60.0, gt=0, le=3600, description="the proxy's per-request timeout")
    rate_limit: RateLimitIn = Field(default_factory=RateLimitIn)

    @model_validator(mode="after")
    def _replica(self) -> "ServiceCreate":
        bad = sorted(SERVICE_RESERVED_ENV & set(self.env))
        if bad:
            raise ValueError(f"env {bad[0]} is set by the broker for each replica and cannot be given")
        self.job_create()  # the job schema's own checks (command, env, image)
        return self

    def job_create(self) -> JobCreate:
        """The replica as a job submit body (raises ValueError with the job schema's message)."""
        try:
            return JobCreate(name=self.name, project=self.project, workload_class=self.workload_class,
                             image=self.image, command=self.command, env=self.env, resources=self.resources,
                             workers=1, max_runtime_s=REPLICA_MAX_RUNTIME_S, priority=self.priority,
                             runtime=self.runtime, max_retries=100, pool=self.pool)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            raise ValueError(f"{where + ': ' if where else ''}{msg}") from None


class ServicePatch(Input):
    """PATCH /api/v1/services/{id}: image/command/env/probes make a new revision (rolled out one
    replica at a time); replicas alone only rescale; rate_limit alone applies at once."""

    image: Optional[str] = Field(None, max_length=512)
    command: Optional[list[str]] = Field(None, min_length=1, max_length=MAX_COMMAND_ARGS)
    env: Optional[dict[str, str]] = Field(None, max_length=MAX_ENV_VARS)
    replicas: Optional[ReplicasIn] = None
    readiness: Optional[ProbeIn] = None
    liveness: Optional[ProbeIn] = None
    rate_limit: Optional[RateLimitIn] = Field(None, description="new limits (no new revision; apply at once)")


class ScaleIn(Input):
    replicas: int = Field(ge=0, le=64, description="desired replicas (kept within min..max)")


class ServicePublic(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str
    project: str
    workload_class: str = Field(alias="class")
    status: str
    message: str = ""
    revision: int
    stable_revision: int
    replicas: dict[str, int]  # min, max, desired, ready, running
    pending_reason: Optional[dict[str, Any]] = None
    endpoint: str
    spec: dict[str, Any]
    created_at: float
    updated_at: float


class ServiceList(BaseModel):
    items: list[ServicePublic]


class RevisionPublic(BaseModel):
    number: int
    status: str
    message: str = ""
    created_at: float
    created_by: str = ""
    spec: dict[str, Any]


class RevisionList(BaseModel):
    items: list[RevisionPublic]


class ReplicaPublic(BaseModel):
    job_id: str
    index: Optional[int] = None
    revision: Optional[int] = None
    status: str
    ready: bool = False
    health: str = ""
    node: Optional[str] = None
    gpu_ids: list[int] = []
    host: str = ""
    port: Optional[int] = None
    preemptible: bool = True
    pending_reason: Optional[dict[str, Any]] = None
    started_at: Optional[float] = None
    message: str = ""


class ReplicaList(BaseModel):
    items: list[ReplicaPublic]


class ServiceEventPublic(BaseModel):
    id: int
    ts: float
    kind: str
    message: str = ""
    details: dict[str, Any] = {}


class ServiceEventList(BaseModel):
    items: list[ServiceEventPublic]
