"""OIDC verification with locally generated RSA and EC keys: acceptance and every refusal."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from broker.auth.oidc import (
    GroupMapping,
    JWKSCache,
    OIDCConfig,
    OIDCError,
    OIDCVerifier,
    grants_from_groups,
    parse_grant_spec,
)
from broker.auth.policy import Grant, Role

ISS = "https://idp.region.dk/realms/ai"
AUD = "compute-broker"
NOW = 1_800_000_000.0

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SMALL_RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)


def jwk_of(key, kid: str, alg: str | None = None) -> dict:
    pub = key.public_key()
    d = json.loads((RSAAlgorithm if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm).to_jwk(pub))
    d["kid"] = kid
    d["use"] = "sig"
    if alg:
        d["alg"] = alg
    return d


class FakeIdP:
    """Serves a JWKS whose keys a test can rotate; counts fetches."""

    def __init__(self, *jwks: dict) -> None:
        self.keys = list(jwks)
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"keys": list(self.keys)}


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def claims(**over) -> dict:
    c = {
        "iss": ISS,
        "aud": AUD,
        "sub": "u-123",
        "preferred_username": "alice",
        "email": "alice@ouh.dk",
        "exp": NOW + 300,
        "nbf": NOW - 10,
        "iat": NOW - 10,
        "groups": ["cb:ouh:ouh-liver:member", "unrelated-group"],
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(c: dict, key=RSA_KEY, alg="RS256", kid="rsa1", headers=None) -> str:
    h = {"kid": kid} if kid is not None else {}
    h.update(headers or {})
    return jwt.encode(c, key, algorithm=alg, headers=h)


def b64(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def verifier(idp: FakeIdP | None = None, clock: Clock | None = None, **cfg) -> OIDCVerifier:
    idp = idp or FakeIdP(jwk_of(RSA_KEY, "rsa1"), jwk_of(EC_KEY, "ec1"))
    cache = JWKSCache(idp, clock=clock or Clock(), ttl_s=3600, min_refresh_s=60)
    return OIDCVerifier(OIDCConfig(issuer=ISS, audience=AUD, **cfg), cache, clock=lambda: NOW)


@pytest.mark.parametrize(
    "name, token",
    [
        ("rs256", lambda: sign(claims())),
        ("es256", lambda: sign(claims(), key=EC_KEY, alg="ES256", kid="ec1")),
        ("audience list", lambda: sign(claims(aud=["other", AUD]))),
        ("no nbf", lambda: sign(claims(nbf=None))),
        ("expired within leeway", lambda: sign(claims(exp=NOW - 20))),
        ("nbf within leeway", lambda: sign(claims(nbf=NOW + 20))),
    ],
)
def test_accepts_valid_tokens(name, token):
    ident = verifier().verify(token())
    assert ident.subject == "u-123"
    assert ident.username == "alice"
    assert ident.grants == (Grant(Role.MEMBER, department="ouh", project="ouh-liver"),)


def _hs256_with_public_key() -> str:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64({"alg": "HS256", "typ": "JWT", "kid": "rsa1"})
    payload = b64(claims())
    import hashlib
    import hmac

    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def _tampered() -> str:
    h, p, s = sign(claims()).split(".")
    evil = b64(claims(groups=["cb:platform-admin"]))
    return f"{h}.{evil}.{s}"


@pytest.mark.parametrize(
    "name, token, code",
    [
        ("expired", lambda: sign(claims(exp=NOW - 31)), "token_expired"),
        ("expired at exact leeway edge", lambda: sign(claims(exp=NOW - 30)), "token_expired"),
        ("not yet valid", lambda: sign(claims(nbf=NOW + 31)), "token_not_yet_valid"),
        ("wrong issuer", lambda: sign(claims(iss="https://evil.example")), "wrong_issuer"),
        ("wrong audience", lambda: sign(claims(aud="other-service")), "wrong_audience"),
        ("missing exp", lambda: sign(claims(exp=None)), "missing_claim"),
        ("missing aud", lambda: sign(claims(aud=None)), "missing_claim"),
        ("missing sub", lambda: sign(claims(sub=None)), "missing_claim"),
        ("string exp", lambda: sign(claims(exp="2099")), "malformed_token"),
        ("alg none", lambda: f"{b64({'alg': 'none', 'kid': 'rsa1'})}.{b64(claims())}.", "algorithm_not_allowed"),
        ("alg None capitalised", lambda: f"{b64({'alg': 'None', 'kid': 'rsa1'})}.{b64(claims())}.", "algorithm_not_allowed"),
        ("HS256 with public key as secret", _hs256_with_public_key, "algorithm_not_allowed"),
        ("RS512 not on allow-list", lambda: sign(claims(), alg="RS512"), "algorithm_not_allowed"),
        ("ES256 header on RSA key", lambda: sign(claims(), key=EC_KEY, alg="ES256", kid="rsa1"), "algorithm_not_allowed"),
        ("unknown kid", lambda: sign(claims(), kid="nope"), "unknown_key"),
        ("signed by another key", lambda: sign(claims(), key=OTHER_RSA), "bad_signature"),
        ("tampered payload", _tampered, "bad_signature"),
        (
            "embedded jwk header is ignored",
            lambda: sign(claims(), key=OTHER_RSA, kid="rsa1", headers={"jwk": jwk_of(OTHER_RSA, "x")}),
            "bad_signature",
        ),
        ("garbage", lambda: "not.a.jwt", "malformed_token"),
        ("two segments", lambda: "abc.def", "malformed_token"),
        ("crit header", lambda: sign(claims(), headers={"crit": ["exp"]}), "malformed_token"),
    ],
)
def test_refuses(name, token, code):
    with pytest.raises(OIDCError) as e:
        verifier().verify(token())
    assert e.value.code == code


def test_small_rsa_key_is_refused():
    idp = FakeIdP(jwk_of(SMALL_RSA, "small"))
    with pytest.raises(OIDCError) as e:
        verifier(idp).verify(sign(claims(), key=SMALL_RSA, kid="small"))
    assert e.value.code == "algorithm_not_allowed"


def test_symmetric_keys_in_jwks_are_never_used():
    secret = b"s" * 32
    oct_key = {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
    idp = FakeIdP(oct_key)
    with pytest.raises(OIDCError) as e:
        verifier(idp).verify(jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "hmac"}))
    assert e.value.code == "algorithm_not_allowed"


def test_unknown_kid_refetches_once_then_accepts_rotated_key():
    idp = FakeIdP(jwk_of(RSA_KEY, "rsa1"))
    clock = Clock(1000.0)
    v = verifier(idp, clock)
    v.verify(sign(claims()))
    assert idp.calls == 1
    idp.keys.append(jwk_of(OTHER_RSA, "rsa2"))  # the IdP rotates
    clock.t += 61
    assert v.verify(sign(claims(), key=OTHER_RSA, kid="rsa2")).subject == "u-123"
    assert idp.calls == 2


def test_unknown_kid_flood_is_rate_limited():
    idp = FakeIdP(jwk_of(RSA_KEY, "rsa1"))
    clock = Clock(1000.0)
    v = verifier(idp, clock)
    v.verify(sign(claims()))
    for i in range(20):
        clock.t += 1
        with pytest.raises(OIDCError):
            v.verify(sign(claims(), kid=f"made-up-{i}"))
    assert idp.calls == 1  # all within min_refresh_s of the last fetch


def test_failed_refresh_keeps_known_keys():
    idp = FakeIdP(jwk_of(RSA_KEY, "rsa1"))
    clock = Clock(0.0)
    v = verifier(idp, clock)
    v.verify(sign(claims()))

    def broken():
        raise OSError("idp down")

    v._jwks._fetch = broken
    clock.t += 4000  # past the TTL: a refresh is attempted and fails
    assert v.verify(sign(claims())).subject == "u-123"


def test_jwks_unreachable_at_start():
    def broken():
        raise OSError("idp down")

    v = OIDCVerifier(OIDCConfig(issuer=ISS, audience=AUD), JWKSCache(broken, clock=Clock()), clock=lambda: NOW)
    with pytest.raises(OIDCError) as e:
        v.verify(sign(claims()))
    assert e.value.code == "jwks_unavailable"


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("HS256 configured", {"algorithms": ("HS256",)}),
        ("none configured", {"algorithms": ("none",)}),
        ("plain http jwks", {"jwks_url": "http://idp.region.dk/jwks"}),
        ("huge leeway", {"leeway_s": 3600}),
    ],
)
def test_config_refuses_unsafe_settings(name, kwargs):
    with pytest.raises(ValueError):
        OIDCConfig(issuer=ISS, audience=AUD, **kwargs)


@pytest.mark.parametrize(
    "spec, grant",
    [
        ("platform-admin", Grant(Role.PLATFORM_ADMIN)),
        ("ops-viewer", Grant(Role.OPS_VIEWER)),
        ("ouh:ops-viewer", Grant(Role.OPS_VIEWER, department="ouh")),
        ("ouh:department-admin", Grant(Role.DEPARTMENT_ADMIN, department="ouh")),
        ("ouh:ouh-liver:member", Grant(Role.MEMBER, department="ouh", project="ouh-liver")),
        ("ouh:ouh-liver:project-admin", Grant(Role.PROJECT_ADMIN, department="ouh", project="ouh-liver")),
        ("member", None),  # a member needs a project
        ("department-admin", None),
        ("ouh:ouh-liver:department-admin", None),
        ("ouh:platform-admin", None),
        ("a:b:c:member", None),
        ("::member", None),
        ("ouh:superuser", None),
    ],
)
def test_parse_grant_spec(spec, grant):
    assert parse_grant_spec(spec) == grant


def test_groups_mapping_convention_and_explicit():
    mapping = GroupMapping(
        prefix="cb",
        explicit={"OUH-AI-Admins": ("ouh:department-admin",), "Ops": "ops-viewer", "Bad": ("nonsense",)},
    )
    groups = ["OUH-AI-Admins", "Ops", "Bad", "cb:slb:slb-eye:member", "xcb:platform-admin", "cb:bogus"]
    assert set(grants_from_groups(groups, mapping)) == {
        Grant(Role.DEPARTMENT_ADMIN, department="ouh"),
        Grant(Role.OPS_VIEWER),
        Grant(Role.MEMBER, department="slb", project="slb-eye"),
    }


def test_groups_mapping_without_prefix_ignores_convention():
    assert grants_from_groups(["cb:platform-admin"], GroupMapping(prefix=None)) == ()


def test_nested_groups_claim_path():
    v = verifier(groups_claim="realm_access.roles")
    token = sign(claims(groups=None, realm_access={"roles": ["cb:platform-admin"]}))
    assert v.verify(token).grants == (Grant(Role.PLATFORM_ADMIN),)
