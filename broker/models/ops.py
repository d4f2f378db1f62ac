"""Operations tables: idle-allocation policy and flags, notification subscriptions and outbox.

- `idle_policies`: per pool, when an allocation counts as idle (utilization and memory below
  thresholds for a window) and whether idle innovation work may be reclaimed there;
- `idle_allocations`: one row per (job, attempt) flagged idle; open while `cleared_at` is
  None; `reclaimed_at` when the broker preempted it for idleness;
- `notify_subscriptions`: who hears about what (event kinds, optional project), by webhook
  or e-mail;
- `notify_outbox`: one row per message to deliver, retried with backoff until delivered or
  given up (a broker restart loses nothing: the row is the message);
- `notify_marks`: how far the producers have read their sources (e.g. the job events id).
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from broker.models.base import json_field, new_id, now


class IdlePolicy(SQLModel, table=True):
    __tablename__ = "idle_policies"

    pool: str = Field(primary_key=True, max_length=64)
    util_below_pct: float = 5.0  # every reading of every GPU of the allocation below this ...
    memory_below_mib: float = 1024.0  # ... and GPU memory used below this ...
    window_s: float = 1800.0  # ... for this long: idle
    reclaim: bool = False  # idle innovation work may be preempted here while others wait
    updated_at: float = Field(default_factory=now)


class IdleAllocation(SQLModel, table=True):
    __tablename__ = "idle_allocations"
    __table_args__ = (
        Index("ix_idle_allocations_open", "job_id", postgresql_where=text("cleared_at IS NULL"),
              sqlite_where=text("cleared_at IS NULL")),
    )

    job_id: str = Field(primary_key=True, max_length=32)
    attempt: int = Field(primary_key=True)
    project_id: str = Field(max_length=64)
    pool: str = Field(default="", max_length=64)
    workload_class: str = Field(default="innovation", max_length=32)
    gpus: int = 0
    flagged_at: float = Field(default_factory=now)
    util_max_pct: Optional[float] = None  # the highest reading over the window that flagged it
    memory_max_mib: Optional[float] = None
    cleared_at: Optional[float] = None  # busy again, or the attempt ended
    reclaimed_at: Optional[float] = None  # preempted for idleness


class NotifySubscription(SQLModel, table=True):
    __tablename__ = "notify_subscriptions"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    owner: str = Field(max_length=200, index=True)  # the subscriber (user subject or token id)
    project_id: Optional[str] = Field(default=None, max_length=64)  # None: every visible project
    events: list = json_field(default_factory=list)  # event kinds (broker.services.notify.EVENTS)
    channel: str = Field(max_length=16)  # "webhook" | "email"
    target: str = Field(max_length=500)  # URL or address
    scope_all: bool = False  # the owner could see every project when subscribing (admins)
    created_at: float = Field(default_factory=now)


class NotifyOutbox(SQLModel, table=True):
    __tablename__ = "notify_outbox"
    __table_args__ = (
        Index("ix_notify_outbox_due", "next_at", postgresql_where=text("delivered_at IS NULL AND NOT dead"),
              sqlite_where=text("delivered_at IS NULL AND NOT dead")),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    subscription_id: str = Field(max_length=32, index=True)
    channel: str = Field(max_length=16)
    target: str = Field(max_length=500)
    event: str = Field(max_length=64)
    payload: dict = json_field()
    created_at: float = Field(default_factory=now)
    next_at: float = Field(default_factory=now)
    attempts: int = 0
    delivered_at: Optional[float] = None
    dead: bool = False  # gave up after the last retry
    last_error: str = ""


class NotifyMark(SQLModel, table=True):
    __tablename__ = "notify_marks"

    name: str = Field(primary_key=True, max_length=64)
    value: float = 0.0


OPS_TABLES = [IdlePolicy, IdleAllocation, NotifySubscription, NotifyOutbox, NotifyMark]
