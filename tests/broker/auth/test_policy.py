"""Authorization policy as a table of named cases, plus list scopes and grant escalation."""

from __future__ import annotations

import itertools

import pytest

from broker.auth.policy import (
    Action,
    Decision,
    Grant,
    Principal,
    Ref,
    Resource,
    Role,
    authorize,
    can_grant,
    filter_visible,
    list_scope,
    visible,
)

A, H, D = Decision.ALLOW, Decision.HIDE, Decision.DENY

# ---------------------------------------------------------------- builders


def member(project="ouh-liver", dept="ouh", subject="alice"):
    return Principal(subject, (Grant(Role.MEMBER, department=dept, project=project),))


def padmin(project="ouh-liver", dept="ouh", subject="pat"):
    return Principal(subject, (Grant(Role.PROJECT_ADMIN, department=dept, project=project),))


def dadmin(dept="ouh", subject="dora"):
    return Principal(subject, (Grant(Role.DEPARTMENT_ADMIN, department=dept),))


def platform(subject="root"):
    return Principal(subject, (Grant(Role.PLATFORM_ADMIN),))


def ops(dept=None, subject="olga"):
    return Principal(subject, (Grant(Role.OPS_VIEWER, department=dept),))


def agent(node="node-1"):
    return Principal("agent:" + node, (), kind="agent", node_id=node)


def nobody():
    return Principal("nobody", ())


def job(project="ouh-liver", dept="ouh", owner="alice"):
    return Ref(Resource.JOB, department=dept, project=project, owner=owner)


def project(project="ouh-liver", dept="ouh"):
    return Ref(Resource.PROJECT, department=dept, project=project)


def department(dept="ouh"):
    return Ref(Resource.DEPARTMENT, department=dept)


def token(owner="alice"):
    return Ref(Resource.TOKEN, owner=owner)


def audit(dept="ouh"):
    return Ref(Resource.AUDIT, department=dept)


def node(n="node-1"):
    return Ref(Resource.NODE, node=n)


OWN_JOB = job()
TEAMMATE_JOB = job(owner="bob")
FOREIGN_JOB = job(project="slb-eye", dept="slb", owner="sam")
SAME_DEPT_OTHER_PROJECT_JOB = job(project="ouh-heart", owner="carl")

