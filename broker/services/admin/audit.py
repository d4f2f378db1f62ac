"""The audit log: append entries inside the caller's transaction, query them by scope.

Why inside the caller's transaction: an admin change and its audit entry commit together or
not at all (no change without a trace, no trace of a change that rolled back). Entries are
built by the pure `broker.auth.audit.build_record` (secrets redacted, diff computed) and
chained: each stores the previous entry's hash. Writers are serialized for the chain: SQLite
takes its write lock before reading the chain head; PostgreSQL a transaction-scoped advisory lock.

Reads: platform-admins see everything; department-admins see entries of their departments
(`list_scope(..., Resource.AUDIT)`); nobody else sees any (the route answers 403/404 by policy).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text
from sqlmodel import Session

from broker.errors import Forbidden, Invalid
from broker.models import ApiToken
from broker.models import AuditEntry
from broker.auth.audit import build_record, chain_hash, verify_chain
from broker.auth.policy import Principal as PolicyPrincipal, Resource, Scope
from broker.ports import Clock

if TYPE_CHECKING:
    from broker.auth.authz import Authz

log = logging.getLogger("broker.audit")
_ADVISORY_KEY = 0x434241554449  # "CBAUDI"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who acts, as the audit log records it."""

    token_id: str
    subject: str  # policy subject: user id or "token:<id>"
    kind: str = "user"
    name: str = ""
    source: str | None = None
    request_id: str | None = None
    policy: PolicyPrincipal | None = None

    @property
    def actor(self) -> str:
        return self.subject


def token_prefix(session: Session, token_id: str) -> str | None:
    if token_id.startswith("oidc:"):
        return "oidc"
    row = session.get(ApiToken, token_id)
    return row.prefix if row is not None else None


def record(session: Session, caller: Caller, *, action: str, target_kind: str, target_id: str,
           before: Any = None, after: Any = None, department: str | None = None, project: str | None = None,
           outcome: str = "ok", clock: Clock = time.time) -> AuditEntry:
    """Append one entry in `session`'s transaction (the caller commits)."""
    _lock_chain(session)
    at = clock()
    rec = build_record(
        at=datetime.fromtimestamp(at, tz=timezone.utc), actor=caller.actor, actor_kind=caller.kind,
        action=action, target_kind=target_kind, target_id=target_id, before=before, after=after,
        department=department, project=project, source=caller.source,
        token_prefix=token_prefix(session, caller.token_id), outcome=outcome, request_id=caller.request_id,
    )
    entry = _chained(rec, at, _head(session), department, project)
    session.add(entry)
    session.flush()
    return entry


