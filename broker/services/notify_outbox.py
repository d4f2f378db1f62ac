"""The notification outbox's write side: turn one event into messages for its subscribers.

`enqueue(session, event, project_id, payload)` is what every producer calls, in the same
transaction as the change it reports (the idle checker's flag, a job's transition read from
the job events, a budget crossing), so a message exists exactly when its cause committed.
Delivery (`broker.services.notify.deliver_due`) reads the outbox later, outside any
transaction, and retries with backoff.

Matching: a subscription hears an event when the event's kind is in its `events` and either
it names the event's project, or it names none and was made by a caller who sees every project
(`scope_all`: platform-admins and ops-viewers). Events without a project (a node went
unhealthy) reach only those region-wide subscriptions.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import or_, select
from sqlmodel import Session

from broker.models import NotifyOutbox, NotifySubscription

# What users and admins may subscribe to (the producer named after each).
EVENTS = {
    "job.succeeded": "a job finished successfully (job events)",
    "job.failed": "a job failed for good (job events)",
    "job.preempted": "a job was preempted; it is requeued (job events)",
    "allocation.idle": "a job's GPUs stayed idle over its pool's window (idle checker)",
    "node.unhealthy": "a node became unhealthy (node watcher; region-wide subscriptions only)",
    "service.unhealthy": "a service has no healthy replica (services module)",
    "budget.80": "a project's GPU-hour budget for the month is 80 % spent (budget watcher)",
    "budget.100": "a project's GPU-hour budget for the month is spent (budget watcher)",
}


def enqueue(s: Session, event: str, project_id: str | None, payload: dict[str, Any], *,
            now: float | None = None) -> int:
    """Add one outbox row per matching subscription, in the caller's transaction; returns how many."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}")
    cond = NotifySubscription.project_id.is_(None) & NotifySubscription.scope_all
    if project_id:
        cond = or_(cond, NotifySubscription.project_id == project_id)
    subs = [x for x in s.execute(select(NotifySubscription).where(cond)).scalars() if event in (x.events or [])]
    t = time.time() if now is None else now
    body = {"event": event, "project": project_id, "at": t, **payload}
    for sub in subs:
        s.add(NotifyOutbox(subscription_id=sub.id, channel=sub.channel, target=sub.target, event=event,
                           payload=body, created_at=t, next_at=t))
    return len(subs)
