"""OIDC bearer tokens as a second way in, next to the broker's own API tokens.

`OIDCAuth.authenticate(header)` returns None for anything that is not a JWT (the caller then
uses `TokenAuth`), a principal for a valid one, and raises Unauthorized (401, with the
verifier's reason code in `details.reason`) for an invalid one. The principal's token id is
``oidc:<24 hex of sha256(issuer|sub)>`` (fits `jobs.owner_token_id`), its grants come from the
groups claim (`broker.auth.oidc`) and, when a user row has this `oidc_subject`, from that
user's memberships; the link is stored in `token_owners` so job ownership survives restarts.

Built only when `oidc_issuer` is configured (`from_settings` returns None otherwise).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from broker.errors import Unauthorized
from broker.models import TokenOwner, User
from broker.auth.oidc import GroupMapping, JWKSCache, OIDCConfig, OIDCError, OIDCVerifier, http_jwks_fetcher
from broker.auth.tokens import bearer_token, parse_token
from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz


class OIDCAuth:
    def __init__(self, verifier: OIDCVerifier, authz: Authz, engine) -> None:
        self.verifier, self.authz, self.engine = verifier, authz, engine
        self._linked: dict[str, str | None] = {}

    @staticmethod
    def looks_like_jwt(authorization: str | None) -> bool:
        raw = bearer_token(authorization)
        return raw is not None and raw.count(".") == 2 and parse_token(raw) is None

    def authenticate(self, authorization: str | None) -> AuthPrincipal | None:
        if not self.looks_like_jwt(authorization):
            return None
        raw = bearer_token(authorization)
        try:
            ident = self.verifier.verify(raw)
        except OIDCError as e:
            raise Unauthorized("the identity token was refused", code="UNAUTHORIZED", details={"reason": e.code},
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        token_id = "oidc:" + hashlib.sha256(f"{ident.issuer}|{ident.subject}".encode()).hexdigest()[:24]
        user_id = self._link(token_id, ident.subject)
        self.authz.remember_oidc(token_id, ident.grants, user_id)
        return AuthPrincipal(token_id=token_id, kind="user", role="oidc", name=ident.username,
                             expires_at=ident.expires_at)

    def _link(self, token_id: str, subject: str) -> str | None:
        if token_id in self._linked:
            return self._linked[token_id]
        with Session(self.engine) as s:
            user = s.execute(select(User).where(User.oidc_subject == subject)).scalars().first()
            uid = None if user is None or user.disabled_at is not None else user.id
            if uid is not None and s.get(TokenOwner, token_id) is None:
                s.add(TokenOwner(token_id=token_id, user_id=uid))
                s.commit()
        if uid is not None:  # cache positive links only: a user created later is found next time
            self._linked[token_id] = uid
        return uid


def from_settings(settings: Any, authz: Authz, engine) -> OIDCAuth | None:
    """Build from `oidc_*` settings (absent or empty issuer: OIDC off)."""
    issuer = getattr(settings, "oidc_issuer", None)
    if not issuer:
        return None
    explicit = getattr(settings, "oidc_group_map", None) or {}
    if isinstance(explicit, str):
        explicit = json.loads(explicit)
    cfg = OIDCConfig(
        issuer=issuer, audience=settings.oidc_audience, jwks_url=settings.oidc_jwks_url,
        groups_claim=getattr(settings, "oidc_groups_claim", "groups"),
        mapping=GroupMapping(prefix=getattr(settings, "oidc_group_prefix", "cb") or None, explicit=explicit),
    )
    return OIDCAuth(OIDCVerifier(cfg, JWKSCache(http_jwks_fetcher(cfg.jwks_url))), authz, engine)
