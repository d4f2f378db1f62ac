"""OIDC bearer tokens: verify JWTs from one configured issuer and map groups to grants.

Why this shape:
- The broker is a resource server: it never talks to users' browsers, it only checks the
  access/ID tokens regional identity providers issue. So: one issuer, one audience, one JWKS.
- Only asymmetric algorithms RS256 and ES256 are accepted, chosen from *our* allow-list, never
  from the token: ``alg: none`` and every HS* are refused before a key is even looked up (this
  closes the classic "HS256 signed with the RSA public key as the HMAC secret" confusion), and
  the key's type must match the algorithm (RSA >= 2048 bits for RS256, EC P-256 for ES256).
- Keys come only from the configured JWKS, looked up by ``kid``; ``jku``/``x5u``/``jwk``
  headers are ignored. The JWKS is cached; an unknown ``kid`` triggers one refetch (key
  rotation), rate-limited so a flood of made-up kids cannot hammer the IdP.
- Time claims (exp required, nbf if present) are checked here against an injected clock with a
  small leeway, so tests pass `now` instead of sleeping; iss and aud are checked by PyJWT.
- Groups -> roles: a convention (``cb:platform-admin``, ``cb:ops-viewer``,
  ``cb:<dept>:department-admin``, ``cb:<dept>:ops-viewer``, ``cb:<dept>:<project>:member``,
  ``cb:<dept>:<project>:project-admin``) and/or an explicit dict from IdP group names to grant
  specs in the same syntax without the prefix. Unknown groups are ignored (IdPs send many).

Invariant: `OIDCVerifier.verify` returns an identity only for a token whose signature was
checked with a configured key under an allowed algorithm and whose iss, aud, exp (and nbf)
hold at `now`; every refusal raises `OIDCError` with a stable `code` (callers answer 401 and
do not echo the reason to the client beyond the code).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import jwt
from jwt import PyJWK

from broker.auth.policy import Grant, Role
from broker.ports import Clock

__all__ = [
    "OIDCConfig",
    "OIDCError",
    "OIDCIdentity",
    "GroupMapping",
    "JWKSCache",
    "OIDCVerifier",
    "grants_from_groups",
    "parse_grant_spec",
    "http_jwks_fetcher",
]

ALLOWED_ALGORITHMS = ("RS256", "ES256")
_KTY_FOR_ALG = {"RS256": "RSA", "ES256": "EC"}
MIN_RSA_BITS = 2048
MAX_JWT_CHARS = 16 * 1024
MAX_GROUPS = 1000


class OIDCError(Exception):
    """A refused token. `code` is stable and machine-readable (e.g. ``token_expired``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class GroupMapping:
    """How the groups claim becomes grants (see module docstring for the syntax)."""

    prefix: str | None = "cb"  # None: no convention, only `explicit`
    explicit: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OIDCConfig:
    issuer: str
    audience: str
    jwks_url: str = ""
    groups_claim: str = "groups"  # dotted path allowed, e.g. "realm_access.roles"
    username_claim: str = "preferred_username"
    leeway_s: float = 30.0
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    mapping: GroupMapping = field(default_factory=GroupMapping)

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if a not in ALLOWED_ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(f"OIDC algorithms must be a subset of {ALLOWED_ALGORITHMS}, got {bad}")
        if not self.issuer or not self.audience:
            raise ValueError("OIDC needs an issuer and an audience")
        if not 0 <= self.leeway_s <= 300:
            raise ValueError("OIDC leeway must be between 0 and 300 seconds")
        if self.jwks_url and not _safe_url(self.jwks_url):
            raise ValueError("jwks_url must be https (http only for localhost)")


def _safe_url(url: str) -> bool:
    if url.startswith("https://"):
        return True
    for host in ("localhost", "127.0.0.1", "[::1]"):
        if url.startswith(f"http://{host}:") or url.startswith(f"http://{host}/"):
            return True
    return False


@dataclass(frozen=True, slots=True)
class OIDCIdentity:
    subject: str  # the IdP's stable `sub`
    issuer: str
    username: str  # `username_claim` if present, else `sub`
    email: str | None
    groups: tuple[str, ...]
    grants: tuple[Grant, ...]
    expires_at: float  # epoch seconds (caches must not outlive it)


# --------------------------------------------------------------------------- JWKS


def http_jwks_fetcher(url: str, timeout_s: float = 5.0) -> Callable[[], Mapping[str, Any]]:
    """A fetcher for `JWKSCache` that GETs `url` with httpx (no redirects to other hosts)."""

    def fetch() -> Mapping[str, Any]:
        import httpx  # imported lazily: only deployments with OIDC need the network path

        r = httpx.get(url, timeout=timeout_s, follow_redirects=False)
        r.raise_for_status()
        return r.json()

    return fetch


class JWKSCache:
    """Keys of one JWKS by kid, refetched after `ttl_s` or on an unknown kid.

    An unknown kid refetches at most once per `min_refresh_s`; a failed refetch keeps the
    previous keys (an IdP hiccup must not log everybody out). Thread-safe.
    """

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        clock: Clock = time.monotonic,
        ttl_s: float = 3600.0,
        min_refresh_s: float = 60.0,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl_s
        self._min_refresh = min_refresh_s
        self._keys: dict[str, PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()
        self.fetches = 0  # observable for tests and metrics

    def _refresh(self, now: float) -> None:
        self._fetched_at = now  # also on failure: rate-limits retries
        self.fetches += 1
        try:
            doc = self._fetch()
        except Exception:
            if self._keys is None:
                raise OIDCError("jwks_unavailable", "the identity provider's keys could not be fetched")
            return
        self._keys = _parse_jwks(doc)

    def get(self, kid: str | None) -> PyJWK:
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._ttl:
                self._refresh(now)
            key = _select(self._keys or {}, kid)
            if key is None and now - self._fetched_at >= self._min_refresh:
                self._refresh(now)
                key = _select(self._keys or {}, kid)
        if key is None:
            raise OIDCError("unknown_key", "the token was signed with an unknown key")
        return key


def _parse_jwks(doc: Mapping[str, Any]) -> dict[str, PyJWK]:
    """Usable signature keys of a JWKS document by kid ("" for a key without kid).

    Keys that are not for signatures, of an unsupported type or malformed are skipped.
    """
    keys: dict[str, PyJWK] = {}
    for jwk in (doc or {}).get("keys", []) if isinstance(doc, Mapping) else []:
        if not isinstance(jwk, Mapping) or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") not in ("RSA", "EC"):
            continue  # never symmetric ("oct") keys
        try:
            keys[str(jwk.get("kid", ""))] = PyJWK(dict(jwk))
        except Exception:
            continue
    return keys


def _select(keys: Mapping[str, PyJWK], kid: str | None) -> PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None  # no kid: only if unambiguous


# --------------------------------------------------------------------------- verification


class OIDCVerifier:
    def __init__(
        self,
        config: OIDCConfig,
        jwks: JWKSCache,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self._jwks = jwks
        self._clock = clock

    def verify(self, token: str, *, now: float | None = None) -> OIDCIdentity:
        """Verify `token` at `now` (epoch seconds; default: the injected clock)."""
        cfg = self.config
        if not token or len(token) > MAX_JWT_CHARS or token.count(".") != 2:
            raise OIDCError("malformed_token", "not a compact JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OIDCError("malformed_token", "the token header cannot be decoded") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise OIDCError("algorithm_not_allowed", f"algorithm {alg!r} is not accepted")
        if "crit" in header:
            raise OIDCError("malformed_token", "critical header extensions are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise OIDCError("malformed_token", "kid must be a string")
        jwk = self._jwks.get(kid)
        _check_key_matches(jwk, alg)
        try:
            claims = jwt.decode(
                token,
                key=jwk.key,
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise OIDCError("bad_signature", "the token signature is invalid") from None
        except jwt.InvalidAudienceError:
            raise OIDCError("wrong_audience", "the token is not meant for this service") from None
        except jwt.InvalidIssuerError:
            raise OIDCError("wrong_issuer", "the token comes from another issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise OIDCError("missing_claim", f"the token lacks the {e.claim!r} claim") from None
        except jwt.PyJWTError:
            raise OIDCError("malformed_token", "the token cannot be decoded") from None
        t = self._clock() if now is None else now
        exp = _number(claims.get("exp"), "exp")
        if t >= exp + cfg.leeway_s:
            raise OIDCError("token_expired", "the token has expired")
        if "nbf" in claims and t < _number(claims["nbf"], "nbf") - cfg.leeway_s:
            raise OIDCError("token_not_yet_valid", "the token is not valid yet")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise OIDCError("missing_claim", "the token lacks a subject")
        groups = _groups(claims, cfg.groups_claim)
        username = claims.get(cfg.username_claim)
        email = claims.get("email")
        return OIDCIdentity(
            subject=sub,
            issuer=cfg.issuer,
            username=username if isinstance(username, str) and username else sub,
            email=email if isinstance(email, str) else None,
            groups=groups,
            grants=grants_from_groups(groups, cfg.mapping),
            expires_at=exp,
        )


def _check_key_matches(jwk: PyJWK, alg: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = jwk.key
    if _KTY_FOR_ALG[alg] == "RSA":
        ok = isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    else:
        ok = isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if not ok:
        raise OIDCError("algorithm_not_allowed", f"the key for this token does not fit {alg}")


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise OIDCError("malformed_token", f"claim {name!r} must be a number")
    return float(v)


def _groups(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    v: Any = claims
    for part in path.split("."):
        v = v.get(part) if isinstance(v, Mapping) else None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        return ()
    return tuple(g for g in v[:MAX_GROUPS] if isinstance(g, str) and len(g) <= 256)


# --------------------------------------------------------------------------- groups -> grants


def parse_grant_spec(spec: str) -> Grant | None:
    """``platform-admin`` | ``ops-viewer`` | ``<dept>:department-admin`` | ``<dept>:ops-viewer``
    | ``<dept>:<project>:member`` | ``<dept>:<project>:project-admin`` -> Grant (None if not)."""
    parts = spec.split(":")
    try:
        role = Role(parts[-1])
    except ValueError:
        return None
    scope = parts[:-1]
    if any(not p for p in scope):
        return None
    try:
        if len(scope) == 0:
            return Grant(role)
        if len(scope) == 1:
            return Grant(role, department=scope[0])
        if len(scope) == 2:
            return Grant(role, department=scope[0], project=scope[1])
    except ValueError:
        return None
    return None


def grants_from_groups(groups: Iterable[str], mapping: GroupMapping) -> tuple[Grant, ...]:
    """Grants for a groups claim: explicit entries first, then the prefix convention.

    The result is de-duplicated and sorted (stable for caching and comparisons).
    """
    out: set[Grant] = set()
    for g in groups:
        specs = mapping.explicit.get(g, ())
        for spec in (specs,) if isinstance(specs, str) else specs:
            grant = parse_grant_spec(spec)
            if grant is not None:
                out.add(grant)
        if mapping.prefix and g.startswith(mapping.prefix + ":"):
            grant = parse_grant_spec(g[len(mapping.prefix) + 1 :])
            if grant is not None:
                out.add(grant)
    return tuple(sorted(out, key=lambda x: (x.role.value, x.department or "", x.project or "")))