CASES = [
    # ---- members
    ("member reads own job", member(), Action.JOB_READ, OWN_JOB, A),
    ("member reads teammate's job", member(), Action.JOB_READ, TEAMMATE_JOB, A),
    ("member reads teammate's logs", member(), Action.JOB_LOGS, TEAMMATE_JOB, A),
    ("member cancels own job", member(), Action.JOB_CANCEL, OWN_JOB, A),
    ("member cannot cancel teammate's job", member(), Action.JOB_CANCEL, TEAMMATE_JOB, D),
    ("member: foreign job is hidden", member(), Action.JOB_READ, FOREIGN_JOB, H),
    ("member: foreign job logs hidden", member(), Action.JOB_LOGS, FOREIGN_JOB, H),
    ("member: foreign job cancel hidden", member(), Action.JOB_CANCEL, FOREIGN_JOB, H),
    ("member: other project same dept hidden", member(), Action.JOB_READ, SAME_DEPT_OTHER_PROJECT_JOB, H),
    ("member submits into own project", member(), Action.JOB_SUBMIT, project(), A),
    ("member: submit into foreign project hidden", member(), Action.JOB_SUBMIT, project("slb-eye", "slb"), H),
    ("member reads own project usage", member(), Action.PROJECT_USAGE_READ, project(), A),
    ("member: foreign project usage hidden", member(), Action.PROJECT_USAGE_READ, project("slb-eye", "slb"), H),
    ("member cannot manage members", member(), Action.PROJECT_MEMBERS_MANAGE, project(), D),
    ("member cannot change project quota", member(), Action.PROJECT_QUOTA_UPDATE, project(), D),
    ("member sees own department", member(), Action.DEPARTMENT_READ, department(), A),
    ("member: foreign department hidden", member(), Action.DEPARTMENT_READ, department("slb"), H),
    ("member cannot read department usage", member(), Action.DEPARTMENT_USAGE_READ, department(), D),
    ("member: audit hidden", member(), Action.AUDIT_READ, audit(), H),
    ("member reads nodes", member(), Action.NODE_READ, None, A),
    ("member cannot administer pools", member(), Action.POOL_ADMIN, None, D),
    ("member cannot create departments", member(), Action.DEPARTMENT_CREATE, None, D),
    ("member creates own tokens", member(), Action.TOKEN_CREATE_OWN, None, A),
    ("member revokes own token", member(), Action.TOKEN_REVOKE, token("alice"), A),
    ("member: other's token hidden", member(), Action.TOKEN_REVOKE, token("bob"), H),
    ("member cannot mint agent tokens", member(), Action.TOKEN_ADMIN, None, D),
    ("member cannot push telemetry", member(), Action.TELEMETRY_PUSH, node(), D),
    # ---- project-admins
    ("project-admin cancels teammate's job", padmin(), Action.JOB_CANCEL, TEAMMATE_JOB, A),
    ("project-admin manages members", padmin(), Action.PROJECT_MEMBERS_MANAGE, project(), A),
    ("project-admin: foreign project hidden", padmin(), Action.PROJECT_MEMBERS_MANAGE, project("slb-eye", "slb"), H),
    ("project-admin cannot change quota", padmin(), Action.PROJECT_QUOTA_UPDATE, project(), D),
    ("project-admin cannot delete project", padmin(), Action.PROJECT_DELETE, project(), D),
    ("project-admin: foreign job hidden", padmin(), Action.JOB_CANCEL, FOREIGN_JOB, H),
    # ---- department-admins
    ("dept-admin reads dept job", dadmin(), Action.JOB_READ, SAME_DEPT_OTHER_PROJECT_JOB, A),
    ("dept-admin cancels dept job", dadmin(), Action.JOB_CANCEL, OWN_JOB, A),
    ("dept-admin: other dept job hidden", dadmin(), Action.JOB_READ, FOREIGN_JOB, H),
    ("dept-admin creates project in dept", dadmin(), Action.PROJECT_CREATE, department(), A),
    ("dept-admin: create in other dept hidden", dadmin(), Action.PROJECT_CREATE, department("slb"), H),
    ("dept-admin splits quota to project", dadmin(), Action.PROJECT_QUOTA_UPDATE, project("ouh-heart"), A),
    ("dept-admin: other dept project quota hidden", dadmin(), Action.PROJECT_QUOTA_UPDATE, project("slb-eye", "slb"), H),
    ("dept-admin cannot set own department quota", dadmin(), Action.DEPARTMENT_QUOTA_UPDATE, department(), D),
    ("dept-admin cannot grant dept-admins", dadmin(), Action.DEPARTMENT_MEMBERS_MANAGE, department(), D),
    ("dept-admin reads dept audit", dadmin(), Action.AUDIT_READ, audit(), A),
    ("dept-admin: other dept audit hidden", dadmin(), Action.AUDIT_READ, audit("slb"), H),
    ("dept-admin: platform audit hidden", dadmin(), Action.AUDIT_READ, audit(None), H),
    ("dept-admin cannot administer nodes", dadmin(), Action.NODE_ADMIN, None, D),
    ("dept-admin updates dept project", dadmin(), Action.PROJECT_UPDATE, project("ouh-heart"), A),
    ("dept-admin cannot rename department", dadmin(), Action.DEPARTMENT_UPDATE, department(), D),
    ("dept-admin cannot change settings", dadmin(), Action.SETTINGS_ADMIN, None, D),
    ("dept-admin cannot administer users", dadmin(), Action.USER_ADMIN, None, D),
    ("dept-admin reads dept usage", dadmin(), Action.DEPARTMENT_USAGE_READ, department(), A),
    # ---- platform-admins
    ("platform reads any job", platform(), Action.JOB_READ_SPEC, FOREIGN_JOB, A),
    ("platform cancels any job", platform(), Action.JOB_CANCEL, FOREIGN_JOB, A),
    ("platform sets dept quota", platform(), Action.DEPARTMENT_QUOTA_UPDATE, department("slb"), A),
    ("platform creates departments", platform(), Action.DEPARTMENT_CREATE, None, A),
    ("platform allows host processes in a project", platform(), Action.PROJECT_RUNTIME_ADMIN, project("slb-eye", "slb"), A),
    ("dept-admin cannot allow host processes", dadmin(), Action.PROJECT_RUNTIME_ADMIN, project("ouh-heart"), D),
    ("project-admin cannot allow host processes", padmin(), Action.PROJECT_RUNTIME_ADMIN, project(), D),
    ("member lists its project's secret names", member(), Action.PROJECT_SECRETS_READ, project(), A),
    ("foreign member does not see secrets", member("slb-eye", "slb"), Action.PROJECT_SECRETS_READ, project(), H),
    ("ops-viewer sees no secrets", ops(), Action.PROJECT_SECRETS_READ, project(), D),
    ("project-admin rotates a secret", padmin(), Action.PROJECT_SECRETS_MANAGE, project(), A),
    ("member cannot write a secret", member(), Action.PROJECT_SECRETS_MANAGE, project(), D),
    ("dept-admin registers its datasets", dadmin(), Action.DATASET_ADMIN, department(), A),
    ("dept-admin cannot register another's", dadmin("slb"), Action.DATASET_ADMIN, department("ouh"), H),
    ("platform registers datasets anywhere", platform(), Action.DATASET_ADMIN, department("slb"), A),
    ("member cannot register datasets", member(), Action.DATASET_ADMIN, department(), D),
    ("platform reads platform audit", platform(), Action.AUDIT_READ, audit(None), A),
    ("platform revokes anyone's token", platform(), Action.TOKEN_REVOKE, token("alice"), A),
    ("platform mints agent tokens", platform(), Action.TOKEN_ADMIN, None, A),
    ("platform cannot push telemetry", platform(), Action.TELEMETRY_PUSH, node(), D),
    # ---- ops-viewers
    ("ops reads nodes", ops(), Action.NODE_READ, None, A),
    ("ops reads aggregates", ops(), Action.AGGREGATES_READ, None, A),
    ("ops reads project usage", ops(), Action.PROJECT_USAGE_READ, project("slb-eye", "slb"), A),
    ("ops reads department usage", ops(), Action.DEPARTMENT_USAGE_READ, department("slb"), A),
    ("ops: job status hidden", ops(), Action.JOB_READ, OWN_JOB, H),
    ("ops: job command/env hidden", ops(), Action.JOB_READ_SPEC, OWN_JOB, H),
    ("ops: job logs hidden", ops(), Action.JOB_LOGS, OWN_JOB, H),
    ("ops: cancel hidden", ops(), Action.JOB_CANCEL, OWN_JOB, H),
    ("ops cannot submit", ops(), Action.JOB_SUBMIT, project(), D),
    ("ops reads project", ops(), Action.PROJECT_READ, project(), A),
    ("ops cannot read project members", ops(), Action.PROJECT_MEMBERS_READ, project(), D),
    ("ops reads pools", ops(), Action.POOL_READ, None, A),
    ("ops cannot change quotas", ops(), Action.PROJECT_QUOTA_UPDATE, project(), D),
    ("ops: audit hidden", ops(), Action.AUDIT_READ, audit(), H),
    ("dept ops reads its dept project", ops("ouh"), Action.PROJECT_USAGE_READ, project(), A),
    ("dept ops: other dept project hidden", ops("ouh"), Action.PROJECT_USAGE_READ, project("slb-eye", "slb"), H),
    # ---- agents
    ("agent pushes own node", agent(), Action.TELEMETRY_PUSH, node("node-1"), A),
    ("agent cannot push other node", agent(), Action.TELEMETRY_PUSH, node("node-2"), D),
    ("agent: jobs hidden", agent(), Action.JOB_READ, OWN_JOB, H),
    ("agent cannot read nodes", agent(), Action.NODE_READ, None, D),
    ("agent cannot create tokens", agent(), Action.TOKEN_CREATE_OWN, None, D),
    ("agent cannot read aggregates", agent(), Action.AGGREGATES_READ, None, D),
    # ---- nobody (valid token, no grants)
    ("no grants: project hidden", nobody(), Action.PROJECT_READ, project(), H),
    ("no grants: no aggregates", nobody(), Action.AGGREGATES_READ, None, D),
    ("no grants: own token ok", nobody(), Action.TOKEN_READ, token("nobody"), A),
    # ---- stale data: grant's department disagrees with the object's
    ("grant with mismatched department is ignored", member(dept="slb"), Action.JOB_READ, OWN_JOB, H),
]


