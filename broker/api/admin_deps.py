"""Dependencies shared by the admin routers: the audit `Caller` of a request.

The source address is the TCP peer unless the peer is one of the trusted proxies named in
the security settings (`security_trusted_proxies`, default none), in which case the rightmost
untrusted ``X-Forwarded-For`` entry is taken. The request id is the client's ``X-Request-ID``
when it is short and printable, else a fresh one.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from broker.api.deps import User
from broker.auth.audit import client_address
from broker.services.admin.audit import Caller


def origin(settings, peer: str | None, forwarded_for: str | None, request_id: str | None) -> tuple[str | None, str]:
    """(source address, request id) as the audit log records them: X-Forwarded-For only from a
    trusted proxy; a missing or unprintable X-Request-Id gets a fresh one."""
    proxies = getattr(settings, "security_trusted_proxies", ()) or ()
    source = client_address(peer, forwarded_for, proxies)
    if not request_id or len(request_id) > 64 or not request_id.isprintable():
        request_id = secrets.token_hex(8)
    return source, request_id


def request_origin(request: Request) -> tuple[str | None, str]:
    return origin(request.app.state.settings, request.client.host if request.client else None,
                  request.headers.get("x-forwarded-for"), request.headers.get("x-request-id"))


def caller(request: Request, principal: User) -> Caller:
    state = request.app.state
    source, rid = request_origin(request)
    pp = state.authz.principal(principal)
    return Caller(token_id=principal.token_id, subject=pp.subject, kind=principal.kind, name=principal.name,
                  source=source, request_id=rid, policy=pp)


CallerDep = Annotated[Caller, Depends(caller)]
