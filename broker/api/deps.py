"""FastAPI dependencies: the caller's principal and the services on app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from broker.errors import Forbidden
from broker.auth.authn import Principal


async def principal(request: Request) -> Principal:
    """Authenticate the bearer token (cached; a miss reads the DB in a worker thread)."""
    auth = request.app.state.auth
    header = request.headers.get("authorization")
    oidc = getattr(request.app.state, "oidc", None)
    if oidc is not None and oidc.looks_like_jwt(header):
        return await run_in_threadpool(oidc.authenticate, header)
    p = auth.cached(header)
    if p is None:
        p = await run_in_threadpool(auth.authenticate, header)
    return p


async def user(p: Annotated[Principal, Depends(principal)]) -> Principal:
    """User routes refuse agent tokens (those may only push telemetry for their node)."""
    if p.kind != "user":
        raise Forbidden("agent tokens may only push telemetry", code="AGENT_TOKEN")
    return p


User = Annotated[Principal, Depends(user)]