@pytest.mark.parametrize("name, principal, action, ref, expected", CASES, ids=[c[0] for c in CASES])
def test_authorize(name, principal, action, ref, expected):
    assert authorize(principal, action, ref) is expected


def test_every_action_has_a_case():
    assert set(Action) - {c[2] for c in CASES} == set()


def test_object_action_without_ref_is_a_programming_error():
    with pytest.raises(ValueError):
        authorize(member(), Action.JOB_READ, None)
    with pytest.raises(ValueError):
        authorize(member(), Action.JOB_READ, project())


def test_decision_status():
    assert (A.status, H.status, D.status) == (200, 404, 403)


PRINCIPALS = {
    "member": member(),
    "padmin": padmin(),
    "dadmin": dadmin(),
    "platform": platform(),
    "ops": ops(),
    "ops-ouh": ops("ouh"),
    "agent": agent(),
    "nobody": nobody(),
    "multi": Principal(
        "alice",
        (
            Grant(Role.MEMBER, department="ouh", project="ouh-liver"),
            Grant(Role.DEPARTMENT_ADMIN, department="svs"),
        ),
    ),
}
REFS = [
    job(p, d, o)
    for (p, d), o in itertools.product(
        [("ouh-liver", "ouh"), ("ouh-heart", "ouh"), ("slb-eye", "slb"), ("svs-x", "svs")], ["alice", "bob"]
    )
] + [project(p, d) for p, d in [("ouh-liver", "ouh"), ("slb-eye", "slb"), ("svs-x", "svs")]] + [
    department(d) for d in ["ouh", "slb", "svs"]
] + [token("alice"), token("bob"), token("nobody"), audit("ouh"), audit("svs"), audit(None), node()]


