"""Token administration: create (shown once), list, revoke; users' own tokens and, for
platform-admins, tokens for others and node-agent tokens.

Rules (with `broker.auth.policy`):
- Any user creates tokens for itself (TOKEN_CREATE_OWN). Such tokens carry role "user" and act
  with the owner's memberships; they need an owner, so a caller that is not a user (the
  bootstrap admin token) cannot create own tokens, only platform tokens (TOKEN_ADMIN).
- Every token expires: default 90 days, at most 365 (a leaked token must die on its own).
- Agent tokens name the node they speak for; they can only push telemetry for it.
- Listing never returns hashes; the plaintext exists only in the creation response.
- Revocation is immediate in this process (auth cache forgotten) and within the auth cache TTL
  elsewhere; revoking twice is harmless.
Every create and revoke writes an audit entry in the same transaction.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlmodel import Session

from broker.errors import Invalid, NotFound
from broker.models import ApiToken
from broker.models import TokenOwner, User
from broker.auth.policy import Action, Ref, Resource
from broker.ports import Clock
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.auth.authn import Principal as AuthPrincipal, TokenAuth
from broker.auth.authz import USER_TOKEN_ROLE, Authz, grant_of
from broker.services.bootstrap import create_token

DEFAULT_TTL_DAYS = 90
MAX_TTL_DAYS = 365
DAY = 86400.0


def token_not_found(token_id: str) -> NotFound:
    return NotFound(f"token {token_id!r} not found", code="TOKEN_NOT_FOUND")


def token_public(row: ApiToken, owner: str | None) -> dict:
    return {"id": row.id, "prefix": row.prefix, "name": row.name, "kind": row.kind, "role": row.role,
            "project": row.project_id, "department": row.department_id, "node": row.node_id, "owner": owner,
            "created_at": row.created_at, "expires_at": row.expires_at, "revoked_at": row.revoked_at}


class TokenAdmin:
    def __init__(self, engine, authz: Authz, auth: TokenAuth, *, clock: Clock = time.time) -> None:
        self.engine, self.authz, self.auth, self.clock = engine, authz, auth, clock

    def _expiry(self, ttl_days: float | None) -> float:
        days = DEFAULT_TTL_DAYS if ttl_days is None else ttl_days
        if not 0 < days <= MAX_TTL_DAYS:
            raise Invalid(f"ttl_days must be between 0 and {MAX_TTL_DAYS}", code="BAD_TTL")
        return self.clock() + days * DAY

    def create_own(self, p: AuthPrincipal, caller: Caller, *, name: str, ttl_days: float | None) -> dict:
        self.authz.require(p, Action.TOKEN_CREATE_OWN)
        owner = self.authz.token_owner(p.token_id) if not p.token_id.startswith("oidc:") else None
        if owner is None and p.token_id.startswith("oidc:"):
            owner = caller.subject if not caller.subject.startswith("token:") else None
        if owner is None:
            raise Invalid("this token has no owning user; platform-admins create tokens for users with "
                          "POST /api/v1/admin/tokens", code="NO_TOKEN_OWNER")
        return self._create(caller, name=name, role=USER_TOKEN_ROLE, owner=owner, ttl_days=ttl_days)

    def create_for(self, p: AuthPrincipal, caller: Caller, *, name: str, kind: str, role: str,
                   user: str | None, project: str | None, department: str | None, node: str | None,
                   ttl_days: float | None) -> dict:
        self.authz.require(p, Action.TOKEN_ADMIN)
        if kind == "agent":
            if not node:
                raise Invalid("agent tokens must name their node", code="AGENT_TOKEN_NODE")
            role, project, department, user = "agent", None, None, None
        elif kind == "user":
            if node:
                raise Invalid("only agent tokens name a node", code="BAD_TOKEN_SCOPE")
            if role != USER_TOKEN_ROLE:
                dept = department
                if project and not dept:
                    dept = self.authz.project_department(project)
                if grant_of(role, dept, project) is None:
                    raise Invalid(f"role {role!r} does not fit scope department={department!r} project={project!r}",
                                  code="BAD_TOKEN_SCOPE")
                department = dept
            elif not user:
                raise Invalid("a token with role 'user' needs an owning user", code="NO_TOKEN_OWNER")
        else:
            raise Invalid("kind must be 'user' or 'agent'", code="BAD_TOKEN_KIND")
        return self._create(caller, name=name, role=role, owner=user, ttl_days=ttl_days, kind=kind,
                            project=project, department=department, node=node)

    def _create(self, caller: Caller, *, name: str, role: str, owner: str | None, ttl_days: float | None,
                kind: str = "user", project: str | None = None, department: str | None = None,
                node: str | None = None) -> dict:
        expires = self._expiry(ttl_days)
        with Session(self.engine, expire_on_commit=False) as s:
            if owner is not None:
                u = s.get(User, owner)
                if u is None or u.disabled_at is not None:
                    raise Invalid(f"user {owner!r} does not exist or is disabled", code="UNKNOWN_USER")
            plaintext, row = create_token(s, name=name, role=role, kind=kind, project_id=project,
                                          department_id=department, node_id=node, expires_at=expires)
            if owner is not None:
                s.add(TokenOwner(token_id=row.id, user_id=owner))
            body = token_public(row, owner)
            audit.record(s, caller, action="token.create", target_kind="token", target_id=row.id,
                         after=body, department=department, project=project, clock=self.clock)
            s.commit()
        return {**body, "token": plaintext}

    def list(self, p: AuthPrincipal, *, all_users: bool = False, user: str | None = None) -> dict:
        with Session(self.engine) as s:
            q = select(ApiToken, TokenOwner.user_id).outerjoin(TokenOwner, TokenOwner.token_id == ApiToken.id)
            if all_users or user:
                self.authz.require(p, Action.TOKEN_ADMIN)
                if user:
                    q = q.where(TokenOwner.user_id == user)
            else:
                owner = self.authz.token_owner(p.token_id)
                if owner is None:  # a token without owner sees itself only
                    q = q.where(ApiToken.id == p.token_id)
                else:
                    q = q.where(TokenOwner.user_id == owner)
            rows = s.execute(q.order_by(ApiToken.created_at.desc()).limit(500)).all()
        return {"items": [token_public(t, o) for t, o in rows]}

    def revoke(self, p: AuthPrincipal, caller: Caller, token_id: str) -> dict:
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.get(ApiToken, token_id) if len(token_id) <= 32 else None
            if row is None:
                raise token_not_found(token_id)
            owner_row = s.get(TokenOwner, row.id)
            owner = owner_row.user_id if owner_row else None
            subject = owner or f"token:{row.id}"
            self.authz.require(p, Action.TOKEN_REVOKE, Ref(Resource.TOKEN, owner=subject),
                               hidden=token_not_found(token_id))
            before = token_public(row, owner)
            if row.revoked_at is None:
                row.revoked_at = self.clock()
                s.add(row)
                audit.record(s, caller, action="token.revoke", target_kind="token", target_id=row.id,
                             before=before, after=token_public(row, owner), department=row.department_id,
                             project=row.project_id, clock=self.clock)
                s.commit()
            body = token_public(row, owner)
            token_hash = row.hash
        self.auth.forget(token_hash)
        return body
