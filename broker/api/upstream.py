"""A small HTTP/1.1 client for the service proxy: keep-alive connections per replica, streamed
response bodies, no dependencies beyond asyncio.

Why not httpx: the proxy's cost per request is what the entry point adds to every inference
call; httpx's generality (request and response models, several layers of transports) cost
more CPU per request than the rest of the proxy together (`broker bench service`). This client
does only what the proxy needs: one request on a pooled connection, the status and headers,
then the body as it comes (Content-Length, chunked, or until the connection closes).

Invariant: a connection goes back to the pool only once its response was read to the end and
neither side asked to close it; a failure on a reused connection before any byte of the answer
is retried once on a fresh one (the replica closed an idle connection: the request never ran).
A streamed request body (`rest`) goes out on a fresh connection with backpressure (`drain`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024
MAX_IDLE_PER_ENDPOINT = 64


class ConnectFailed(Exception):
    """No connection to the replica (refused, unreachable, connect timeout): safe to retry elsewhere."""


class NoAnswer(Exception):
    """The replica closed the connection or broke the protocol before a complete header."""


class UpstreamTimeout(Exception):
    """The replica did not answer (or finish its answer) within the request's timeout."""


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    conn: Conn
    pool: "Pool"
    key: tuple[str, int]
    length: int | None = None  # Content-Length, None: chunked or until close
    chunked: bool = False
    keep: bool = True
    no_body: bool = False
    _done: bool = field(default=False, repr=False)
    _released: bool = field(default=False, repr=False)

    async def body(self, timeout_s: float) -> AsyncIterator[bytes]:
        """The body as it arrives; the connection returns to the pool when it was all read."""
        r = self.conn.reader
        try:
            if self.no_body:  # HEAD, 1xx, 204, 304: nothing to read, the connection is reusable
                self._done = True
                return
            if self.chunked:
                while True:
                    line = await asyncio.wait_for(r.readuntil(b"\r\n"), timeout_s)
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while (await asyncio.wait_for(r.readuntil(b"\r\n"), timeout_s)) != b"\r\n":
                            pass  # trailers: dropped
                        break
                    data = await asyncio.wait_for(r.readexactly(size + 2), timeout_s)
                    yield data[:-2]
            elif self.length is not None and self.length <= CHUNK:  # small: one read, one send
                async with asyncio.timeout(timeout_s):
                    data = await r.readexactly(self.length)
                yield data
            elif self.length is not None:
                left = self.length
                while left > 0:
                    async with asyncio.timeout(timeout_s):
                        data = await r.read(min(CHUNK, left))
                    if not data:
                        raise NoAnswer("the replica closed the connection in the middle of the body")
                    left -= len(data)
                    yield data
            else:
                self.keep = False
                while True:
                    data = await asyncio.wait_for(r.read(CHUNK), timeout_s)
                    if not data:
                        break
                    yield data
            self._done = True
        finally:
            self.release()

    async def read_small(self) -> bytes:
        """The whole body when it is known to be small (Content-Length <= CHUNK) or empty; the
        caller holds the timeout. The connection returns to the pool."""
        try:
            data = b"" if self.no_body or not self.length else await self.conn.reader.readexactly(self.length)
            self._done = True
            return data
        finally:
            self.release()

    def release(self) -> None:
        """Back to the pool when fully read and reusable; else closed. Idempotent."""
        if self._released:
            return
        self._released = True
        if self._done and self.keep:
            self.pool.put(self.key, self.conn)
        else:
            self.conn.writer.close()


