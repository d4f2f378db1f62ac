"""Authorization service: who the caller is in policy terms, and one `require` per route.

Authentication (`broker.auth.authn.TokenAuth`) answers "which token is this"; this service
turns that into a `broker.auth.policy.Principal` (subject + grants) and asks the pure
policy. Grants of a token are:
- the grant written on the token row (role + project/department scope), if it is a valid one
  (the bootstrap platform-admin token, agent tokens, scoped service tokens);
- plus, when the token has an owner (`token_owners`), the owner's memberships (live).
Tokens users create for themselves carry role "user" (no own grant) and act with the owner's
memberships. OIDC callers (token id ``oidc:<sub>``) bring grants mapped from their groups
(`remember_oidc`) plus the memberships of the user linked to that subject.

Caching: grants per token and the project -> department map are cached for `ttl_s` (default
5 s); membership or project changes through the admin API call `invalidate()` so they take
effect at once in this process, and within `ttl_s` in others.

Errors: HIDE raises the *same* NotFound the service would raise for a missing object (so a
foreign object and a missing one are indistinguishable); DENY raises Forbidden (403).
"""

from __future__ import annotations

import threading
import time
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.errors import BrokerError, Forbidden, Invalid, NotFound
from broker.models import Job, Project
from broker.models import Membership, TokenOwner, User
from broker.auth.policy import (
    Action,
    Decision,
    Grant,
    Principal as PolicyPrincipal,
    Ref,
    Resource,
    Role,
    Scope,
    authorize,
    list_scope,
)
from broker.auth.authn import Principal as AuthPrincipal
from broker.ports import Clock

USER_TOKEN_ROLE = "user"  # a token that acts only with its owner's memberships


def job_not_found(job_id: str) -> NotFound:
    """Identical to what JobService raises for a missing job (no existence leak)."""
    return NotFound(f"job {job_id!r} not found", code="JOB_NOT_FOUND")


def project_not_found(project_id: str) -> NotFound:
    return NotFound(f"project {project_id!r} not found", code="PROJECT_NOT_FOUND")


def unknown_project(project_id: str) -> Invalid:
    """What submit answers for a missing project and for one the caller may not submit to alike,
    so submit cannot probe which projects exist."""
    return Invalid(f"project {project_id!r} does not exist (or you may not submit to it)",
                   code="UNKNOWN_PROJECT", details={"project": project_id})


def grant_of(role: str | None, department: str | None, project: str | None) -> Grant | None:
    """A Grant from stored columns, or None when they do not form a valid one."""
    try:
        return Grant(Role(role), department=department or None, project=project or None)
    except ValueError:
        return None


