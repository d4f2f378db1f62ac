"""Quota administration (ETag / If-Match, validation with explanations), pools, and the
project usage view (`GET /api/v1/projects/{id}/usage`).

Quota objects are `QuotaRow`s: owner (department | project) x flavor (pool, gpu model; "" =
every model of the pool) x resource, with guaranteed <= nominal <= limit. Each carries
`version`; its ETag is ``"q<id>.<version>"``. Updates and deletes need If-Match (428 without,
412 when stale) and are compare-and-set (``UPDATE ... WHERE id=:id AND version=:v``).

Validation: the whole tree is rebuilt with the proposed change and checked by
`quotas.tree.validate_tree` (children's guarantees fit the parent's nominal, the departments'
guarantees fit the pool capacity, each spec is ordered). Only findings the change *introduces*
refuse it (422 with every finding's code and sentence), so one pre-existing inconsistency
elsewhere never locks admins out of fixing things.

Who: department quota rows -> platform-admins; project rows -> department-admins of the
project's department (they split the department's quota) and platform-admins.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from broker.errors import Conflict, Invalid, NotFound, PreconditionFailed
from broker.models import HOLDING, Department, Job, Node, Placement, Pool, Project, QuotaRow
from broker.ports import Clock
from broker.services import scheduling_queries as srepo
from broker.auth.policy import Action, Ref, Resource
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.services.admin.tenancy import department_not_found, matches
from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz, project_not_found
from broker.services.snapshot import _quotas, month_start, usage_from_ledger
from quotas.amount import Amount
from quotas.budget import remaining_reservation
from quotas.tree import validate_tree
from scheduler.model import Flavor

RESOURCES = ("gpus", "cpus", "memory_gb")
_HOLDING = [s.value for s in HOLDING]


def quota_not_found(qid: Any) -> NotFound:
    return NotFound(f"quota {qid!r} not found", code="QUOTA_NOT_FOUND")


def quota_etag(q: QuotaRow) -> str:
    return f'"q{q.id}.{q.version}"'


def quota_public(q: QuotaRow) -> dict:
    return {"id": q.id, "owner_kind": q.owner_kind, "owner_id": q.owner_id, "pool": q.pool,
            "gpu_model": q.gpu_model, "resource": q.resource, "guaranteed": q.guaranteed, "nominal": q.nominal,
            "limit": q.limit, "version": q.version, "etag": quota_etag(q), "updated_at": q.updated_at}


def _figures(q: QuotaRow) -> dict:
    return {"guaranteed": q.guaranteed, "nominal": q.nominal, "limit": q.limit}


def check_ordered(guaranteed: float, nominal: float, limit: float | None) -> None:
    """Cheap local checks before the tree (negative numbers, order)."""
    if guaranteed < 0 or nominal < 0 or (limit is not None and limit < 0):
        raise Invalid("quota figures cannot be negative", code="QUOTA_NEGATIVE")


def capacity_of(nodes: Sequence[Node]) -> dict[tuple[Flavor, str], Amount]:
    cap: dict[tuple[Flavor, str], Amount] = defaultdict(lambda: Amount.of(0))
    for n in nodes:
        f = Flavor(n.pool, n.gpu_model)
        cap[(f, "gpus")] += n.gpus
        cap[(f, "cpus")] += n.cpus
        cap[(f, "memory_gb")] += n.memory_gb
    return dict(cap)


def tree_problems(rows: Sequence[QuotaRow], projects: Sequence[Project], nodes: Sequence[Node]) -> list:
    models_by_pool: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        if n.gpu_model and n.gpu_model not in models_by_pool[n.pool]:
            models_by_pool[n.pool].append(n.gpu_model)
    specs = _quotas(rows, models_by_pool)
    dept_of = {p.id: p.department_id for p in projects}
    departments = {oid: sp for (kind, oid), sp in specs.items() if kind == "department"}
    projs = {oid: (dept_of.get(oid, ""), sp) for (kind, oid), sp in specs.items() if kind == "project"}
    return validate_tree(capacity_of(nodes), departments, projs)


def _key(p) -> tuple:
    return (p.code, p.where, str(p.key))


def problem_public(p) -> dict:
    flavor, resource = p.key
    return {"code": p.code, "where": p.where, "pool": getattr(flavor, "pool", str(flavor)),
            "gpu_model": getattr(flavor, "gpu_model", ""), "resource": resource, "message": p.message}


class QuotaAdmin:
    def __init__(self, engine, authz: Authz, *, clock: Clock = time.time,
                 on_change: Callable[[], None] | None = None,
                 results: Callable[[str], dict] | None = None) -> None:
        self.engine, self.authz, self.clock, self.on_change = engine, authz, clock, on_change
        self.results = results  # project -> its results storage (services.storage.measure)

    # ------------------------------------------------------------------ authorization
    def _owner_ref(self, owner_kind: str, owner_id: str) -> tuple[Ref, NotFound]:
        if owner_kind == "project":
            ref = self.authz.project_ref(owner_id)
            if ref is None:
                raise project_not_found(owner_id)
            return ref, project_not_found(owner_id)
        if owner_kind == "department":
            return Ref(Resource.DEPARTMENT, department=owner_id), department_not_found(owner_id)
        raise Invalid("owner_kind must be 'department' or 'project'", code="BAD_OWNER_KIND")

    def _require_write(self, p: AuthPrincipal, owner_kind: str, owner_id: str, hidden: NotFound | None = None) -> None:
        ref, nf = self._owner_ref(owner_kind, owner_id)
        action = Action.PROJECT_QUOTA_UPDATE if owner_kind == "project" else Action.DEPARTMENT_QUOTA_UPDATE
        self.authz.require(p, action, ref, hidden=hidden or nf)

    def _require_read(self, p: AuthPrincipal, owner_kind: str, owner_id: str, hidden: NotFound | None = None) -> None:
        ref, nf = self._owner_ref(owner_kind, owner_id)
        action = Action.PROJECT_READ if owner_kind == "project" else Action.DEPARTMENT_READ
        self.authz.require(p, action, ref, hidden=hidden or nf)

    # ------------------------------------------------------------------ reads
    def list(self, p: AuthPrincipal, *, owner_kind: str | None = None, owner_id: str | None = None) -> dict:
        with Session(self.engine) as s:
            q = select(QuotaRow)
            if owner_kind:
                q = q.where(QuotaRow.owner_kind == owner_kind)
            if owner_id:
                q = q.where(QuotaRow.owner_id == owner_id)
            rows = s.execute(q.order_by(QuotaRow.owner_kind, QuotaRow.owner_id, QuotaRow.id)).scalars().all()
        pp = self.authz.principal(p)
        from broker.auth.policy import visible

        out = []
        for r in rows:
            try:
                ref, _ = self._owner_ref(r.owner_kind, r.owner_id)
            except (NotFound, Invalid):
                continue
            if visible(pp, ref):
                out.append(quota_public(r))
        return {"items": out}

    def get(self, p: AuthPrincipal, qid: int) -> dict:
        with Session(self.engine) as s:
            q = s.get(QuotaRow, qid)
        if q is None:
            raise quota_not_found(qid)
        self._require_read(p, q.owner_kind, q.owner_id, hidden=quota_not_found(qid))
        return quota_public(q)

    # ------------------------------------------------------------------ writes
    def create(self, p: AuthPrincipal, caller: Caller, *, owner_kind: str, owner_id: str, pool: str,
               gpu_model: str, resource: str, guaranteed: float, nominal: float, limit: float | None) -> dict:
        self._require_write(p, owner_kind, owner_id)
        if resource not in RESOURCES:
            raise Invalid(f"resource must be one of {', '.join(RESOURCES)}", code="BAD_RESOURCE")
        check_ordered(guaranteed, nominal, limit)
        with Session(self.engine, expire_on_commit=False) as s:
            if s.get(Pool, pool) is None:
                raise Invalid(f"pool {pool!r} does not exist", code="UNKNOWN_POOL")
            row = QuotaRow(owner_kind=owner_kind, owner_id=owner_id, pool=pool, gpu_model=gpu_model,
                           resource=resource, guaranteed=guaranteed, nominal=nominal, limit=limit,
                           version=1, updated_at=self.clock())
            self._validate(s, add=row)
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                raise Conflict("a quota for this owner, flavor and resource exists; update it instead",
                               code="QUOTA_EXISTS") from None
            body = quota_public(row)
            audit.record(s, caller, action="quota.create", target_kind="quota", target_id=str(row.id), after=body,
                         **self._scope(owner_kind, owner_id), clock=self.clock)
            s.commit()
        self._changed()
        return body

    def update(self, p: AuthPrincipal, caller: Caller, qid: int, *, if_match: str | None,
               changes: Mapping[str, Any]) -> dict:
        unknown = set(changes) - {"guaranteed", "nominal", "limit"}
        if unknown:
            raise Invalid(f"unknown or read-only field(s): {', '.join(sorted(unknown))}", code="UNKNOWN_FIELD")
        with Session(self.engine, expire_on_commit=False) as s:
            q = s.get(QuotaRow, qid)
            if q is None:
                raise quota_not_found(qid)
            self._require_write(p, q.owner_kind, q.owner_id, hidden=quota_not_found(qid))
            self._precondition(if_match, q)
            before = _figures(q)
            after = {**before, **changes}
            check_ordered(after["guaranteed"], after["nominal"], after["limit"])
            self._validate(s, replace=(q.id, after))
            res = s.execute(update(QuotaRow.__table__)
                            .where(and_(QuotaRow.__table__.c.id == qid, QuotaRow.__table__.c.version == q.version))
                            .values(**after, version=q.version + 1, updated_at=self.clock()))
            if res.rowcount != 1:
                s.rollback()
                raise PreconditionFailed("the quota changed since you read it; GET it again and retry",
                                         code="STALE_ETAG")
            s.expire(q)
            q = s.get(QuotaRow, qid)
            body = quota_public(q)
            audit.record(s, caller, action="quota.update", target_kind="quota", target_id=str(qid), before=before,
                         after=_figures(q), **self._scope(q.owner_kind, q.owner_id), clock=self.clock)
            s.commit()
        self._changed()
        return body

    def delete(self, p: AuthPrincipal, caller: Caller, qid: int, *, if_match: str | None) -> None:
        with Session(self.engine) as s:
            q = s.get(QuotaRow, qid)
            if q is None:
                raise quota_not_found(qid)
            self._require_write(p, q.owner_kind, q.owner_id, hidden=quota_not_found(qid))
            self._precondition(if_match, q)
            before = quota_public(q)
            self._validate(s, remove=q.id)
            res = s.execute(QuotaRow.__table__.delete().where(
                and_(QuotaRow.__table__.c.id == qid, QuotaRow.__table__.c.version == q.version)))
            if res.rowcount != 1:
                s.rollback()
                raise PreconditionFailed("the quota changed since you read it", code="STALE_ETAG")
            audit.record(s, caller, action="quota.delete", target_kind="quota", target_id=str(qid), before=before,
                         **self._scope(before["owner_kind"], before["owner_id"]), clock=self.clock)
            s.commit()
        self._changed()

    def validate_all(self, p: AuthPrincipal) -> dict:
        """The current tree's findings (platform and department admins use it as a report)."""
        self.authz.require(p, Action.AGGREGATES_READ)
        with Session(self.engine) as s:
            probs = tree_problems(srepo.quota_rows(s), srepo.projects(s), srepo.nodes(s))
        return {"problems": [problem_public(x) for x in probs]}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _precondition(if_match: str | None, q: QuotaRow) -> None:
        if if_match is None:
            raise Invalid("updates need an If-Match header with the quota's ETag", code="IF_MATCH_REQUIRED",
                          status=428)
        if not matches(if_match, quota_etag(q)):
            raise PreconditionFailed("the quota changed since you read it; GET it again and retry",
                                     code="STALE_ETAG", details={"current_etag": quota_etag(q)})

    def _validate(self, s: Session, *, add: QuotaRow | None = None, replace: tuple[int, dict] | None = None,
                  remove: int | None = None, moved_nodes: Sequence[Node] | None = None) -> None:
        rows = list(srepo.quota_rows(s))
        projects, nodes = srepo.projects(s), srepo.nodes(s)
        before = {_key(x) for x in tree_problems(rows, projects, nodes)}
        if moved_nodes is not None:
            nodes = moved_nodes
        proposed: list[QuotaRow] = []
        for r in rows:
            if remove is not None and r.id == remove:
                continue
            if replace is not None and r.id == replace[0]:
                r = QuotaRow(**{**{c: getattr(r, c) for c in ("id", "owner_kind", "owner_id", "pool", "gpu_model",
                                                               "resource", "version")}, **replace[1]})
            proposed.append(r)
        if add is not None:
            proposed.append(add)
        new = [x for x in tree_problems(proposed, projects, nodes) if _key(x) not in before]
        if new:
            raise Invalid("the change would make the quota tree inconsistent: " + " ".join(x.message for x in new),
                          code="QUOTA_INVALID", details={"problems": [problem_public(x) for x in new]})

    def _scope(self, owner_kind: str, owner_id: str) -> dict:
        if owner_kind == "project":
            return {"department": self.authz.project_department(owner_id), "project": owner_id}
        return {"department": owner_id, "project": None}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ pools
    def update_pool(self, p: AuthPrincipal, caller: Caller, name: str, changes: Mapping[str, Any]) -> dict:
        self.authz.require(p, Action.POOL_ADMIN)
        allowed = {"lend_to_innovation", "description", "workload_class"}
        unknown = set(changes) - allowed
        if unknown:
            raise Invalid(f"unknown or read-only field(s): {', '.join(sorted(unknown))}", code="UNKNOWN_FIELD")
        if "workload_class" in changes and changes["workload_class"] not in ("operation", "innovation"):
            raise Invalid("workload_class must be 'operation' or 'innovation'", code="BAD_CLASS")
        with Session(self.engine, expire_on_commit=False) as s:
            pool = s.get(Pool, name)
            created = pool is None
            before = None if created else pool_public(pool)
            if created:
                if "workload_class" not in changes:
                    raise Invalid("a new pool needs a workload_class", code="BAD_CLASS")
                pool = Pool(name=name, workload_class=changes["workload_class"])
            for k, v in changes.items():
                setattr(pool, k, v)
            s.add(pool)
            s.flush()
            audit.record(s, caller, action="pool.create" if created else "pool.update", target_kind="pool",
                         target_id=name, before=before, after=pool_public(pool), clock=self.clock)
            s.commit()
        self._changed()
        return pool_public(pool)

    # ------------------------------------------------------------------ nodes
    def update_node(self, p: AuthPrincipal, caller: Caller, node_id: str, changes: Mapping[str, Any]) -> dict:
        """Platform-admins: move a node to another pool, cordon or drain it, or lift their own
        cordon/drain. A move is checked against the quota tree like a quota change (a pool's
        guarantees must still fit its capacity); a node holding running work cannot move
        (cordon it and let the work end first), so no running job changes pool under its feet."""
        self.authz.require(p, Action.POOL_ADMIN)
        unknown = set(changes) - {"pool", "state", "reason"}
        if unknown:
            raise Invalid(f"unknown or read-only field(s): {', '.join(sorted(unknown))}", code="UNKNOWN_FIELD")
        if "reason" in changes and "state" not in changes:
            raise Invalid("a reason goes with a state change", code="REASON_WITHOUT_STATE")
        if not changes:
            raise Invalid("nothing to change: give pool and/or state", code="EMPTY_PATCH")
        with Session(self.engine, expire_on_commit=False) as s:
            node = s.get(Node, node_id)
            if node is None:
                raise NotFound(f"node {node_id!r} does not exist", code="NODE_NOT_FOUND")
            before = node_admin_public(node)
            if "pool" in changes:
                self._move(s, node, changes["pool"])
            if "state" in changes:
                _set_admin_state(node, changes["state"], changes.get("reason") or "")
            node.updated_at = self.clock()
            s.add(node)
            s.flush()
            after = node_admin_public(node)
            audit.record(s, caller, action="node.update", target_kind="node", target_id=node_id, before=before,
                         after=after, clock=self.clock)
            s.commit()
        self._changed()
        return after

    def _move(self, s: Session, node: Node, override: str | None) -> None:
        # None: back to the executor's label, checked like any move
        target = override if override is not None else (node.observed_pool or node.pool)
        if s.get(Pool, target) is None:
            raise Invalid(f"pool {target!r} does not exist", code="UNKNOWN_POOL")
        if target != node.pool:
            busy = s.execute(select(Placement.job_id).join(Job, and_(Job.id == Placement.job_id,
                                                                     Job.attempt == Placement.attempt))
                             .where(Placement.node_id == node.id, Job.status.in_(_HOLDING)).distinct()).scalars().all()
            if busy:
                raise Conflict(f"node {node.id!r} runs {len(busy)} job(s); cordon it, let them end (or cancel "
                               "them), then move it", code="NODE_BUSY", details={"jobs": sorted(busy)[:50]})
            moved = [Node(**{**n.model_dump(), "pool": target}) if n.id == node.id else n for n in srepo.nodes(s)]
            self._validate(s, moved_nodes=moved)
            node.pool = target
        node.pool_override = override

    # ------------------------------------------------------------------ usage
    def usage(self, p: AuthPrincipal, project_id: str) -> dict:
        self.authz.require_project(p, project_id, Action.PROJECT_USAGE_READ)
        now = self.clock()
        with Session(self.engine) as s:
            proj = s.get(Project, project_id)
            if proj is None:
                raise project_not_found(project_id)
            dept = s.get(Department, proj.department_id)
            rows = srepo.quota_rows(s)
            nodes = srepo.nodes(s)
            holding = s.execute(select(Job).where(Job.status.in_(_HOLDING))).scalars().all()
            pending = s.execute(select(Job.project_id, Job.id).where(Job.status == "PENDING",
                                                                      Job.project_id == project_id)).all()
            ledger = srepo.ledger_since(s, month_start(now))
            project_rows = srepo.projects(s)
        out = usage_view(proj, dept, rows, nodes, holding, len(pending), ledger, project_rows, now)
        if self.results is not None:
            out["results_storage"] = self.results(project_id)
        return out


