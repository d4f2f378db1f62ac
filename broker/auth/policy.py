"""Authorization policy: pure functions over (principal, action, object) -> decision.

Why one module of pure rules: every route asks the same question ("may this caller do this to
that object?") and the answer must be identical everywhere, testable as a table and free of
DB access. Routes load the object (or the project a body refers to), build a `Ref`, call
`authorize`, and map the `Decision`; list routes call `list_scope` and filter in the query.

Roles:
- member           reads the jobs of its projects and submits into them; cancels its own jobs.
- project-admin    member powers for the whole project (cancel any job) and manages the
                   project's members (member / project-admin grants of that project).
- department-admin everything inside its department: its projects (create, update, delete,
                   project quotas = splitting the department's quota), their jobs and members;
                   reads the department's audit log.
- platform-admin   everything, including departments, pools, nodes, agent tokens, department
                   quotas, department-admin grants and the whole audit log.
- ops-viewer       aggregates only: nodes, pools, utilization, queue counts, projects and their
                   usage. Never a job (so never a command, env or log line). Global, or scoped
                   to one department.
Agent principals (node agents) may only push telemetry for their own node.

Decisions:
- ALLOW.
- HIDE (-> 404): the caller may not even know the object exists. Foreign and non-existent
  objects must answer identically, so a route treats HIDE exactly like "not found" (422
  "unknown project" for a project named in a request body, 404 for an object in the path).
- DENY (-> 403): the caller can see the object (or the action has no object) but lacks the
  power. Telling it "forbidden" leaks nothing it does not already know; it is also the only
  answer for non-object actions (e.g. creating a department).

Invariants: no grant ever gives power outside its scope; HIDE is returned whenever the object
is not visible, whatever the action; an agent principal sees no object at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

__all__ = [
    "Role",
    "Grant",
    "Principal",
    "Resource",
    "Ref",
    "Action",
    "Decision",
    "Scope",
    "authorize",
    "can_grant",
    "list_scope",
    "visible",
    "filter_visible",
]


class Role(str, enum.Enum):
    MEMBER = "member"
    PROJECT_ADMIN = "project-admin"
    DEPARTMENT_ADMIN = "department-admin"
    PLATFORM_ADMIN = "platform-admin"
    OPS_VIEWER = "ops-viewer"


PROJECT_ROLES = frozenset({Role.MEMBER, Role.PROJECT_ADMIN})
_JOB_ROLES = frozenset({Role.MEMBER, Role.PROJECT_ADMIN, Role.DEPARTMENT_ADMIN, Role.PLATFORM_ADMIN})


@dataclass(frozen=True, slots=True)
class Grant:
    """One role at one scope.

    Scope rules (checked at construction): member / project-admin name a project *and* its
    department; department-admin names a department and no project; platform-admin names
    nothing; ops-viewer names nothing (global) or a department.
    """

    role: Role
    department: str | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        r = Role(self.role)
        object.__setattr__(self, "role", r)
        if r in PROJECT_ROLES:
            ok = bool(self.project) and bool(self.department)
        elif r is Role.DEPARTMENT_ADMIN:
            ok = bool(self.department) and self.project is None
        elif r is Role.OPS_VIEWER:
            ok = self.project is None
        else:  # platform-admin
            ok = self.department is None and self.project is None
        if not ok:
            raise ValueError(
                f"invalid scope for {r.value}: department={self.department!r} project={self.project!r}"
            )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. `kind` is "user" or "agent"; agents carry the node they speak for."""

    subject: str
    grants: tuple[Grant, ...] = ()
    kind: str = "user"
    node_id: str | None = None

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"

    @property
    def is_platform_admin(self) -> bool:
        return not self.is_agent and any(g.role is Role.PLATFORM_ADMIN for g in self.grants)


class Resource(str, enum.Enum):
    JOB = "job"
    PROJECT = "project"
    DEPARTMENT = "department"
    POOL = "pool"
    NODE = "node"
    TOKEN = "token"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class Ref:
    """The object an action is about, reduced to what authorization needs.

    For a job: its project, the project's department and the submitting user (`owner`).
    For a project: project + department. For a department: department. For a token: owner.
    For an audit entry: the department it concerns (None: platform-level entry).
    """

    resource: Resource
    department: str | None = None
    project: str | None = None
    owner: str | None = None
    node: str | None = None


class Decision(enum.Enum):
    ALLOW = "allow"
    HIDE = "hide"
    DENY = "deny"

    @property
    def status(self) -> int:
        """HTTP status a route answers for this decision (HIDE on a body reference -> 422)."""
        return {"allow": 200, "hide": 404, "deny": 403}[self.value]


