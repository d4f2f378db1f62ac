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
from broker.security.audit import client_address
from broker.services.admin_audit import Caller


def caller(request: Request, principal: User) -> Caller:
    state = request.app.state
    peer = request.client.host if request.client else None
    proxies = getattr(state.settings, "security_trusted_proxies", ()) or ()
    source = client_address(peer, request.headers.get("x-forwarded-for"), proxies)
    rid = request.headers.get("x-request-id")
    if not rid or len(rid) > 64 or not rid.isprintable():
        rid = secrets.token_hex(8)
    pp = state.authz.principal(principal)
    return Caller(token_id=principal.token_id, subject=pp.subject, kind=principal.kind, name=principal.name,
                  source=source, request_id=rid, policy=pp)


CallerDep = Annotated[Caller, Depends(caller)]
