"""Tenancy administration: users, memberships, departments and projects.

Who may do what is `broker.auth.policy` (escalation through `can_grant`: nobody hands out
a role above their own scope). Every change writes an audit entry in its own transaction and
invalidates the authorization cache, so new grants apply at once in this process.

Optimistic concurrency for projects and departments: their ETag is a hash of their editable
fields; an update carries If-Match and is a compare-and-set (`UPDATE ... WHERE <all fields as
read>`), so a concurrent edit makes the second writer get 412 instead of silently winning.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Mapping

import orjson
from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from broker.errors import Conflict, Invalid, NotFound, PreconditionFailed
from broker.models import Department, Project
from broker.models import Membership, User
from broker.auth.policy import Action, Decision, Grant, PROJECT_ROLES, Ref, Resource, can_grant
from broker.ports import Clock
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz, grant_of, project_not_found

PROJECT_FIELDS = ("name", "weight", "budget_gpu_hours", "max_running", "max_pending", "allow_process_runtime")
# Fields only a platform-admin may set (a department-admin manages the rest of a project).
PLATFORM_PROJECT_FIELDS = frozenset({"allow_process_runtime"})
DEPARTMENT_FIELDS = ("name", "weight", "budget_gpu_hours")


def department_not_found(dept: str) -> NotFound:
    return NotFound(f"department {dept!r} not found", code="DEPARTMENT_NOT_FOUND")


def etag_of(kind: str, ident: str, fields: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps([kind, ident, dict(fields)], option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f'"{digest[:20]}"'


def matches(if_match: str | None, etag: str) -> bool:
    """RFC 9110 If-Match: a list of entity tags or "*"; weak tags never match (strong compare)."""
    if if_match is None:
        return False
    tags = [t.strip() for t in if_match.split(",")]
    return "*" in tags or etag in tags


def require_if_match(if_match: str | None, etag: str) -> None:
    if if_match is None:
        raise Invalid("updates need an If-Match header with the ETag you read", code="IF_MATCH_REQUIRED",
                      status=428)
    if not matches(if_match, etag):
        raise PreconditionFailed("the object changed since you read it; GET it again and retry",
                                 code="STALE_ETAG", details={"current_etag": etag})


def user_public(u: User) -> dict:
    return {"id": u.id, "display_name": u.display_name, "email": u.email, "oidc_subject": u.oidc_subject,
            "disabled": u.disabled_at is not None, "created_at": u.created_at}


def membership_public(m: Membership) -> dict:
    return {"id": m.id, "user": m.user_id, "role": m.role, "department": m.department_id, "project": m.project_id,
            "created_at": m.created_at, "created_by": m.created_by}


def project_fields(p: Project) -> dict:
    return {f: getattr(p, f) for f in PROJECT_FIELDS}


def project_public(p: Project) -> dict:
    return {"id": p.id, "department": p.department_id, **project_fields(p),
            "etag": etag_of("project", p.id, project_fields(p))}


def department_fields(d: Department) -> dict:
    return {f: getattr(d, f) for f in DEPARTMENT_FIELDS}


def department_public(d: Department) -> dict:
    return {"id": d.id, **department_fields(d), "etag": etag_of("department", d.id, department_fields(d))}


class TenancyAdmin:
    def __init__(self, engine, authz: Authz, *, clock: Clock = time.time,
                 on_change: Callable[[], None] | None = None) -> None:
        self.engine, self.authz, self.clock, self.on_change = engine, authz, clock, on_change

    # ------------------------------------------------------------------ users
    def create_user(self, p: AuthPrincipal, caller: Caller, *, id: str, display_name: str = "",
                    email: str | None = None, oidc_subject: str | None = None) -> dict:
        self.authz.require(p, Action.USER_ADMIN)
        with Session(self.engine, expire_on_commit=False) as s:
            if s.get(User, id) is not None:
                raise Conflict(f"user {id!r} exists", code="USER_EXISTS")
            u = User(id=id, display_name=display_name, email=email, oidc_subject=oidc_subject,
                     created_at=self.clock())
            s.add(u)
            try:
                s.flush()
            except IntegrityError:
                raise Conflict("a user with this OIDC subject exists", code="USER_EXISTS") from None
            audit.record(s, caller, action="user.create", target_kind="user", target_id=id, after=user_public(u),
                         clock=self.clock)
            s.commit()
            return user_public(u)

    def list_users(self, p: AuthPrincipal) -> dict:
        self.authz.require(p, Action.USER_ADMIN)
        with Session(self.engine) as s:
            return {"items": [user_public(u) for u in s.execute(select(User).order_by(User.id).limit(5000)).scalars()]}

    def set_user_disabled(self, p: AuthPrincipal, caller: Caller, user_id: str, disabled: bool) -> dict:
        self.authz.require(p, Action.USER_ADMIN)
        with Session(self.engine, expire_on_commit=False) as s:
            u = s.get(User, user_id)
            if u is None:
                raise NotFound(f"user {user_id!r} not found", code="USER_NOT_FOUND")
            before = user_public(u)
            u.disabled_at = (u.disabled_at or self.clock()) if disabled else None
            s.add(u)
            audit.record(s, caller, action="user.disable" if disabled else "user.enable", target_kind="user",
                         target_id=user_id, before=before, after=user_public(u), clock=self.clock)
            s.commit()
        self.authz.invalidate()
        return user_public(u)

    # ------------------------------------------------------------------ memberships
    def _grant_for(self, role: str, department: str | None, project: str | None) -> Grant:
        dept = department
        if project is not None:
            dept = self.authz.project_department(project)
            if dept is None:
                raise project_not_found(project)
        g = grant_of(role, dept, project)
        if g is None:
            raise Invalid(f"role {role!r} cannot be granted on this scope", code="BAD_ROLE_SCOPE",
                          details={"role": role, "department": department, "project": project})
        return g

    def _check_grant(self, p: AuthPrincipal, g: Grant) -> None:
        d = can_grant(self.authz.principal(p), g)
        if d is Decision.HIDE:
            raise project_not_found(g.project) if g.project else department_not_found(g.department or "")
        if d is Decision.DENY:
            raise_forbidden(f"you cannot grant or revoke {g.role.value} here")

    def list_members(self, p: AuthPrincipal, *, project: str | None = None, department: str | None = None) -> dict:
        if project is not None:
            self.authz.require_project(p, project, Action.PROJECT_MEMBERS_READ)
            cond = Membership.project_id == project
        else:
            ref = Ref(Resource.DEPARTMENT, department=department)
            self.authz.require(p, Action.DEPARTMENT_USAGE_READ, ref, hidden=department_not_found(department or ""))
            cond = and_(Membership.department_id == department, Membership.project_id.is_(None))
        with Session(self.engine) as s:
            rows = s.execute(select(Membership).where(cond).order_by(Membership.user_id, Membership.role)).scalars()
            return {"items": [membership_public(m) for m in rows]}

    def grant(self, p: AuthPrincipal, caller: Caller, *, user: str, role: str, department: str | None = None,
              project: str | None = None) -> dict:
        g = self._grant_for(role, department, project)
        self._check_grant(p, g)
        with Session(self.engine, expire_on_commit=False) as s:
            u = s.get(User, user)
            if u is None:
                raise Invalid(f"user {user!r} does not exist", code="UNKNOWN_USER")
            existing = s.execute(select(Membership).where(
                Membership.user_id == user, Membership.role == g.role.value,
                _eq(Membership.department_id, g.department if g.role not in PROJECT_ROLES else g.department),
                _eq(Membership.project_id, g.project))).scalars().first()
            if existing is not None:
                return membership_public(existing)
            m = Membership(user_id=user, role=g.role.value, department_id=g.department, project_id=g.project,
                           created_at=self.clock(), created_by=caller.subject[:64])
            s.add(m)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                raise Conflict("this membership was just created by someone else", code="MEMBERSHIP_EXISTS") from None
            audit.record(s, caller, action="membership.grant", target_kind="membership", target_id=m.id,
                         after=membership_public(m), department=g.department, project=g.project, clock=self.clock)
            s.commit()
        self.authz.invalidate()
        return membership_public(m)

    def revoke(self, p: AuthPrincipal, caller: Caller, *, user: str, role: str, department: str | None = None,
               project: str | None = None) -> None:
        g = self._grant_for(role, department, project)
        self._check_grant(p, g)
        with Session(self.engine) as s:
            rows = s.execute(select(Membership).where(
                Membership.user_id == user, Membership.role == g.role.value,
                _eq(Membership.department_id, g.department), _eq(Membership.project_id, g.project))).scalars().all()
            if not rows:
                raise NotFound(f"{user!r} has no {role} membership here", code="MEMBERSHIP_NOT_FOUND")
            for m in rows:
                audit.record(s, caller, action="membership.revoke", target_kind="membership", target_id=m.id,
                             before=membership_public(m), department=g.department, project=g.project,
                             clock=self.clock)
                s.delete(m)
            s.commit()
        self.authz.invalidate()

    # ------------------------------------------------------------------ departments
    def list_departments(self, p: AuthPrincipal) -> dict:
        scope = self.authz.scope(p, Resource.DEPARTMENT)
        with Session(self.engine) as s:
            rows = s.execute(select(Department).order_by(Department.id)).scalars().all()
        return {"items": [department_public(d) for d in rows
                          if scope.contains(Ref(Resource.DEPARTMENT, department=d.id))]}

    def get_department(self, p: AuthPrincipal, dept: str) -> dict:
        self.authz.require(p, Action.DEPARTMENT_READ, Ref(Resource.DEPARTMENT, department=dept),
                           hidden=department_not_found(dept))
        with Session(self.engine) as s:
            d = s.get(Department, dept)
            if d is None:
                raise department_not_found(dept)
            return department_public(d)

    def create_department(self, p: AuthPrincipal, caller: Caller, *, id: str, name: str, weight: float = 1.0,
                          budget_gpu_hours: float | None = None) -> dict:
        self.authz.require(p, Action.DEPARTMENT_CREATE)
        with Session(self.engine, expire_on_commit=False) as s:
            if s.get(Department, id) is not None:
                raise Conflict(f"department {id!r} exists", code="DEPARTMENT_EXISTS")
            d = Department(id=id, name=name, weight=weight, budget_gpu_hours=budget_gpu_hours, created_at=self.clock())
            s.add(d)
            s.flush()
            audit.record(s, caller, action="department.create", target_kind="department", target_id=id,
                         after=department_public(d), department=id, clock=self.clock)
            s.commit()
        self.authz.invalidate()
        return department_public(d)

    def update_department(self, p: AuthPrincipal, caller: Caller, dept: str, changes: Mapping[str, Any],
                          if_match: str | None) -> dict:
        self.authz.require(p, Action.DEPARTMENT_UPDATE, Ref(Resource.DEPARTMENT, department=dept),
                           hidden=department_not_found(dept))
        return self._cas_update(caller, Department, dept, DEPARTMENT_FIELDS, changes, if_match, "department",
                                department_public, department=dept)

    # ------------------------------------------------------------------ projects
    def create_project(self, p: AuthPrincipal, caller: Caller, *, department: str, id: str, name: str = "",
                       weight: float = 1.0, budget_gpu_hours: float | None = None, max_running: int | None = None,
                       max_pending: int | None = None, allow_process_runtime: bool = False) -> dict:
        self.authz.require(p, Action.PROJECT_CREATE, Ref(Resource.DEPARTMENT, department=department),
                           hidden=department_not_found(department))
        if allow_process_runtime:
            self.authz.require(p, Action.PROJECT_RUNTIME_ADMIN, Ref(Resource.PROJECT, department=department))
        with Session(self.engine, expire_on_commit=False) as s:
            if s.get(Department, department) is None:
                raise department_not_found(department)
            if s.get(Project, id) is not None:
                raise Conflict(f"project {id!r} exists", code="PROJECT_EXISTS")
            pr = Project(id=id, department_id=department, name=name or id, weight=weight,
                         budget_gpu_hours=budget_gpu_hours, max_running=max_running, max_pending=max_pending,
                         allow_process_runtime=allow_process_runtime,
                         created_at=self.clock())
            s.add(pr)
            s.flush()
            audit.record(s, caller, action="project.create", target_kind="project", target_id=id,
                         after=project_public(pr), department=department, project=id, clock=self.clock)
            s.commit()
        self.authz.invalidate()
        return project_public(pr)

    def get_project(self, p: AuthPrincipal, project: str) -> dict:
        self.authz.require_project(p, project, Action.PROJECT_READ)
        with Session(self.engine) as s:
            pr = s.get(Project, project)
            if pr is None:
                raise project_not_found(project)
            return project_public(pr)

    def update_project(self, p: AuthPrincipal, caller: Caller, project: str, changes: Mapping[str, Any],
                       if_match: str | None) -> dict:
        self.authz.require_project(p, project, Action.PROJECT_UPDATE)
        if PLATFORM_PROJECT_FIELDS & set(changes):
            self.authz.require_project(p, project, Action.PROJECT_RUNTIME_ADMIN)
        dept = self.authz.project_department(project)
        return self._cas_update(caller, Project, project, PROJECT_FIELDS, changes, if_match, "project",
                                project_public, department=dept, project=project)

    # ------------------------------------------------------------------ helpers
    def _cas_update(self, caller: Caller, model, ident: str, fields: tuple[str, ...], changes: Mapping[str, Any],
                    if_match: str | None, kind: str, public, **scope) -> dict:
        unknown = set(changes) - set(fields)
        if unknown:
            raise Invalid(f"unknown or read-only field(s): {', '.join(sorted(unknown))}", code="UNKNOWN_FIELD")
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.get(model, ident)
            if row is None:
                raise NotFound(f"{kind} {ident!r} not found", code=f"{kind.upper()}_NOT_FOUND")
            before = {f: getattr(row, f) for f in fields}
            require_if_match(if_match, etag_of(kind, ident, before))
            table = model.__table__
            cond = [table.c.id == ident] + [
                (table.c[f].is_(None) if v is None else table.c[f] == v) for f, v in before.items()]
            res = s.execute(update(table).where(and_(*cond)).values(**dict(changes)))
            if res.rowcount != 1:
                s.rollback()
                raise PreconditionFailed("the object changed since you read it; GET it again and retry",
                                         code="STALE_ETAG")
            s.expire(row)
            row = s.get(model, ident)
            body = public(row)
            audit.record(s, caller, action=f"{kind}.update", target_kind=kind, target_id=ident, before=before,
                         after={f: getattr(row, f) for f in fields}, clock=self.clock, **scope)
            s.commit()
        self.authz.invalidate()
        if self.on_change is not None:
            self.on_change()
        return body


def _eq(col, value):
    return col.is_(None) if value is None else col == value


def raise_forbidden(message: str) -> None:
    from broker.errors import Forbidden

    raise Forbidden(message, code="FORBIDDEN")