class Action(str, enum.Enum):
    # jobs (Ref: job, except JOB_SUBMIT whose Ref is the target project)
    JOB_SUBMIT = "job.submit"
    JOB_READ = "job.read"  # status, pending reason, attempts, placements, events
    JOB_READ_SPEC = "job.read_spec"  # command and env
    JOB_LOGS = "job.logs"
    JOB_CANCEL = "job.cancel"
    # projects (Ref: project; PROJECT_CREATE's Ref is the department)
    PROJECT_READ = "project.read"
    PROJECT_USAGE_READ = "project.usage.read"
    PROJECT_MEMBERS_READ = "project.members.read"
    PROJECT_MEMBERS_MANAGE = "project.members.manage"
    PROJECT_CREATE = "project.create"
    PROJECT_UPDATE = "project.update"
    PROJECT_DELETE = "project.delete"
    PROJECT_QUOTA_UPDATE = "project.quota.update"
    PROJECT_RUNTIME_ADMIN = "project.runtime.admin"  # allow runtime 'process' (host code execution)
    PROJECT_SECRETS_READ = "project.secrets.read"  # names and versions, never values
    PROJECT_SECRETS_MANAGE = "project.secrets.manage"  # create, rotate, delete
    # datasets (Ref: the dataset's department; DATASET_USE's Ref is the project that mounts it)
    DATASET_ADMIN = "dataset.admin"  # register, grant, revoke, read access records
    # departments (Ref: department)
    DEPARTMENT_READ = "department.read"
    DEPARTMENT_USAGE_READ = "department.usage.read"
    DEPARTMENT_MEMBERS_MANAGE = "department.members.manage"
    DEPARTMENT_UPDATE = "department.update"
    DEPARTMENT_QUOTA_UPDATE = "department.quota.update"
    DEPARTMENT_CREATE = "department.create"  # no object
    # infrastructure (no object: nodes and pools are shared and not secret)
    NODE_READ = "node.read"
    POOL_READ = "pool.read"
    AGGREGATES_READ = "aggregates.read"  # utilization, queue counts (route filters by scope)
    NODE_ADMIN = "node.admin"
    POOL_ADMIN = "pool.admin"
    SETTINGS_ADMIN = "settings.admin"  # image allow-list, limits
    # tokens (Ref: token with owner, except creation of own tokens which has no object)
    TOKEN_CREATE_OWN = "token.create_own"
    TOKEN_READ = "token.read"
    TOKEN_REVOKE = "token.revoke"
    TOKEN_ADMIN = "token.admin"  # create tokens for others, agent tokens
    USER_ADMIN = "user.admin"
    # audit (Ref: audit entry with its department)
    AUDIT_READ = "audit.read"
    # agents (Ref: node)
    TELEMETRY_PUSH = "telemetry.push"


# --------------------------------------------------------------------------- rules


def roles_on(principal: Principal, ref: Ref) -> frozenset[Role]:
    """The roles `principal` holds that cover `ref` (its effective roles on that object)."""
    if principal.is_agent:
        return frozenset()
    out: set[Role] = set()
    for g in principal.grants:
        if g.role is Role.PLATFORM_ADMIN:
            out.add(g.role)
        elif g.role is Role.OPS_VIEWER:
            if g.department is None or g.department == ref.department:
                out.add(g.role)
        elif g.role is Role.DEPARTMENT_ADMIN:
            if ref.department is not None and g.department == ref.department:
                out.add(g.role)
        elif ref.project is not None and g.project == ref.project:
            # project-scoped grant; a department mismatch means stale data: ignore the grant
            if ref.department is None or g.department == ref.department:
                out.add(g.role)
    return frozenset(out)


def _in_department(principal: Principal, department: str | None) -> bool:
    return department is not None and any(g.department == department for g in principal.grants)


def visible(principal: Principal, ref: Ref) -> bool:
    """May `principal` know that the object `ref` exists at all?"""
    if principal.is_agent:
        return False
    roles = roles_on(principal, ref)
    if Role.PLATFORM_ADMIN in roles:
        return True
    r = ref.resource
    if r is Resource.JOB:
        return bool(roles & _JOB_ROLES)
    if r is Resource.PROJECT:
        return bool(roles)
    if r is Resource.DEPARTMENT:
        return bool(roles) or _in_department(principal, ref.department)
    if r in (Resource.NODE, Resource.POOL):
        return True
    if r is Resource.TOKEN:
        return ref.owner is not None and ref.owner == principal.subject
    if r is Resource.AUDIT:
        return Role.DEPARTMENT_ADMIN in roles
    return False


_Rule = Callable[[Principal, "Ref | None", frozenset], bool]


def _any_of(*roles: Role) -> _Rule:
    allowed = frozenset(roles)
    return lambda p, ref, have: bool(have & allowed)


def _cancel(p: Principal, ref: Ref | None, have: frozenset) -> bool:
    if have & {Role.PROJECT_ADMIN, Role.DEPARTMENT_ADMIN, Role.PLATFORM_ADMIN}:
        return True
    return Role.MEMBER in have and ref is not None and ref.owner == p.subject


