"""Authentication: a bearer header to a `Principal`, in one order for every entry point.

`Authenticator` is what the FastAPI dependency and the submit fast path both call: the token
cache first (no I/O), then an OIDC identity token when OIDC is configured and the header holds
a JWT, then the API token in the DB. A JWT is never in the token cache (it does not parse as
an API token), so the order changes cost, never the answer.

Bearer-token authentication (`TokenAuth`) keeps a small in-process TTL cache.

Tokens are stored as sha256 of the full token (see `broker.auth.tokens`); a request's
token is parsed (syntax only), looked up by its visible prefix, compared in constant time,
and checked for expiry and revocation. A positive result is cached for `ttl_s` keyed by the
token's hash so the hot path costs one sha256 and one dict lookup; expiry is re-checked on
every hit. Revocation through this process calls `forget()`; another process's revocation
is seen within `ttl_s`. Failures are never cached (a flood of bad tokens cannot grow memory).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from anyio import to_thread

from broker.errors import Forbidden, Unauthorized
from broker.models import ApiToken
from broker.auth.tokens import bearer_token, hash_token, parse_token, verify_token_hash
from broker.ports import Clock

_MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. Roles and scopes are enforced by the authorization layer (`authz`)."""

    token_id: str
    kind: str  # "user" | "agent"
    role: str
    name: str = ""
    project_id: str | None = None
    department_id: str | None = None
    node_id: str | None = None
    expires_at: float | None = None


def _unauthorized(msg: str = "a valid bearer token is required") -> Unauthorized:
    return Unauthorized(msg, code="UNAUTHORIZED", headers={"WWW-Authenticate": "Bearer"})


class TokenAuth:
    def __init__(self, engine: Engine, *, ttl_s: float = 30.0, clock: Clock = time.time):
        self._engine, self._ttl, self._clock = engine, ttl_s, clock
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped by forget(): a cache built on top of this one drops its hits

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal if this token was verified within ttl_s and is still unexpired; no I/O."""
        raw = bearer_token(authorization)
        if raw is None:
            return None
        hit = self._cache.get(hash_token(raw))
        if hit is None:
            return None
        p, until = hit
        now = self._clock()
        if now >= until or (p.expires_at is not None and now >= p.expires_at):
            return None
        return p

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify against the DB (cache miss path). Raises Unauthorized (401)."""
        p = self.cached(authorization)
        if p is not None:
            return p
        raw = bearer_token(authorization)
        parsed = parse_token(raw)
        if parsed is None:
            raise _unauthorized()
        with Session(self._engine) as s:
            row = token_by_prefix(s, parsed.prefix)
        now = self._clock()
        if row is None or not verify_token_hash(parsed.plaintext, row.hash):
            raise _unauthorized()
        if row.revoked_at is not None and row.revoked_at <= now:
            raise _unauthorized("token revoked")
        if row.expires_at is not None and now >= row.expires_at:
            raise _unauthorized("token expired")
        p = principal_of(row)
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[row.hash] = (p, now + self._ttl)
        return p

    def forget(self, token_hash: str | None = None) -> None:
        """Drop one cached token (after revocation) or all of them."""
        with self._lock:
            self.generation += 1
            if token_hash is None:
                self._cache.clear()
            else:
                self._cache.pop(token_hash, None)


def token_by_prefix(session: Session, prefix: str) -> ApiToken | None:
    """The token row with this visible prefix (the hash is compared by the caller)."""
    return session.execute(select(ApiToken).where(ApiToken.prefix == prefix)).scalars().first()


def principal_of(row: ApiToken) -> Principal:
    return Principal(token_id=row.id, kind=row.kind, role=row.role, name=row.name, project_id=row.project_id,
                     department_id=row.department_id, node_id=row.node_id, expires_at=row.expires_at)


class IdentityTokens(Protocol):
    """A second way in besides API tokens (`broker.auth.oidc_authn.OIDCAuth`)."""

    def looks_like_jwt(self, authorization: str | None) -> bool: ...

    def authenticate(self, authorization: str | None) -> Principal | None: ...


class Authenticator:
    """Bearer header -> Principal for every way in (FastAPI routes, the submit fast path).

    A miss of the token cache reads the DB (or verifies a JWT) in a worker thread, so the
    event loop never waits on I/O."""

    def __init__(self, tokens: TokenAuth, oidc: IdentityTokens | None = None) -> None:
        self.tokens, self.oidc = tokens, oidc

    @property
    def generation(self) -> int:
        """Changes whenever a token is revoked in this process (see `TokenAuth.forget`)."""
        return self.tokens.generation

    async def principal(self, authorization: str | None) -> Principal:
        """Any valid caller (user or agent). Raises Unauthorized (401)."""
        p = self.tokens.cached(authorization)
        if p is not None:
            return p
        if self.oidc is not None and self.oidc.looks_like_jwt(authorization):
            return await to_thread.run_sync(self.oidc.authenticate, authorization)
        return await to_thread.run_sync(self.tokens.authenticate, authorization)

    async def user(self, authorization: str | None) -> Principal:
        """A user: agent tokens may only push telemetry for their node (403 AGENT_TOKEN)."""
        return require_user(await self.principal(authorization))


def require_user(p: Principal) -> Principal:
    if p.kind != "user":
        raise Forbidden("agent tokens may only push telemetry", code="AGENT_TOKEN")
    return p