@pytest.mark.parametrize("who", sorted(PRINCIPALS))
def test_list_scope_agrees_with_visibility(who):
    """A list never shows a row the detail route would hide, and never hides a visible one."""
    p = PRINCIPALS[who]
    for ref in REFS:
        assert list_scope(p, ref.resource).contains(ref) == visible(p, ref), (who, ref)


def test_hide_is_independent_of_action_for_invisible_objects():
    """No power check may run before visibility: every object action hides a foreign job."""
    job_actions = [Action.JOB_READ, Action.JOB_READ_SPEC, Action.JOB_LOGS, Action.JOB_CANCEL]
    for p in PRINCIPALS.values():
        if not visible(p, FOREIGN_JOB):
            assert {authorize(p, a, FOREIGN_JOB) for a in job_actions} == {H}


def test_filter_visible():
    rows = [("j1", OWN_JOB), ("j2", FOREIGN_JOB), ("j3", TEAMMATE_JOB)]
    assert [r[0] for r in filter_visible(member(), rows, lambda r: r[1])] == ["j1", "j3"]


def test_empty_scope_means_nothing():
    s = list_scope(ops(), Resource.JOB)
    assert s.empty and not s.contains(OWN_JOB)


G_MEMBER = Grant(Role.MEMBER, department="ouh", project="ouh-liver")
G_PADMIN = Grant(Role.PROJECT_ADMIN, department="ouh", project="ouh-liver")
G_FOREIGN = Grant(Role.MEMBER, department="slb", project="slb-eye")
G_DADMIN = Grant(Role.DEPARTMENT_ADMIN, department="ouh")
G_PLATFORM = Grant(Role.PLATFORM_ADMIN)
G_OPS = Grant(Role.OPS_VIEWER)


@pytest.mark.parametrize(
    "name, principal, grant, expected",
    [
        ("member cannot add members", member(), G_MEMBER, D),
        ("project-admin adds member", padmin(), G_MEMBER, A),
        ("project-admin adds project-admin", padmin(), G_PADMIN, A),
        ("project-admin: foreign project hidden", padmin(), G_FOREIGN, H),
        ("project-admin cannot make dept-admin (dept visible)", padmin(), G_DADMIN, D),
        ("project-admin cannot make platform-admin", padmin(), G_PLATFORM, D),
        ("dept-admin adds member in dept", dadmin(), G_MEMBER, A),
        ("dept-admin cannot make another dept-admin", dadmin(), G_DADMIN, D),
        ("dept-admin cannot make ops-viewer", dadmin(), G_OPS, D),
        ("dept-admin: other dept hidden", dadmin(), G_FOREIGN, H),
        ("platform grants dept-admin", platform(), G_DADMIN, A),
        ("platform grants platform-admin", platform(), G_PLATFORM, A),
        ("ops cannot grant", ops(), G_MEMBER, D),
    ],
)
def test_can_grant(name, principal, grant, expected):
    assert can_grant(principal, grant) is expected


