"""Service tables: services, their revisions, replica health and events.

A service is a long-running workload (inference) behind one entry point. Its replicas are
ordinary jobs (`jobs.service_id` names the service), so the scheduling core admits them like
any job and the runner runs them; these tables hold what jobs do not: the spec of each
revision, the desired replica count, what the controller learned from its probes, and the
service's own event log.

Invariants: `Service.revision` is the revision replicas converge to (the newest, unless it was
rolled back); `Service.stable_revision` is the last revision whose replicas all became ready
(a rollback returns to it). A service row is removed only once none of its replica jobs holds
anything (the controller finishes a DELETE).
"""

from __future__ import annotations

import enum
from typing import Optional

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.models.base import json_field, new_id, now


class ServiceStatus(str, enum.Enum):
    DEPLOYING = "DEPLOYING"  # fewer ready replicas than min
    READY = "READY"  # at least min replicas ready, on the current revision
    ROLLING = "ROLLING"  # replacing replicas with a new revision
    DEGRADED = "DEGRADED"  # was ready, now below min ready replicas
    DELETING = "DELETING"  # replicas are being stopped; the row goes once they are gone


class Service(SQLModel, table=True):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_services_project_name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=64)
    project_id: str = Field(foreign_key="projects.id", max_length=64, index=True)
    workload_class: str = Field(default="innovation", max_length=32)
    owner_token_id: Optional[str] = Field(default=None, max_length=32)
    revision: int = 1  # the revision replicas converge to
    stable_revision: int = 0  # the last fully ready revision (0: none yet)
    min_replicas: int = 1
    max_replicas: int = 1
    desired_replicas: int = 1  # min <= desired <= max (autoscaler or `scale`)
    status: str = Field(default=ServiceStatus.DEPLOYING.value, max_length=16)
    message: str = ""
    # why the service cannot have what it wants (quota, budget, restart backoff): code + numbers
    pending_code: Optional[str] = Field(default=None, max_length=64)
    pending_message: str = ""
    pending_details: dict = json_field()  # the numbers behind it (a replica's: requested, free, ETA...)
    failures: int = 0  # replica failures in a row (restart backoff); reset when one is ready
    next_start_at: Optional[float] = None  # no new replica before this (backoff)
    scaled_at: Optional[float] = None  # the last autoscaling change (cool-down)
    api_key_hashes: list = json_field(default_factory=list)  # sha256 hex of per-service API keys
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    deleted_at: Optional[float] = None
    version: int = 1


class ServiceRevision(SQLModel, table=True):
    """One version of a service's spec: image, command, env, resources, port, probes, policy."""

    __tablename__ = "service_revisions"

    service_id: str = Field(foreign_key="services.id", primary_key=True, max_length=32)
    number: int = Field(primary_key=True)
    spec: dict = json_field()  # the validated ServiceSpec (JSON), as given
    template: dict = json_field()  # the replica job row the submit checks built (no id, no times)
    status: str = Field(default="active", max_length=16)  # active | superseded | rolled_back
    message: str = ""
    created_at: float = Field(default_factory=now)
    created_by: str = Field(default="", max_length=200)


class ServiceReplica(SQLModel, table=True):
    """What the controller knows of one replica job: where it answers, and its probes."""

    __tablename__ = "service_replicas"

    job_id: str = Field(primary_key=True, max_length=32)
    service_id: str = Field(max_length=32, index=True)
    index: int = 0
    revision: int = 1
    host: str = Field(default="", max_length=255)
    port: Optional[int] = None
    ready: bool = False
    live_failures: int = 0
    ready_failures: int = 0
    ready_since: Optional[float] = None
    last_probe_at: Optional[float] = None
    message: str = ""


class ServiceLoad(SQLModel, table=True):
    """One broker's requests in flight to one service (the mean its proxy saw over about the
    last second), so that the leader's autoscaler counts the load of every broker. Rows older
    than a few seconds belong to a broker that stopped publishing and are ignored."""

    __tablename__ = "service_loads"

    broker_id: str = Field(primary_key=True, max_length=64)
    service_id: str = Field(primary_key=True, max_length=32)
    inflight: float = 0.0
    updated_at: float = 0.0


class ServiceEvent(SQLModel, table=True):
    __tablename__ = "service_events"
    __table_args__ = (Index("ix_service_events_service_id", "service_id", "id"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    service_id: str = Field(max_length=32)
    ts: float = Field(default_factory=now)
    kind: str = Field(max_length=32)  # created | revision | scaled | replica_started | ...
    message: str = ""
    details: dict = json_field()