def _lock_chain(session: Session) -> None:
    """Serialize chain writers until the transaction ends."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
    elif dialect == "sqlite":
        # Take SQLite's write lock before reading the chain head: the driver starts a
        # transaction only at the first write, so a bare SELECT could read a stale head.
        session.execute(text("UPDATE audit_log SET id = id WHERE 1 = 0"))


def _head(session: Session) -> str | None:
    return session.execute(select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)).scalar_one_or_none()


def _chained(rec, at: float, prev: str | None, department: str | None, project: str | None,
             source_event_id: int | None = None) -> AuditEntry:
    data = rec.as_json()
    return AuditEntry(
        at=at, actor=rec.actor, actor_kind=rec.actor_kind, token_prefix=rec.token_prefix, action=rec.action,
        target_kind=rec.target_kind, target_id=rec.target_id, department_id=department, project_id=project,
        source=rec.source, outcome=rec.outcome, request_id=rec.request_id,
        before=data["before"], after=data["after"], changes=data["changes"], prev_hash=prev,
        hash=chain_hash(prev, _chain_view({**data, "at": at})), source_event_id=source_event_id,
    )


# ---------------------------------------------------------------------------------------------
# Job submits: sealed into the chain from their job event (a transactional outbox).
#
# Why not in the submit transaction: submits are group-committed, hundreds per transaction and
# up to two transactions at once on PostgreSQL (one statement each); the chain needs one
# writer at a time reading its head, which would serialize the hot path and cost round trips.
# The "submitted" job event commits with the job (same statement) and carries who, from where
# and the request id, so nothing can be lost; `seal_job_submits` (a broker task every couple of
# seconds, and before every audit query) appends one chained `job.submit` entry per event not
# yet sealed and marks it sealed in the same transaction (`job_events.sealed`, found through a
# partial index), so every event is sealed exactly once whatever order transactions commit in;
# `audit_log.source_event_id` is unique besides, and sealers take the chain lock.
SEAL_BATCH = 2_000


def seal_job_submits(session: Session, *, limit: int = SEAL_BATCH) -> int:
    """Append a `job.submit` entry for each submitted job event not yet in the chain (oldest
    first, at most `limit`) and mark those events sealed; the caller commits. Returns how many."""
    from sqlalchemy import update

    from broker.models import Job, JobEvent, Project

    _lock_chain(session)
    q = (select(JobEvent.id, JobEvent.ts, JobEvent.job_id, JobEvent.details, Job.project_id, Project.department_id,
                Job.name, Job.workload_class, Job.gpus, Job.cpus, Job.memory_gb, Job.workers, Job.image, Job.runtime,
                Job.pool, Job.priority, Job.max_runtime_s, Job.owner_token_id)
         .join(Job, Job.id == JobEvent.job_id)
         .outerjoin(Project, Project.id == Job.project_id)
         .where(JobEvent.kind == "submitted", JobEvent.sealed.is_(False))
         .order_by(JobEvent.id).limit(limit))
    rows = session.execute(q).all()
    if not rows:
        return 0
    prev = _head(session)
    prefixes: dict[str, str | None] = {}
    for r in rows:
        d = (r.details or {}).get("audit") or {}
        tid = d.get("token_id") or r.owner_token_id or ""  # events from before the audit fields
        if tid not in prefixes:
            prefixes[tid] = token_prefix(session, tid) if tid else None
        after = {"name": r.name, "project": r.project_id, "class": r.workload_class, "pool": r.pool,
                 "image": r.image, "runtime": r.runtime, "workers": r.workers, "priority": r.priority,
                 "resources": {"gpus": r.gpus, "cpus": r.cpus, "memory_gb": r.memory_gb},
                 "max_runtime_s": r.max_runtime_s, "status": "PENDING"}
        rec = build_record(at=datetime.fromtimestamp(r.ts, tz=timezone.utc),
                           actor=d.get("actor") or (f"token:{tid}" if tid else "unknown"),
                           actor_kind=d.get("actor_kind") or "user", action="job.submit", target_kind="job",
                           target_id=r.job_id, after=after, department=r.department_id, project=r.project_id,
                           source=d.get("source"), token_prefix=prefixes[tid], request_id=d.get("request_id"))
        entry = _chained(rec, r.ts, prev, r.department_id, r.project_id, source_event_id=r.id)
        prev = entry.hash
        session.add(entry)
    session.flush()
    ids = [r.id for r in rows]
    for i in range(0, len(ids), 500):
        session.execute(update(JobEvent).where(JobEvent.id.in_(ids[i:i + 500])).values(sealed=True))
    return len(rows)


def unsealed_submits(engine) -> int:
    """How many job submits wait to be sealed (the outbox's lag; the partial index answers)."""
    from sqlalchemy import func

    from broker.models import JobEvent

    with Session(engine) as s:
        return s.execute(select(func.count()).select_from(JobEvent).where(
            JobEvent.kind == "submitted", JobEvent.sealed.is_(False))).scalar_one()


def seal_pending(engine, *, rounds: int = 50) -> int:
    """Seal every job submit not yet in the chain, in batches, each its own transaction."""
    total = 0
    for _ in range(rounds):
        with Session(engine) as s:
            n = seal_job_submits(s)
            s.commit()
        total += n
        if n < SEAL_BATCH:
            break
    return total


def _chain_view(data: dict) -> dict:
    """The fields the chain covers (what a reader can recompute from a row)."""
    keys = ("at", "actor", "actor_kind", "action", "target_kind", "target_id", "department", "project", "source",
            "token_prefix", "outcome", "request_id", "before", "after", "changes")
    return {k: data.get(k) for k in keys}


def entry_public(e: AuditEntry) -> dict:
    return {"id": e.id, "at": e.at, "actor": e.actor, "actor_kind": e.actor_kind, "token_prefix": e.token_prefix,
            "action": e.action, "target_kind": e.target_kind, "target_id": e.target_id,
            "department": e.department_id, "project": e.project_id, "source": e.source, "outcome": e.outcome,
            "request_id": e.request_id, "before": e.before, "after": e.after, "changes": e.changes or [],
            "hash": e.hash}


def query(session: Session, scope: Scope, *, action: str | None = None, target_kind: str | None = None,
          target_id: str | None = None, actor: str | None = None, department: str | None = None,
          project: str | None = None, since: float | None = None, until: float | None = None,
          after_id: int | None = None, limit: int = 100) -> dict:
    """Newest first, filtered to `scope`; `after_id` pages backwards (ids below it)."""
    if not 1 <= limit <= 500:
        raise Invalid("limit must be between 1 and 500", code="BAD_LIMIT")
    if scope.empty:
        return {"items": [], "next_cursor": None}
    q = select(AuditEntry)
    if not scope.all:
        q = q.where(AuditEntry.department_id.in_(sorted(scope.departments)))
    for col, val in ((AuditEntry.action, action), (AuditEntry.target_kind, target_kind),
                     (AuditEntry.target_id, target_id), (AuditEntry.actor, actor),
                     (AuditEntry.department_id, department), (AuditEntry.project_id, project)):
        if val is not None:
            q = q.where(col == val)
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    if until is not None:
        q = q.where(AuditEntry.at < until)
    if after_id is not None:
        q = q.where(AuditEntry.id < after_id)
    rows = list(session.execute(q.order_by(AuditEntry.id.desc()).limit(limit + 1)).scalars().all())
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = str(rows[-1].id)
    return {"items": [entry_public(e) for e in rows], "next_cursor": nxt}


def verify(session: Session) -> int | None:
    """Id of the first entry whose chain link is broken, or None if the log is intact."""
    return verify_report(session)["first_broken_id"]


def verify_report(session: Session, *, batch: int = 2_000) -> dict:
    """Walk the whole chain in id order, `batch` rows at a time (the log grows with every job
    submit, so it is never loaded at once): entries checked and the first broken link."""
    ids: list[int] = []

    def entries():
        after = 0
        while True:
            rows = session.execute(select(AuditEntry).where(AuditEntry.id > after)
                                   .order_by(AuditEntry.id).limit(batch)).scalars().all()
            if not rows:
                return
            for e in rows:
                ids.append(e.id)
                yield _chain_view(_as_record_json(e)), e.hash
            after = rows[-1].id
            session.expunge_all()

    idx = verify_chain(entries())
    return {"intact": idx is None, "entries": len(ids), "first_broken_id": None if idx is None else ids[idx]}


def _as_record_json(e: AuditEntry) -> dict:
    return {"at": e.at, "actor": e.actor, "actor_kind": e.actor_kind, "action": e.action, "target_kind": e.target_kind,
            "target_id": e.target_id, "department": e.department_id, "project": e.project_id, "source": e.source,
            "token_prefix": e.token_prefix, "outcome": e.outcome, "request_id": e.request_id,
            "before": e.before, "after": e.after, "changes": e.changes or []}


class AuditLog:
    """The audit log's read use cases: entries by the caller's scope, and the chain check.

    Platform-admins see every entry and may verify the whole chain; department-admins see
    their departments' entries; everyone else gets 403."""

    def __init__(self, engine, authz: "Authz") -> None:
        self.engine, self.authz = engine, authz

    def verify(self, principal) -> dict:
        """Recompute the chain (platform-admins only: it spans every department)."""
        if not self.authz.scope(principal, Resource.AUDIT).all:
            raise Forbidden("verifying the whole audit chain is for platform-admins", code="FORBIDDEN")
        with Session(self.engine) as s:
            return verify_report(s)

    def entries(self, principal, *, cursor: str | None = None, **filters: Any) -> dict:
        """Entries newest first within the caller's scope; job submits of the last seconds are
        sealed first (best effort: the periodic task catches up)."""
        scope = self.authz.scope(principal, Resource.AUDIT)
        if scope.empty:
            raise Forbidden("the audit log is for platform- and department-admins", code="FORBIDDEN")
        after_id = None
        if cursor is not None:
            if not cursor.isdigit():
                raise Invalid("cursor is malformed; pass next_cursor unchanged", code="BAD_CURSOR")
            after_id = int(cursor)
        try:
            seal_pending(self.engine, rounds=5)
        except Exception as e:  # noqa: BLE001 - a read must not fail because sealing did
            log.warning("sealing job submits before an audit query failed: %s", e)
        with Session(self.engine) as s:
            return query(s, scope, after_id=after_id, **filters)

    def unsealed(self) -> int:
        return unsealed_submits(self.engine)
