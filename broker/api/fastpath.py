"""The submit fast path: `POST /api/v1/jobs` served as a pure ASGI handler.

Why: at hundreds of submits per second the framework's own per-request machinery (route
matching, dependency solving, body-to-argument conversion, response-model handling) cost more
CPU than the work itself. This layer answers exactly `POST /api/v1/jobs` with the same
service calls as the FastAPI route in `broker.api.jobs` (which stays: it documents the
endpoint in OpenAPI and serves when the fast path is off, `BROKER_SUBMIT_FAST_PATH=false`):

  cached bearer token -> `JobCreate.model_validate_json` (pydantic-core parses and validates
  in one pass) -> `JobService.prepare` (cached catalog) -> group commit -> orjson 201.

Behaviour is identical by construction (same schema, same service, same error bodies, same
`on_submit` hook); tests run the API suite through this path and compare both paths.
Everything else passes through to FastAPI untouched.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from broker.api.admin_deps import origin
from broker.errors import BrokerError, Forbidden, PayloadTooLarge, validation_message
from broker.schemas import JobCreate
from broker.services.jobs import body_hash

_JSON = [(b"content-type", b"application/json")]


class SubmitFastPath:
    def __init__(self, app, *, state, max_body_bytes: int) -> None:
        self.app, self.state, self.max_body = app, state, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in ("/api/v1/jobs", "/api/v1/jobs/"):
            return await self.app(scope, receive, send)
        try:
            status, body, extra = await self._submit(scope, receive)
        except BrokerError as e:
            status, body, extra = e.status, e.body(), list(e.headers.items())
        payload = orjson.dumps(body)
        headers = _JSON + [(b"content-length", str(len(payload)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _submit(self, scope, receive):
        st = self.state
        auth_header = key = forwarded = rid = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth_header = v.decode("latin-1")
            elif k == b"idempotency-key":
                key = v.decode("latin-1")
            elif k == b"x-forwarded-for":
                forwarded = v.decode("latin-1")
            elif k == b"x-request-id":
                rid = v.decode("latin-1")
        oidc = getattr(st, "oidc", None)
        principal = st.auth.cached(auth_header)
        if principal is None and oidc is not None and oidc.looks_like_jwt(auth_header):
            principal = await run_in_threadpool(oidc.authenticate, auth_header)
        if principal is None:
            principal = await run_in_threadpool(st.auth.authenticate, auth_header)
        if principal.kind != "user":
            raise Forbidden("agent tokens may only push telemetry", code="AGENT_TOKEN")
        raw = await self._body(receive)
        try:
            spec = JobCreate.model_validate_json(raw)
        except ValidationError as e:
            message, fields = validation_message(e.errors(include_url=False, include_input=False))
            return 422, {"error": {"code": "VALIDATION_ERROR", "message": message, "details": {"fields": fields}}}, []
        svc = st.jobs
        client = scope.get("client")
        source, rid = origin(st.settings, client[0] if client else None, forwarded, rid)
        if svc.cache_ready(spec):
            row, event = svc.prepare(principal=principal, spec=spec, source=source, request_id=rid)
        else:
            row, event = await run_in_threadpool(svc.prepare, principal=principal, spec=spec, source=source,
                                                 request_id=rid)
        extra = []
        if key is not None:
            if len(key) > 255 or not key.strip() or not key.isprintable():
                return 422, {"error": {"code": "BAD_IDEMPOTENCY_KEY", "message":
                                       "Idempotency-Key must be 1..255 printable characters", "details": {}}}, []
            body, replayed = await run_in_threadpool(svc.submit_idempotent, principal=principal, row=row,
                                                     event=event, key=key, body_hash=body_hash(spec))
            if replayed:
                return 201, body, [("Idempotent-Replayed", "true")]
        else:
            body = await svc.submit_rows(row, event)
        hook = st.on_submit
        if hook is not None:
            hook()
        return 201, body, extra

    async def _body(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"request body is larger than {self.max_body} bytes",
                                      details={"max_bytes": self.max_body})
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        return b"".join(chunks)
