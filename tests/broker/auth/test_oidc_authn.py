"""OIDC as a way in: a valid JWT becomes a principal with group-mapped grants plus the linked
user's memberships; invalid JWTs get 401 with a reason; API tokens are left to TokenAuth."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlmodel import Session

from broker.errors import Unauthorized
from broker.models import Membership, TokenOwner, User
from broker.auth.oidc import GroupMapping, JWKSCache, OIDCConfig, OIDCVerifier
from broker.auth.policy import Action, Decision, Grant, Ref, Resource, Role
from broker.auth.tokens import issue_token
from broker.auth.authz import Authz
from broker.auth.oidc_authn import OIDCAuth

ISS, AUD = "https://idp.region.dk", "compute-broker"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**json.loads(RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "k1", "use": "sig"}


def token(sub: str, groups=(), **over) -> str:
    now = time.time()
    claims = {"iss": ISS, "aud": AUD, "sub": sub, "exp": now + 300, "nbf": now - 5, "groups": list(groups),
              "preferred_username": sub}
    claims.update(over)
    return "Bearer " + jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def oidc(engine):
    authz = Authz(engine, ttl_s=0.0)
    verifier = OIDCVerifier(OIDCConfig(issuer=ISS, audience=AUD, mapping=GroupMapping(prefix="cb")),
                            JWKSCache(lambda: {"keys": [JWK]}))
    return OIDCAuth(verifier, authz, engine), authz


def test_groups_become_grants(oidc):
    auth, authz = oidc
    p = auth.authenticate(token("u-" + uuid.uuid4().hex, ["cb:ouh:ouh-liver:member"]))
    assert p is not None and p.token_id.startswith("oidc:") and len(p.token_id) <= 32
    pp = authz.principal(p)
    assert pp.grants == (Grant(Role.MEMBER, department="ouh", project="ouh-liver"),)
    liver = Ref(Resource.PROJECT, department="ouh", project="ouh-liver")
    cardio = Ref(Resource.PROJECT, department="slb", project="slb-cardio")
    assert authz.decide(p, Action.JOB_SUBMIT, liver) is Decision.ALLOW
    assert authz.decide(p, Action.JOB_SUBMIT, cardio) is Decision.HIDE


def test_linked_user_adds_memberships_and_owns_jobs(oidc, engine):
    auth, authz = oidc
    sub, uid = "sub-" + uuid.uuid4().hex[:8], "u" + uuid.uuid4().hex[:8]
    with Session(engine) as s:
        s.add(User(id=uid, oidc_subject=sub))
        s.flush()
        s.add(Membership(user_id=uid, role="project-admin", department_id="slb", project_id="slb-cardio"))
        s.commit()
    p = auth.authenticate(token(sub))
    pp = authz.principal(p)
    assert pp.subject == uid
    assert Grant(Role.PROJECT_ADMIN, department="slb", project="slb-cardio") in pp.grants
    with Session(engine) as s:
        assert s.get(TokenOwner, p.token_id).user_id == uid
    assert authz.owner_subject(p.token_id) == uid


@pytest.mark.parametrize(
    "name, header, reason",
    [
        ("expired", lambda: token("x", exp=time.time() - 120), "token_expired"),
        ("wrong audience", lambda: token("x", aud="other"), "wrong_audience"),
        ("alg none", lambda: "Bearer eyJhbGciOiJub25lIn0." + "eyJzdWIiOiJ4In0.", "algorithm_not_allowed"),
    ],
)
def test_invalid_jwt_is_401_with_reason(oidc, name, header, reason):
    auth, _ = oidc
    with pytest.raises(Unauthorized) as e:
        auth.authenticate(header())
    assert e.value.details["reason"] == reason


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer not-a-jwt"])
def test_non_jwt_is_left_to_token_auth(oidc, header):
    assert oidc[0].authenticate(header) is None


def test_api_token_is_left_to_token_auth(oidc):
    assert oidc[0].authenticate("Bearer " + issue_token().plaintext) is None


@pytest.mark.parametrize(
    "name, principal_kw, projects",
    [
        ("member sees its project only", dict(role="member", project_id="ouh-liver", department_id="ouh"), {"ouh-liver"}),
        ("dept-admin sees its department", dict(role="department-admin", department_id="ouh"), {"ouh-liver", "ouh-radiology"}),
        ("global ops sees all", dict(role="ops-viewer"), {"ouh-liver", "ouh-radiology", "slb-cardio"}),
        ("no grant sees none", dict(role="user"), set()),
    ],
)
def test_overview_is_narrowed_to_visible_projects(engine, name, principal_kw, projects):
    from broker.auth.authn import Principal as AuthPrincipal

    authz = Authz(engine)
    data = {"totals": {"gpus": 8}, "projects": [{"project": p} for p in ("ouh-liver", "ouh-radiology", "slb-cardio")],
            "idle_allocations": [{"job_id": "j1", "project": "slb-cardio"}, {"job_id": "j2", "project": "ouh-liver"}]}
    p = AuthPrincipal(token_id="t-" + uuid.uuid4().hex[:6], kind="user", **principal_kw)
    out = authz.narrow_overview(p, data)
    assert {x["project"] for x in out["projects"]} == projects
    assert {x["project"] for x in out["idle_allocations"]} <= projects
    assert out["totals"] == data["totals"]