class Pool:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[Conn]] = {}

    def put(self, key: tuple[str, int], conn: Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= MAX_IDLE_PER_ENDPOINT or conn.reader.at_eof():
            conn.writer.close()
            return
        conn.reused = True
        idle.append(conn)

    async def _get(self, key: tuple[str, int], connect_timeout_s: float) -> Conn:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.writer.close()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*key, limit=MAX_HEAD), connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"{type(e).__name__}: {e}") from None
        return Conn(reader, writer)

    async def request(self, host: str, port: int, method: str, target: str, headers: list[tuple[bytes, bytes]],
                      body: bytes, *, timeout_s: float, connect_timeout_s: float = 2.0,
                      rest: AsyncIterator[bytes] | None = None, length: int | None = None) -> Response:
        """Send one request and read the answer's head (the caller holds the overall timeout).

        `rest`: the body goes on after `body` with what this yields (a streamed upload), framed
        with `length` (Content-Length) or chunked when it is None. A streamed request always
        opens a fresh connection: nothing of it is sent before the connection stands, so a
        `ConnectFailed` means the body is untouched (the caller may try another replica), and no
        stale idle connection can fail it after the body was consumed."""
        key = (host, port)
        head = [f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode()]
        head += [k + b": " + v + b"\r\n" for k, v in headers]
        if rest is not None:
            head.append(b"content-length: " + str(length).encode() + b"\r\n" if length is not None
                        else b"transfer-encoding: chunked\r\n")
            return await self._stream(key, b"".join(head) + b"\r\n", body, rest, chunked=length is None,
                                      method=method, connect_timeout_s=connect_timeout_s)
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        payload = b"".join(head) + b"\r\n" + body
        for attempt in range(2):
            conn = await self._get(key, connect_timeout_s)
            try:
                conn.writer.write(payload)
                raw = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.CancelledError:
                conn.writer.close()  # the caller's timeout: the connection is in an unknown state
                raise
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                conn.writer.close()
                if conn.reused and attempt == 0 and not getattr(e, "partial", b""):
                    continue  # an idle connection the replica had closed: once more on a fresh one
                raise NoAnswer(f"{type(e).__name__}: {e}") from None
            return _parse(raw, conn, self, key, method)
        raise NoAnswer("the replica closed the connection")  # not reached

    async def _stream(self, key: tuple[str, int], head: bytes, first: bytes, rest: AsyncIterator[bytes], *,
                      chunked: bool, method: str, connect_timeout_s: float) -> Response:
        """A streamed upload on a fresh connection; memory stays within the transport's write
        buffer plus one chunk (each write waits for `drain`)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*key, limit=MAX_HEAD), connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"{type(e).__name__}: {e}") from None
        conn = Conn(reader, writer)
        sent_all = False

        def frame(data: bytes) -> bytes:
            return b"%x\r\n" % len(data) + data + b"\r\n" if chunked else data

        try:
            try:
                writer.write(head + (frame(first) if first else b""))
                await writer.drain()
                async for data in rest:
                    if data:
                        writer.write(frame(data))
                        await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                sent_all = True
            except OSError:
                pass  # the replica stopped reading (it may have answered early): read its answer
            raw = await reader.readuntil(b"\r\n\r\n")
        except BaseException as e:
            writer.close()
            if isinstance(e, (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)):
                raise NoAnswer(f"{type(e).__name__}: {e}") from None
            raise  # the caller's timeout, a client that went away, a body over the limit
        resp = _parse(raw, conn, self, key, method)
        resp.keep = resp.keep and sent_all  # an answer before the whole body: the connection is spent
        return resp

    async def close(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                c.writer.close()
        self._idle.clear()


def _parse(raw: bytes, conn: Conn, pool: Pool, key: tuple[str, int], method: str) -> Response:
    lines = raw[:-4].split(b"\r\n")
    try:
        version, code = lines[0].split(b" ", 2)[:2]
        status = int(code)
    except ValueError:
        conn.writer.close()
        raise NoAnswer(f"not an HTTP response: {lines[0][:80]!r}") from None
    headers: list[tuple[bytes, bytes]] = []
    length = None
    chunked, keep = False, version == b"HTTP/1.1"
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip().lower(), v.strip()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding":
            chunked = b"chunked" in v.lower()
        elif k == b"connection":
            keep = b"close" not in v.lower() and (keep or b"keep-alive" in v.lower())
        headers.append((k, v))
    no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
    if chunked:
        length = None
    return Response(status, headers, conn, pool, key, length=length, chunked=chunked, keep=keep, no_body=no_body)
