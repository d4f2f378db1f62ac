"""Table rows (SQLModel), one module per resource. The DB is the single source of truth.

`catalog` (departments, projects, pools, nodes, quotas), `jobs` (jobs, attempts, placements,
events, ledger, idempotency keys), `tenancy` (tokens, users, memberships, audit, settings),
`telemetry` (samples, rollups, agent state). Every table is importable from here, and
importing this package registers them all on `SQLModel.metadata` (migrations rely on it).

Conventions:
- every time is float epoch seconds (the scheduler's clock), never a naive datetime;
- ids are strings: slugs for departments/projects ("ouh", "ouh-liver"), names for pools and
  nodes, short random hex for jobs and tokens;
- JSON columns hold small lists/maps (command, env, labels, details); they are never queried;

API shapes live in `broker.schemas`; these classes are rows only.
"""

from broker.models.base import new_id, now
from broker.models.data import Dataset, DatasetAccess, DatasetGrant, ProjectSecret
from broker.models.catalog import Department, Node, Pool, Project, QuotaRow
from broker.models.jobs import HOLDING, TERMINAL, Attempt, IdempotencyKey, Job, JobEvent, JobStatus, Ledger, Placement
from broker.models.reports import PoolPrice
from broker.models.services import (Service, ServiceEvent, ServiceLoad, ServiceReplica, ServiceRevision,
                                   ServiceStatus)
from broker.models.dashboards import PoolRollup

from broker.models.ops import IdleAllocation, IdlePolicy, NotifyMark, NotifyOutbox, NotifySubscription
from broker.models.telemetry import AgentState, GpuRollup, GpuSample, HostSampleRow, TelemetryMark
from broker.models.tenancy import AdminSetting, ApiToken, AuditEntry, Membership, TokenOwner, User

__all__ = [
    "new_id", "now", "Department", "Node", "Pool", "Project", "QuotaRow", "HOLDING", "TERMINAL", "Attempt",
    "IdempotencyKey", "Job", "JobEvent", "JobStatus", "Ledger", "Placement", "AgentState", "AdminSetting",
    "ApiToken", "AuditEntry", "Membership", "TokenOwner", "User", "GpuRollup", "GpuSample", "HostSampleRow",
    "TelemetryMark", "PoolPrice", "IdleAllocation", "IdlePolicy", "NotifyMark", "NotifyOutbox", "NotifySubscription",
    "Dataset", "DatasetAccess", "DatasetGrant", "ProjectSecret", "PoolRollup",
    "Service", "ServiceEvent", "ServiceLoad", "ServiceReplica", "ServiceRevision", "ServiceStatus",
]