def _own_token(p: Principal, ref: Ref | None, have: frozenset) -> bool:
    return p.is_platform_admin or (ref is not None and ref.owner == p.subject)


def _any_user(p: Principal, ref: Ref | None, have: frozenset) -> bool:
    return not p.is_agent


def _platform(p: Principal, ref: Ref | None, have: frozenset) -> bool:
    return p.is_platform_admin


def _ops(p: Principal, ref: Ref | None, have: frozenset) -> bool:
    """Aggregates: anyone with a user grant; the route narrows rows with `list_scope`."""
    return not p.is_agent and bool(p.grants)


def _telemetry(p: Principal, ref: Ref | None, have: frozenset) -> bool:
    return p.is_agent and ref is not None and p.node_id is not None and ref.node == p.node_id


_P, _D, _PA, _M, _O = (
    Role.PLATFORM_ADMIN,
    Role.DEPARTMENT_ADMIN,
    Role.PROJECT_ADMIN,
    Role.MEMBER,
    Role.OPS_VIEWER,
)


@dataclass(frozen=True, slots=True)
class _Spec:
    resource: Resource | None  # None: the action has no object (403 is the only refusal)
    rule: _Rule


_SPECS: dict[Action, _Spec] = {
    Action.JOB_SUBMIT: _Spec(Resource.PROJECT, _any_of(_P, _D, _PA, _M)),
    Action.JOB_READ: _Spec(Resource.JOB, _any_of(_P, _D, _PA, _M)),
    Action.JOB_READ_SPEC: _Spec(Resource.JOB, _any_of(_P, _D, _PA, _M)),
    Action.JOB_LOGS: _Spec(Resource.JOB, _any_of(_P, _D, _PA, _M)),
    Action.JOB_CANCEL: _Spec(Resource.JOB, _cancel),
    Action.PROJECT_READ: _Spec(Resource.PROJECT, _any_of(_P, _D, _PA, _M, _O)),
    Action.PROJECT_USAGE_READ: _Spec(Resource.PROJECT, _any_of(_P, _D, _PA, _M, _O)),
    Action.PROJECT_MEMBERS_READ: _Spec(Resource.PROJECT, _any_of(_P, _D, _PA, _M)),
    Action.PROJECT_MEMBERS_MANAGE: _Spec(Resource.PROJECT, _any_of(_P, _D, _PA)),
    Action.PROJECT_CREATE: _Spec(Resource.DEPARTMENT, _any_of(_P, _D)),
    Action.PROJECT_UPDATE: _Spec(Resource.PROJECT, _any_of(_P, _D)),
    Action.PROJECT_DELETE: _Spec(Resource.PROJECT, _any_of(_P, _D)),
    Action.PROJECT_QUOTA_UPDATE: _Spec(Resource.PROJECT, _any_of(_P, _D)),
    Action.PROJECT_RUNTIME_ADMIN: _Spec(Resource.PROJECT, _any_of(_P)),
    Action.PROJECT_SECRETS_READ: _Spec(Resource.PROJECT, _any_of(_P, _D, _PA, _M)),
    Action.PROJECT_SECRETS_MANAGE: _Spec(Resource.PROJECT, _any_of(_P, _D, _PA)),
    Action.DATASET_ADMIN: _Spec(Resource.DEPARTMENT, _any_of(_P, _D)),
    Action.DEPARTMENT_READ: _Spec(Resource.DEPARTMENT, lambda p, r, h: True),  # = visible
    Action.DEPARTMENT_USAGE_READ: _Spec(Resource.DEPARTMENT, _any_of(_P, _D, _O)),
    Action.DEPARTMENT_MEMBERS_MANAGE: _Spec(Resource.DEPARTMENT, _any_of(_P)),
    Action.DEPARTMENT_UPDATE: _Spec(Resource.DEPARTMENT, _any_of(_P)),
    Action.DEPARTMENT_QUOTA_UPDATE: _Spec(Resource.DEPARTMENT, _any_of(_P)),
    Action.DEPARTMENT_CREATE: _Spec(None, _platform),
    Action.NODE_READ: _Spec(None, _any_user),
    Action.POOL_READ: _Spec(None, _any_user),
    Action.AGGREGATES_READ: _Spec(None, _ops),
    Action.NODE_ADMIN: _Spec(None, _platform),
    Action.POOL_ADMIN: _Spec(None, _platform),
    Action.SETTINGS_ADMIN: _Spec(None, _platform),
    Action.TOKEN_CREATE_OWN: _Spec(None, _any_user),
    Action.TOKEN_READ: _Spec(Resource.TOKEN, _own_token),
    Action.TOKEN_REVOKE: _Spec(Resource.TOKEN, _own_token),
    Action.TOKEN_ADMIN: _Spec(None, _platform),
    Action.USER_ADMIN: _Spec(None, _platform),
    Action.AUDIT_READ: _Spec(Resource.AUDIT, _any_of(_P, _D)),
    Action.TELEMETRY_PUSH: _Spec(Resource.NODE, _telemetry),
}