class Authz:
    def __init__(self, engine: Engine, *, ttl_s: float = 5.0, clock: Clock = time.monotonic):
        self._engine, self._ttl, self._clock = engine, ttl_s, clock
        self._lock = threading.Lock()
        self._principals: dict[str, tuple[PolicyPrincipal, float]] = {}
        self._projects: tuple[dict[str, str], float] | None = None
        self._owners: dict[str, str | None] = {}  # token id -> owner user id (immutable once set)
        self._oidc: dict[str, tuple[tuple[Grant, ...], str | None]] = {}  # "oidc:<sub>" -> grants, user
        self.generation = 0  # bumped by invalidate(): caches of decisions built on this one drop their hits

    # ------------------------------------------------------------------ principals
    def principal(self, p: AuthPrincipal) -> PolicyPrincipal:
        now = self._clock()
        hit = self._principals.get(p.token_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        pp = self._load_principal(p)
        with self._lock:
            if len(self._principals) > 10_000:
                self._principals.clear()
            self._principals[p.token_id] = (pp, now + self._ttl)
        return pp

    def _load_principal(self, p: AuthPrincipal) -> PolicyPrincipal:
        if p.kind == "agent":
            return PolicyPrincipal(f"token:{p.token_id}", (), kind="agent", node_id=p.node_id)
        grants: set[Grant] = set()
        user_id: str | None
        if p.token_id.startswith("oidc:"):
            oidc_grants, user_id = self._oidc.get(p.token_id, ((), None))
            grants.update(oidc_grants)
        else:
            dept = p.department_id
            if p.project_id and not dept:
                dept = self.project_department(p.project_id)
            g = grant_of(p.role, dept, p.project_id)
            if g is not None:
                grants.add(g)
            user_id = self.token_owner(p.token_id)
        subject = user_id or f"token:{p.token_id}"
        if user_id is not None:
            grants.update(self._memberships(user_id))
        ordered = tuple(sorted(grants, key=lambda x: (x.role.value, x.department or "", x.project or "")))
        return PolicyPrincipal(subject, ordered, kind="user")

    def _memberships(self, user_id: str) -> list[Grant]:
        with Session(self._engine) as s:
            user = s.get(User, user_id)
            if user is None or user.disabled_at is not None:
                return []
            rows = s.execute(select(Membership).where(Membership.user_id == user_id)).scalars().all()
        out = []
        for m in rows:
            dept = m.department_id or (self.project_department(m.project_id) if m.project_id else None)
            g = grant_of(m.role, dept, m.project_id)
            if g is not None:
                out.append(g)
        return out

    def token_owner(self, token_id: str | None) -> str | None:
        if token_id is None:
            return None
        if token_id in self._owners:
            return self._owners[token_id]
        with Session(self._engine) as s:
            row = s.get(TokenOwner, token_id)
        owner = row.user_id if row is not None else None
        with self._lock:
            if len(self._owners) > 100_000:
                self._owners.clear()
            self._owners[token_id] = owner
        return owner

    def owner_subject(self, token_id: str | None) -> str | None:
        """The policy subject that owns objects created with `token_id` (user or token)."""
        if token_id is None:
            return None
        return self.token_owner(token_id) or f"token:{token_id}"

    def remember_oidc(self, token_id: str, grants: Iterable[Grant], user_id: str | None) -> None:
        with self._lock:
            self._oidc[token_id] = (tuple(grants), user_id)
            self._principals.pop(token_id, None)

    # ------------------------------------------------------------------ catalog cache
    def project_department(self, project_id: str) -> str | None:
        m = self._project_map()
        if project_id not in m:
            m = self._project_map(force=True)
        return m.get(project_id)

    def _project_map(self, force: bool = False) -> dict[str, str]:
        now = self._clock()
        cur = self._projects
        if cur is not None and cur[1] > now and not force:
            return cur[0]
        with Session(self._engine) as s:
            m = {pid: did for pid, did in s.execute(select(Project.id, Project.department_id)).all()}
        self._projects = (m, now + self._ttl)
        return m

    def invalidate(self) -> None:
        """Drop cached grants and projects (after an admin change in this process)."""
        with self._lock:
            self.generation += 1
            self._principals.clear()
            self._projects = None

    # ------------------------------------------------------------------ decisions
    def decide(self, p: AuthPrincipal, action: Action, ref: Ref | None = None) -> Decision:
        return authorize(self.principal(p), action, ref)

    def require(self, p: AuthPrincipal, action: Action, ref: Ref | None = None, *,
                hidden: BrokerError | None = None) -> PolicyPrincipal:
        """Raise unless allowed: HIDE -> `hidden` (default a generic 404), DENY -> 403."""
        pp = self.principal(p)
        d = authorize(pp, action, ref)
        if d is Decision.ALLOW:
            return pp
        if d is Decision.HIDE:
            raise hidden or NotFound("not found")
        raise Forbidden(f"your role does not allow {action.value}", code="FORBIDDEN",
                        details={"action": action.value})

    def project_ref(self, project_id: str) -> Ref | None:
        dept = self.project_department(project_id)
        return None if dept is None else Ref(Resource.PROJECT, department=dept, project=project_id)

    def require_project(self, p: AuthPrincipal, project_id: str, action: Action, *,
                        hidden: BrokerError | None = None) -> PolicyPrincipal:
        ref = self.project_ref(project_id)
        err = hidden or project_not_found(project_id)
        if ref is None:
            raise err
        return self.require(p, action, ref, hidden=err)

    def job_ref(self, job_id: str) -> Ref | None:
        if len(job_id) > 32:
            return None
        with Session(self._engine) as s:
            row = s.execute(select(Job.project_id, Job.owner_token_id).where(Job.id == job_id)).first()
        if row is None:
            return None
        project_id, owner_token = row
        return Ref(Resource.JOB, department=self.project_department(project_id), project=project_id,
                   owner=self.owner_subject(owner_token))

    def check_job(self, p: AuthPrincipal, job: Job, action: Action) -> PolicyPrincipal:
        """`require` for a job row already loaded (no extra query); HIDE -> JOB_NOT_FOUND."""
        ref = Ref(Resource.JOB, department=self.project_department(job.project_id), project=job.project_id,
                  owner=self.owner_subject(job.owner_token_id))
        return self.require(p, action, ref, hidden=job_not_found(job.id))

    def require_job(self, p: AuthPrincipal, job_id: str, action: Action) -> PolicyPrincipal:
        ref = self.job_ref(job_id)
        if ref is None:
            raise job_not_found(job_id)
        return self.require(p, action, ref, hidden=job_not_found(job_id))

    def scope(self, p: AuthPrincipal, resource: Resource) -> Scope:
        return list_scope(self.principal(p), resource)

    def narrow_overview(self, p: AuthPrincipal, data: dict) -> dict:
        """The operations overview without rows of projects the caller may not see.

        Region-, pool- and node-level aggregates stay (they name no tenant); the per-project
        rows and the idle-allocation list (job id, name, project) are cut to the caller's
        project scope. Global ops-viewers and platform-admins see everything.
        """
        scope = self.scope(p, Resource.PROJECT)
        if scope.all:
            return data

        def ok(pid: str) -> bool:
            return scope.contains(Ref(Resource.PROJECT, department=self.project_department(pid), project=pid))

        return {**data, "projects": [x for x in data.get("projects", []) if ok(x["project"])],
                "idle_allocations": [x for x in data.get("idle_allocations", []) if ok(x["project"])]}

    def visible_projects(self, p: AuthPrincipal, requested: Iterable[str] = (),
                         resource: Resource = Resource.JOB) -> list[str] | None:
        """Project ids a job/project list may show: None = no restriction (platform-admin and
        no filter asked); otherwise the requested ids narrowed to the visible ones (possibly
        empty: the caller then answers an empty list, never an unfiltered one)."""
        scope = self.scope(p, resource)
        req = list(requested)
        if scope.all:
            return req or None
        projects = self._project_map()
        visible = {pid for pid, did in projects.items()
                   if pid in scope.projects or did in scope.departments}
        if req:
            return [r for r in req if r in visible]
        return sorted(visible)