@pytest.mark.parametrize(
    "role, dept, proj",
    [
        (Role.MEMBER, None, "p"),
        (Role.MEMBER, "d", None),
        (Role.DEPARTMENT_ADMIN, None, None),
        (Role.DEPARTMENT_ADMIN, "d", "p"),
        (Role.PLATFORM_ADMIN, "d", None),
        (Role.OPS_VIEWER, "d", "p"),
    ],
)
def test_grant_scope_validation(role, dept, proj):
    with pytest.raises(ValueError):
        Grant(role, department=dept, project=proj)


# ---------------------------------------------------------------- properties

from hypothesis import given, settings, strategies as st  # noqa: E402

DEPTS = ["ouh", "slb"]
PROJS = {"ouh": ["ouh-a", "ouh-b"], "slb": ["slb-a"]}
SUBJECTS = ["alice", "bob"]


@st.composite
def grants(draw):
    role = draw(st.sampled_from(list(Role)))
    dept = draw(st.sampled_from(DEPTS))
    if role in (Role.MEMBER, Role.PROJECT_ADMIN):
        return Grant(role, department=dept, project=draw(st.sampled_from(PROJS[dept])))
    if role is Role.DEPARTMENT_ADMIN:
        return Grant(role, department=dept)
    if role is Role.OPS_VIEWER:
        return Grant(role, department=draw(st.sampled_from([None, dept])))
    return Grant(role)


principals = st.builds(
    lambda s, gs, agent: Principal(s, tuple(gs), kind="agent" if agent else "user", node_id="n1" if agent else None),
    st.sampled_from(SUBJECTS), st.lists(grants(), max_size=3), st.booleans(),
)


@st.composite
def refs(draw):
    resource = draw(st.sampled_from([Resource.JOB, Resource.PROJECT, Resource.DEPARTMENT, Resource.TOKEN, Resource.AUDIT]))
    dept = draw(st.sampled_from(DEPTS))
    proj = draw(st.sampled_from(PROJS[dept]))
    owner = draw(st.sampled_from(SUBJECTS))
    if resource is Resource.JOB:
        return Ref(resource, department=dept, project=proj, owner=owner)
    if resource is Resource.PROJECT:
        return Ref(resource, department=dept, project=proj)
    if resource is Resource.TOKEN:
        return Ref(resource, owner=owner)
    return Ref(resource, department=draw(st.sampled_from([dept, None])) if resource is Resource.AUDIT else dept)


@settings(max_examples=500, deadline=None)
@given(principals, refs())
def test_property_list_scope_equals_visibility(p, ref):
    assert list_scope(p, ref.resource).contains(ref) == visible(p, ref)


_OBJ_ACTIONS = [a for a in Action if a not in (Action.TELEMETRY_PUSH,)]


@settings(max_examples=500, deadline=None)
@given(principals, refs(), st.sampled_from(_OBJ_ACTIONS))
def test_property_invisible_objects_are_always_hidden(p, ref, action):
    from broker.auth.policy import _SPECS

    spec = _SPECS[action]
    if spec.resource is not ref.resource:
        return
    d = authorize(p, action, ref)
    if not visible(p, ref):
        assert d is Decision.HIDE
    else:
        assert d in (Decision.ALLOW, Decision.DENY)


@settings(max_examples=300, deadline=None)
@given(principals, refs(), st.sampled_from(_OBJ_ACTIONS))
def test_property_more_grants_never_lose_power(p, ref, action):
    """Monotonic: adding a grant never turns ALLOW into HIDE/DENY."""
    from broker.auth.policy import _SPECS

    if _SPECS[action].resource is not ref.resource or p.is_agent:
        return
    before = authorize(p, action, ref)
    more = Principal(p.subject, p.grants + (Grant(Role.OPS_VIEWER),), kind=p.kind, node_id=p.node_id)
    if before is Decision.ALLOW:
        assert authorize(more, action, ref) is Decision.ALLOW