def authorize(principal: Principal, action: Action, ref: Ref | None = None) -> Decision:
    """Decide one request. Object actions need a `ref` of the action's resource kind.

    Order: an invisible object is HIDDEN before any power is checked, so a refusal never
    tells a foreign caller whether the object exists.
    """
    spec = _SPECS[Action(action)]
    if spec.resource is None:
        return Decision.ALLOW if spec.rule(principal, ref, frozenset()) else Decision.DENY
    if ref is None or ref.resource is not spec.resource:
        raise ValueError(f"{action.value} needs a Ref of kind {spec.resource.value}, got {ref!r}")
    if action is Action.TELEMETRY_PUSH:  # node objects are not secret; agents are checked by node
        return Decision.ALLOW if spec.rule(principal, ref, frozenset()) else Decision.DENY
    if not visible(principal, ref):
        return Decision.HIDE
    return Decision.ALLOW if spec.rule(principal, ref, roles_on(principal, ref)) else Decision.DENY


def can_grant(principal: Principal, grant: Grant) -> Decision:
    """May `principal` give (or take away) `grant`? Nobody can hand out more than they hold.

    member / project-admin of project P: a project-admin of P, a department-admin of P's
    department or a platform-admin. department-admin: platform-admin only. platform-admin and
    ops-viewer: platform-admin only.
    """
    if grant.role in PROJECT_ROLES:
        ref = Ref(Resource.PROJECT, department=grant.department, project=grant.project)
        return authorize(principal, Action.PROJECT_MEMBERS_MANAGE, ref)
    if grant.role is Role.DEPARTMENT_ADMIN or (grant.role is Role.OPS_VIEWER and grant.department):
        ref = Ref(Resource.DEPARTMENT, department=grant.department)
        return authorize(principal, Action.DEPARTMENT_MEMBERS_MANAGE, ref)
    return Decision.ALLOW if principal.is_platform_admin else Decision.DENY


# --------------------------------------------------------------------------- lists


@dataclass(frozen=True, slots=True)
class Scope:
    """The rows of one resource a principal may see in a list.

    Translate to SQL as ``all OR department IN departments OR project IN projects OR
    owner = owner``; an empty scope means "return nothing" (never "no filter").
    """

    all: bool = False
    departments: frozenset[str] = field(default_factory=frozenset)
    projects: frozenset[str] = field(default_factory=frozenset)
    owner: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.all or self.departments or self.projects or self.owner)

    def contains(self, ref: Ref) -> bool:
        return (
            self.all
            or (ref.department is not None and ref.department in self.departments)
            or (ref.project is not None and ref.project in self.projects)
            or (self.owner is not None and ref.owner == self.owner)
        )


NOTHING = Scope()
EVERYTHING = Scope(all=True)


def list_scope(principal: Principal, resource: Resource) -> Scope:
    """Which rows of `resource` a list route may return to `principal` (see `Scope`)."""
    if principal.is_agent:
        return NOTHING
    if principal.is_platform_admin:
        return EVERYTHING
    gs = principal.grants
    dept_admin = frozenset(g.department for g in gs if g.role is Role.DEPARTMENT_ADMIN)
    projects = frozenset(g.project for g in gs if g.role in PROJECT_ROLES)
    ops_global = any(g.role is Role.OPS_VIEWER and g.department is None for g in gs)
    ops_depts = frozenset(g.department for g in gs if g.role is Role.OPS_VIEWER and g.department)
    if resource is Resource.JOB:
        return Scope(departments=dept_admin, projects=projects)  # ops-viewers: no jobs
    if resource is Resource.PROJECT:
        if ops_global:
            return EVERYTHING
        return Scope(departments=dept_admin | ops_depts, projects=projects)
    if resource is Resource.DEPARTMENT:
        if ops_global:
            return EVERYTHING
        return Scope(departments=frozenset(g.department for g in gs if g.department))
    if resource in (Resource.NODE, Resource.POOL):
        return EVERYTHING
    if resource is Resource.TOKEN:
        return Scope(owner=principal.subject)
    if resource is Resource.AUDIT:
        return Scope(departments=dept_admin)
    return NOTHING


T = TypeVar("T")


def filter_visible(
    principal: Principal, items: Iterable[T], ref_of: Callable[[T], Ref]
) -> list[T]:
    """In-memory list filter (for small lists and as a belt-and-braces check after a query)."""
    return [it for it in items if visible(principal, ref_of(it))]
