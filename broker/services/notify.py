"""Notifications: who hears about what, and the delivery of what the outbox holds.

Three parts, each in its own transaction:

- **Subscriptions** (`NotifyService`, the API's side): a user subscribes to event kinds
  (`notify_outbox.EVENTS`) for one project they may read, or, when they see every project
  (platform-admins, ops-viewers), region-wide; by webhook (a URL under one of the admin's
  `notify_webhook_allow_prefixes`: tenants cannot make the broker call internal addresses) or
  by e-mail through the configured SMTP relay.
- **Producers** write outbox rows in the transaction of what they report: the idle checker
  directly (`notify_outbox.enqueue`), and `collect` here for job outcomes (job events after a
  stored mark: SUCCEEDED, FAILED, PREEMPTED), nodes that became unhealthy (one message per
  unhealthy spell, remembered in `notify_marks`) and projects whose month's GPU-hours crossed
  80 % / 100 % of their budget (once per level and month). Services call `enqueue` themselves.
- **Delivery** (`deliver_due`): due rows are sent outside any transaction, then marked
  delivered, or rescheduled with exponential backoff (`notify_retry_base_s` doubling up to
  `notify_retry_max_s`), and given up (`dead`) after `notify_max_attempts`. The outbox is in
  the database, so a broker restart (or a leader change) loses nothing; a message may be sent
  twice if the broker dies between sending and marking (at-least-once, like every outbox).

Both periodic parts run on the leader only (`broker.tasks`).
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
import time
from email.message import EmailMessage
from typing import Any, Callable

import httpx
from sqlalchemy import delete, func, or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.auth.policy import Action, Resource
from broker.errors import Forbidden, Invalid, NotFound
from broker.models import Job, JobEvent, Ledger, Node, NotifyMark, NotifyOutbox, NotifySubscription, Project
from broker.services.notify_outbox import EVENTS, enqueue
from broker.services.snapshot import month_start, usage_from_ledger
from broker.settings import Settings

log = logging.getLogger("broker.notify")

JOB_EVENTS = {"SUCCEEDED": "job.succeeded", "FAILED": "job.failed", "PREEMPTED": "job.preempted"}
EVENTS_MARK = "job_events"
NODE_MARK = "node:"  # + node id: an unhealthy spell already told
BUDGET_MARK = "budget:"  # + project:period start:percent: a crossing already told
BUDGET_CHECKED = "budget_checked_at"
BUDGET_EVERY_S = 60.0  # the budget check reads this month's ledger: at most once a minute
BUDGET_LEVELS = (80, 100)
KEEP_S = 30 * 86400.0  # delivered and given-up messages are kept this long (to debug a channel)
PRUNED_MARK, PRUNE_EVERY_S = "outbox_pruned_at", 3600.0
COMMIT_LAG_S = 10.0  # job events are read once they are this old (see `collect`)
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")
MAX_SUBSCRIPTIONS = 50  # per owner


class NotifyService:
    def __init__(self, engine: Engine, authz: Authz, settings: Settings, *, clock=time.time) -> None:
        self.engine, self.authz, self.settings, self.clock = engine, authz, settings, clock

    def subscribe(self, p: Principal, *, events: list[str], channel: str, target: str,
                  project: str | None) -> dict[str, Any]:
        pp = self.authz.principal(p)
        bad = sorted(set(events) - set(EVENTS))
        if bad:
            raise Invalid(f"unknown events {bad}; known: {sorted(EVENTS)}", code="UNKNOWN_EVENT",
                          details={"known": sorted(EVENTS)})
        scope_all = self.authz.scope(p, Resource.PROJECT).all
        if project is None:
            if not scope_all:
                raise Forbidden("only platform-admins and ops-viewers may subscribe region-wide; name a project",
                                code="FORBIDDEN")
        else:
            self.authz.require_project(p, project, Action.PROJECT_READ)
        self._check_target(channel, target)
        with Session(self.engine, expire_on_commit=False) as s:
            n = s.execute(select(func.count()).select_from(NotifySubscription)
                          .where(NotifySubscription.owner == pp.subject)).scalar_one()
            if n >= MAX_SUBSCRIPTIONS:
                raise Invalid(f"at most {MAX_SUBSCRIPTIONS} subscriptions per user", code="TOO_MANY_SUBSCRIPTIONS")
            row = NotifySubscription(owner=pp.subject, project_id=project, events=sorted(set(events)),
                                     channel=channel, target=target, scope_all=project is None and scope_all,
                                     created_at=self.clock())
            s.add(row)
            s.commit()
        return _public(row)

    def list(self, p: Principal) -> dict[str, Any]:
        pp = self.authz.principal(p)
        with Session(self.engine) as s:
            rows = s.execute(select(NotifySubscription).where(NotifySubscription.owner == pp.subject)
                             .order_by(NotifySubscription.created_at)).scalars().all()
        return {"items": [_public(r) for r in rows], "events": EVENTS}

    def delete(self, p: Principal, sub_id: str) -> None:
        pp = self.authz.principal(p)
        with Session(self.engine) as s:
            row = s.get(NotifySubscription, sub_id) if len(sub_id) <= 32 else None
            if row is None or row.owner != pp.subject:
                raise NotFound("subscription not found", code="SUBSCRIPTION_NOT_FOUND")
            s.delete(row)
            s.commit()

    def _check_target(self, channel: str, target: str) -> None:
        if any(c in target for c in "\r\n\t ") or not target.isprintable():
            raise Invalid("target must be one URL or address, without spaces or control characters",
                          code="BAD_TARGET")
        if channel == "email":
            if not self.settings.notify_smtp_host:
                raise Invalid("e-mail is not configured on this broker", code="EMAIL_NOT_CONFIGURED")
            if not EMAIL.match(target):
                raise Invalid("target must be an e-mail address", code="BAD_TARGET")
            return
        allow = self.settings.notify_webhook_allow_prefixes
        if not allow:
            raise Invalid("webhooks are not enabled on this broker", code="WEBHOOK_NOT_ALLOWED")
        if not target.startswith(("http://", "https://")) or not any(target.startswith(a) for a in allow):
            raise Invalid(f"webhook URLs must start with one of {allow}", code="WEBHOOK_NOT_ALLOWED",
                          details={"allowed_prefixes": list(allow)})


def _public(r: NotifySubscription) -> dict[str, Any]:
    return {"id": r.id, "owner": r.owner, "project_id": r.project_id, "events": list(r.events), "channel": r.channel,
            "target": r.target, "created_at": r.created_at}


# --------------------------------------------------------------------------- producers


def collect(engine: Engine, now: float, *, batch: int = 1000, lag_s: float = COMMIT_LAG_S) -> int:
    """Job outcomes, unhealthy nodes and budget crossings since the last run into the outbox;
    returns how many messages were queued. The first run starts at the newest job event (no
    flood of history).

    Job events are read in id order up to the first one younger than `lag_s`: ids are handed
    out before commit, so a transaction still open may commit a lower id after a higher one
    is visible; waiting `lag_s` (far longer than any of the broker's short transactions) before
    moving the mark past an id keeps such an event from being skipped."""
    queued = 0
    with Session(engine) as s:
        mark = s.get(NotifyMark, EVENTS_MARK)
        if mark is None:
            top = s.execute(select(func.max(JobEvent.id))).scalar() or 0
            s.add(NotifyMark(name=EVENTS_MARK, value=float(top)))
            s.commit()
            return 0
        evs = s.execute(select(JobEvent).where(JobEvent.id > int(mark.value)).order_by(JobEvent.id)
                        .limit(batch)).scalars().all()
        ripe = next((k for k, e in enumerate(evs) if e.ts > now - lag_s), len(evs))
        evs = evs[:ripe]
        wanted = [e for e in evs if e.kind == "transition" and e.to_status in JOB_EVENTS]
        jobs = {j.id: j for j in s.execute(select(Job).where(Job.id.in_({e.job_id for e in wanted}))).scalars()} \
            if wanted else {}
        for e in wanted:
            j = jobs.get(e.job_id)
            if j is None:
                continue
            queued += enqueue(s, JOB_EVENTS[e.to_status], j.project_id, {
                "job_id": j.id, "name": j.name, "class": j.workload_class, "attempt": e.attempt,
                "status": e.to_status, "message": e.message}, now=now)
        if evs:
            mark.value = float(evs[-1].id)
            s.add(mark)
        queued += _collect_nodes(s, now)
        queued += _collect_budgets(s, now)
        s.commit()
    return queued


def _collect_budgets(s: Session, now: float) -> int:
    """Projects whose GPU-hours this month crossed 80 % or 100 % of their budget (once per
    level and month). Spent as the scheduler counts it (`snapshot.usage_from_ledger`)."""
    checked = s.get(NotifyMark, BUDGET_CHECKED)
    if checked is not None and now - checked.value < BUDGET_EVERY_S:
        return 0
    s.merge(NotifyMark(name=BUDGET_CHECKED, value=now))
    budgets = {p.id: p.budget_gpu_hours for p in s.execute(
        select(Project).where(Project.budget_gpu_hours.is_not(None))).scalars() if p.budget_gpu_hours}
    if not budgets:
        return 0
    period = month_start(now)
    rows = s.execute(select(Ledger).where(Ledger.project_id.in_(list(budgets)),
                                          or_(Ledger.ended_at.is_(None), Ledger.ended_at >= period))).scalars().all()
    spent, _, _ = usage_from_ledger(rows, now, 86400.0)
    told = {m.name for m in s.execute(select(NotifyMark).where(NotifyMark.name.like(BUDGET_MARK + "%"))).scalars()}
    queued = 0
    for pid, budget in sorted(budgets.items()):
        used = spent.get(pid, 0.0)
        for level in BUDGET_LEVELS:
            name = f"{BUDGET_MARK}{pid}:{int(period)}:{level}"
            if used >= budget * level / 100.0 and name not in told:
                s.add(NotifyMark(name=name, value=now))
                queued += enqueue(s, f"budget.{level}", pid, {
                    "budget_gpu_hours": budget, "spent_gpu_hours": round(used, 2), "period_start": period,
                    "message": f"{used:.1f} of {budget:g} GPU-hours spent this month ({level} % reached)"}, now=now)
    return queued


def _collect_nodes(s: Session, now: float) -> int:
    told = {m.name[len(NODE_MARK):]: m for m in s.execute(
        select(NotifyMark).where(NotifyMark.name.like(NODE_MARK + "%"))).scalars()}
    queued = 0
    unhealthy = set()
    for n in s.execute(select(Node)).scalars():
        state, reason = n.effective_state()
        if state != "unhealthy":
            continue
        unhealthy.add(n.id)
        if n.id not in told:
            s.add(NotifyMark(name=NODE_MARK + n.id, value=now))
            queued += enqueue(s, "node.unhealthy", None, {"node": n.id, "pool": n.pool, "reason": reason}, now=now)
    for nid, m in told.items():
        if nid not in unhealthy:
            s.delete(m)  # healthy again: the next spell is told again
    return queued


# --------------------------------------------------------------------------- delivery

Sender = Callable[[NotifyOutbox], None]


def deliver_due(engine: Engine, settings: Settings, now: float, *, limit: int = 100,
                send: Sender | None = None) -> dict[str, int]:
    """Send what is due; returns counts of delivered, retried and given-up messages."""
    send = send or (lambda row: send_one(settings, row))
    with Session(engine) as s:
        due = s.execute(select(NotifyOutbox).where(NotifyOutbox.delivered_at.is_(None), NotifyOutbox.dead.is_(False),
                                                   NotifyOutbox.next_at <= now)
                        .order_by(NotifyOutbox.next_at, NotifyOutbox.id).limit(limit)).scalars().all()
        s.expunge_all()
    out = {"delivered": 0, "retried": 0, "dead": 0}
    for row in due:
        err = ""
        try:
            send(row)  # no transaction open here
        except Exception as e:  # any failure of the channel: retry later
            err = f"{type(e).__name__}: {str(e)[:300]}"
        with Session(engine) as s:
            cur = s.get(NotifyOutbox, row.id)
            if cur is None or cur.delivered_at is not None:
                continue
            cur.attempts += 1
            if not err:
                cur.delivered_at, cur.last_error = now, ""
                out["delivered"] += 1
            else:
                cur.last_error = err
                if cur.attempts >= settings.notify_max_attempts:
                    cur.dead = True
                    out["dead"] += 1
                    log.warning("notification %s to %s given up after %d attempts: %s", cur.id, cur.channel,
                                cur.attempts, err)
                else:
                    cur.next_at = now + backoff_s(settings, cur.attempts)
                    out["retried"] += 1
            s.add(cur)
            s.commit()
    return out


def backoff_s(settings: Settings, attempts: int) -> float:
    """Delay before attempt `attempts + 1`: base, 2 x base, 4 x base ... capped."""
    return min(settings.notify_retry_max_s, settings.notify_retry_base_s * (2 ** max(0, attempts - 1)))


def send_one(settings: Settings, row: NotifyOutbox) -> None:
    if row.channel == "webhook":
        if not any(row.target.startswith(a) for a in settings.notify_webhook_allow_prefixes):
            raise PermissionError("the webhook URL is no longer allowed by the broker's settings")
        r = httpx.post(row.target, content=json.dumps(row.payload, sort_keys=True).encode(),
                       headers={"Content-Type": "application/json", "User-Agent": "compute-broker",
                                "X-Broker-Event": row.event}, timeout=settings.notify_timeout_s,
                       follow_redirects=False)
        if r.status_code >= 300:
            raise RuntimeError(f"webhook answered {r.status_code}")
        return
    if row.channel == "email":
        if not settings.notify_smtp_host:
            raise RuntimeError("no SMTP relay configured")
        msg = EmailMessage()
        msg["From"] = settings.notify_smtp_from
        msg["To"] = row.target
        msg["Subject"] = f"[compute broker] {row.event}" + (f" ({row.payload.get('project')})"
                                                            if row.payload.get("project") else "")
        msg.set_content("\n".join(f"{k}: {v}" for k, v in sorted(row.payload.items())) + "\n")
        with smtplib.SMTP(settings.notify_smtp_host, settings.notify_smtp_port,
                          timeout=settings.notify_timeout_s) as smtp:
            if settings.notify_smtp_starttls:
                smtp.starttls()
            if settings.notify_smtp_user:
                smtp.login(settings.notify_smtp_user, settings.notify_smtp_password)
            smtp.send_message(msg)
        return
    raise ValueError(f"unknown channel {row.channel!r}")


def prune(engine: Engine, now: float, *, keep_s: float = KEEP_S) -> int:
    """Delete delivered and given-up messages older than `keep_s` (at most once an hour)."""
    with Session(engine) as s:
        mark = s.get(NotifyMark, PRUNED_MARK)
        if mark is not None and now - mark.value < PRUNE_EVERY_S:
            return 0
        s.merge(NotifyMark(name=PRUNED_MARK, value=now))
        n = s.execute(delete(NotifyOutbox).where(
            NotifyOutbox.created_at < now - keep_s,
            or_(NotifyOutbox.delivered_at.is_not(None), NotifyOutbox.dead.is_(True)))).rowcount
        s.commit()
    return n


def run_notifications(engine: Engine, settings: Settings, now: float) -> None:
    """The periodic task: collect, deliver what is due, prune old messages."""
    collect(engine, now)
    deliver_due(engine, settings, now)
    prune(engine, now)