ADMIN_REASON = "admin: "
_ADMIN_STATES = ("cordoned", "draining")


def node_admin_public(n: Node) -> dict:
    state, reason = n.effective_state()
    return {"id": n.id, "pool": n.pool, "pool_source": "admin" if n.pool_override else "executor",
            "state": state, "state_reason": reason, "health_state": n.state, "admin_state": n.admin_state}


def _set_admin_state(node: Node, state: str, reason: str) -> None:
    """cordoned (no new work) and draining (no new work; running work ends) are an admin's,
    kept beside the health state (never overwriting it); `ready` lifts only that: a node the
    health checks or the executor took out stays out until they bring it back."""
    if state in _ADMIN_STATES:
        node.admin_state, node.admin_reason = state, ADMIN_REASON + (reason or f"{state} by a platform-admin")
        return
    if state != "ready":
        raise Invalid("state must be 'ready', 'cordoned' or 'draining'", code="BAD_NODE_STATE")
    if node.admin_state is not None:
        node.admin_state, node.admin_reason = None, ""
        return
    if node.state == "ready":
        return
    raise Conflict(f"node {node.id!r} is {node.state} ({node.state_reason or 'no reason given'}); only an "
                   "admin's cordon or drain can be lifted here", code="NODE_STATE_NOT_ADMIN",
                   details={"state": node.state, "state_reason": node.state_reason})


