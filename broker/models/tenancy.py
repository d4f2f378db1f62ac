"""Tenancy, access and audit tables: API tokens, users, memberships, token owners, audit
entries, runtime admin settings.

- `ApiToken`: a bearer token, stored as the sha256 of the whole secret (shown once).

- `User`: a person (or a service identity). `oidc_subject` links an OIDC `sub` to the user.
- `Membership`: one grant (`broker.auth.policy.Grant`): role + department + project. The
  unique constraint makes granting idempotent.
- `TokenOwner`: which user an API token belongs to. A token with an owner acts with the
  owner's memberships (live: revoking a membership takes effect on the owner's tokens within
  the authorization cache TTL); tokens without one (the bootstrap admin token, agent tokens,
  scoped service tokens) act only with the grant written on the token row itself.
- `AuditEntry`: append-only (no route updates or deletes it); `hash` chains each entry to the
  previous one (`broker.auth.audit.chain_hash`) so an edit in the table is detectable.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.models.base import new_id, now


class ApiToken(SQLModel, table=True):
    """A bearer token, stored as sha256 of the full secret (the secret is shown once)."""

    __tablename__ = "api_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    prefix: str = Field(max_length=32, index=True)  # visible part, e.g. "cb_3f9a1c2e"
    hash: str = Field(max_length=64, unique=True)
    kind: str = Field(default="user", max_length=16)  # "user" | "agent"
    name: str = Field(default="", max_length=200)
    role: str = Field(default="member", max_length=32)  # platform-admin, project-admin, ...
    project_id: Optional[str] = Field(default=None, max_length=64)  # scope for project roles
    department_id: Optional[str] = Field(default=None, max_length=64)
    node_id: Optional[str] = Field(default=None, max_length=200)  # agent tokens: own node only
    expires_at: Optional[float] = None
    revoked_at: Optional[float] = None
    created_at: float = Field(default_factory=now)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(primary_key=True, max_length=64)  # a login name: "alice"
    display_name: str = Field(default="", max_length=200)
    email: Optional[str] = Field(default=None, max_length=320)
    oidc_subject: Optional[str] = Field(default=None, max_length=255, unique=True)
    disabled_at: Optional[float] = None
    created_at: float = Field(default_factory=now)


class Membership(SQLModel, table=True):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("user_id", "role", "department_id", "project_id", name="uq_membership"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=64)
    role: str = Field(max_length=32)
    department_id: Optional[str] = Field(default=None, max_length=64, index=True)
    project_id: Optional[str] = Field(default=None, max_length=64, index=True)
    created_at: float = Field(default_factory=now)
    created_by: str = Field(default="", max_length=64)


class TokenOwner(SQLModel, table=True):
    __tablename__ = "token_owners"

    token_id: str = Field(primary_key=True, max_length=32)  # api_tokens.id
    user_id: str = Field(foreign_key="users.id", index=True, max_length=64)


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_dept_id", "department_id", "id"),
        Index("ix_audit_at", "at"),
        # job events sealed into the chain (job submits): each at most once, whoever seals
        Index("ux_audit_source_event", "source_event_id", unique=True),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    at: float = Field(default_factory=now)
    actor: str = Field(max_length=200)
    actor_kind: str = Field(default="user", max_length=16)
    token_prefix: Optional[str] = Field(default=None, max_length=32)
    action: str = Field(max_length=64, index=True)
    target_kind: str = Field(max_length=32)
    target_id: str = Field(max_length=255)
    department_id: Optional[str] = Field(default=None, max_length=64)
    project_id: Optional[str] = Field(default=None, max_length=64)
    source: Optional[str] = Field(default=None, max_length=64)
    outcome: str = Field(default="ok", max_length=16)
    request_id: Optional[str] = Field(default=None, max_length=64)
    before: Optional[dict] = Field(default=None, sa_column=Column(JSON, nullable=True))
    after: Optional[dict] = Field(default=None, sa_column=Column(JSON, nullable=True))
    changes: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    prev_hash: Optional[str] = Field(default=None, max_length=64)
    hash: str = Field(default="", max_length=64)
    source_event_id: Optional[int] = None  # job_events.id this entry seals (job submits)




class AdminSetting(SQLModel, table=True):
    """A runtime setting admins change through the API (image allow-list, max runtime per
    workload class). `version` is the ETag for If-Match updates; `value` is JSON."""

    __tablename__ = "admin_settings"

    key: str = Field(primary_key=True, max_length=64)
    value: Optional[dict] = Field(default=None, sa_column=Column(JSON, nullable=True))
    version: int = 1
    updated_at: float = Field(default_factory=now)
