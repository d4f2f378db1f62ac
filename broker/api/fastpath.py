"""The submit fast path: `POST /api/v1/jobs` served as a pure ASGI handler.

Why: at hundreds of submits per second the framework's own per-request machinery (route
matching, dependency solving, body-to-argument conversion, response-model handling) cost more
CPU than the work itself. This layer answers exactly `POST /api/v1/jobs` with the same
service calls as the FastAPI route in `broker.api.jobs` (which stays: it documents the
endpoint in OpenAPI and serves when the fast path is off, `BROKER_SUBMIT_FAST_PATH=false`):

  `Authenticator.user` (token cache first) -> `JobCreate.model_validate_json` (pydantic-core
  parses and validates in one pass) -> `JobService.submit` -> orjson 201.

Behaviour is identical by construction (same authenticator, same schema, same `submit()`
service, same error bodies); tests run the API suite through this path and compare both paths.
Everything else passes through to FastAPI untouched.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from broker.api.deps import origin
from broker.errors import BrokerError, PayloadTooLarge, validation_message
from broker.schemas import JobCreate
from broker.services.db_errors import DB_EXCEPTIONS, translate
from broker.services.wiring import Services

_JSON = [(b"content-type", b"application/json")]


class SubmitFastPath:
    def __init__(self, app, *, services: Services, max_body_bytes: int) -> None:
        self.app, self.services, self.max_body = app, services, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in ("/api/v1/jobs", "/api/v1/jobs/"):
            return await self.app(scope, receive, send)
        try:
            status, body, extra = await self._submit(scope, receive)
        except BrokerError as e:
            status, body, extra = e.status, e.body(), list(e.headers.items())
        except DB_EXCEPTIONS as e:  # outside the app's handlers here: translate as they do
            mapped = translate(e)
            if mapped is None:
                raise
            status, body, extra = mapped.status, mapped.body(), list(mapped.headers.items())
        payload = orjson.dumps(body)
        headers = _JSON + [(b"content-length", str(len(payload)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _submit(self, scope, receive):
        svc = self.services
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
        principal = await svc.authn.user(auth_header)
        raw = await self._body(receive)
        try:
            spec = JobCreate.model_validate_json(raw)
        except ValidationError as e:
            message, fields = validation_message(e.errors(include_url=False, include_input=False))
            return 422, {"error": {"code": "VALIDATION_ERROR", "message": message, "details": {"fields": fields}}}, []
        client = scope.get("client")
        source, rid = origin(svc.settings, client[0] if client else None, forwarded, rid)
        body, replayed = await svc.jobs.submit(principal=principal, spec=spec, source=source, request_id=rid,
                                               idempotency_key=key)
        return 201, body, [("Idempotent-Replayed", "true")] if replayed else []

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
