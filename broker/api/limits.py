"""Request body size limit as a pure ASGI middleware (cheap on the hot path).

Refuses with 413 when Content-Length exceeds the limit, and stops reading a chunked body once
it does; the answer has the usual error shape.
"""

from __future__ import annotations

import orjson

from broker.errors import PayloadTooLarge


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = self.max_bytes + 1
                if n > self.max_bytes:
                    return await self._too_large(send)
                break
        seen = 0
        limit = self.max_bytes

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:  # handled by the BrokerError handler (inside this middleware)
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes",
                                          details={"max_bytes": limit})
            return msg

        await self.app(scope, limited, send)

    async def _too_large(self, send):
        body = orjson.dumps({"error": {"code": "PAYLOAD_TOO_LARGE",
                                       "message": f"request body is larger than {self.max_bytes} bytes",
                                       "details": {"max_bytes": self.max_bytes}}})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