def pool_public(p: Pool) -> dict:
    return {"name": p.name, "class": p.workload_class, "lend_to_innovation": p.lend_to_innovation,
            "description": p.description}


def _used_by_project(holding: Sequence[Job]) -> dict[str, dict[tuple[str, str, str], float]]:
    out: dict[str, dict[tuple[str, str, str], float]] = defaultdict(lambda: defaultdict(float))
    for j in holding:
        pool, model = j.flavor_pool or "", j.flavor_gpu_model or ""
        for res, per in (("gpus", j.gpus), ("cpus", j.cpus), ("memory_gb", j.memory_gb)):
            out[j.project_id][(pool, model, res)] += per * j.workers
    return out


def usage_view(proj: Project, dept: Department | None, rows: Sequence[QuotaRow], nodes: Sequence[Node],
               holding: Sequence[Job], pending_count: int, ledger, projects: Sequence[Project], now: float) -> dict:
    """Entitlement, usage, borrowing both ways and budget for one project (pure over rows).

    Borrowing attribution (per flavor and resource): a project over its nominal borrows
    ``used - nominal``; the idle nominal of others (``nominal - used`` where positive) is what
    is lent. Each borrower's amount is attributed to lenders in proportion to their idle
    nominal - the same picture Kueue's cohort borrowing gives, named per project.
    """
    models_by_pool: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        if n.gpu_model and n.gpu_model not in models_by_pool[n.pool]:
            models_by_pool[n.pool].append(n.gpu_model)
    specs = _quotas(rows, models_by_pool)
    used = _used_by_project(holding)
    nominal: dict[str, dict[tuple[str, str, str], float]] = defaultdict(dict)
    for (kind, owner), sp in specs.items():
        if kind == "project":
            for (flavor, res), spec in sp.items():
                nominal[owner][(flavor.pool, flavor.gpu_model, res)] = spec.nominal.value
    keys = set()
    for d in (used, nominal):
        for m in d.values():
            keys.update(m.keys())
    me = proj.id
    borrowed, lent = [], []
    for key in sorted(keys):
        over = {p: max(0.0, used[p].get(key, 0.0) - nominal[p].get(key, 0.0)) for p in set(used) | set(nominal)}
        idle = {p: max(0.0, nominal[p].get(key, 0.0) - used[p].get(key, 0.0)) for p in set(used) | set(nominal)}
        total_idle = sum(idle.values())
        pool, model, res = key
        if over.get(me, 0.0) > 0 and total_idle > 0:
            lenders = [{"project": q, "amount": round(over[me] * idle[q] / total_idle, 6)}
                       for q in sorted(idle) if idle[q] > 0 and q != me]
            borrowed.append({"pool": pool, "gpu_model": model, "resource": res, "amount": over[me], "from": lenders})
        elif over.get(me, 0.0) > 0:
            borrowed.append({"pool": pool, "gpu_model": model, "resource": res, "amount": over[me], "from": []})
        if idle.get(me, 0.0) > 0 and total_idle > 0:
            borrowers = [{"project": q, "amount": round(over[q] * idle[me] / total_idle, 6)}
                         for q in sorted(over) if over[q] > 0 and q != me]
            if borrowers:
                lent.append({"pool": pool, "gpu_model": model, "resource": res, "idle_nominal": idle[me],
                             "to": borrowers})
    spent_p, spent_d, _ = usage_from_ledger(ledger, now, 3600.0)
    reserved_p = 0.0
    reserved_d = 0.0
    dept_projects = {p.id for p in projects if dept is not None and p.department_id == dept.id}
    for j in holding:
        start = j.started_at or j.admitted_at or now
        r = remaining_reservation(j.gpus * j.workers, start, j.max_runtime_s, now).value
        if j.project_id == me:
            reserved_p += r
        if j.project_id in dept_projects:
            reserved_d += r
    entitlement = [{"pool": q.pool, "gpu_model": q.gpu_model, "resource": q.resource, "guaranteed": q.guaranteed,
                    "nominal": q.nominal, "limit": q.limit}
                   for q in rows if q.owner_kind == "project" and q.owner_id == me]
    usage = [{"pool": k[0], "gpu_model": k[1], "resource": k[2], "in_use": v,
              "nominal": nominal[me].get(k, 0.0)} for k, v in sorted(used[me].items())]
    running = sum(1 for j in holding if j.project_id == me)
    return {
        "project": me,
        "department": proj.department_id,
        "period_start": month_start(now),
        "entitlement": entitlement,
        "usage": usage,
        "jobs": {"holding": running, "pending": pending_count, "max_running": proj.max_running,
                 "max_pending": proj.max_pending},
        "borrowing": borrowed,
        "lending": lent,
        "budget": _budget(proj.budget_gpu_hours, spent_p.get(me, 0.0), reserved_p),
        "department_budget": _budget(dept.budget_gpu_hours if dept else None,
                                     spent_d.get(proj.department_id, 0.0), reserved_d),
    }


def _budget(limit: float | None, spent: float, reserved: float) -> dict:
    left = None if limit is None else max(0.0, limit - spent - reserved)
    return {"gpu_hours": limit, "spent": round(spent, 6), "reserved": round(reserved, 6),
            "left": None if left is None else round(left, 6)}
