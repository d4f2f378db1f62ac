"""The proxy's HTTP/1.1 client against a scripted asyncio server: framing (Content-Length,
chunked, until close, HEAD), keep-alive reuse, a stale pooled connection retried once, refused
connections and timeouts."""

from __future__ import annotations

import asyncio

import pytest

from broker.api.upstream import ConnectFailed, NoAnswer, Pool

RESPONSES = {
    b"/len": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"/close": b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"/head": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
    b"/bye": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
}


async def _server(conns: list):
    async def handle(reader, writer):
        conns.append(writer)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            path = head.split(b" ")[1]
            if path == b"/slow":
                await asyncio.sleep(5)
            writer.write(RESPONSES.get(path, RESPONSES[b"/len"]))
            await writer.drain()
            if path in (b"/close", b"/bye"):
                writer.close()
                return
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def _get(pool, port, path, method="GET", timeout_s=2.0):
    async with asyncio.timeout(timeout_s):
        r = await pool.request("127.0.0.1", port, method, path, [], b"", timeout_s=timeout_s)
        return r.status, b"".join([c async for c in r.body(timeout_s)])


def test_framing_and_keep_alive():
    async def main():
        conns: list = []
        srv, port = await _server(conns)
        pool = Pool()
        assert await _get(pool, port, "/len") == (200, b"hello")
        assert await _get(pool, port, "/chunked") == (200, b"hello world")
        assert await _get(pool, port, "/len") == (200, b"hello")
        assert len(conns) == 1  # one connection for all three
        assert await _get(pool, port, "/head", method="HEAD") == (200, b"")
        assert await _get(pool, port, "/close") == (200, b"until close")
        assert await _get(pool, port, "/bye") == (200, b"ok")
        assert await _get(pool, port, "/len") == (200, b"hello")  # fresh connections after the closes
        assert len(conns) == 3
        # the server drops an idle pooled connection: the next request is retried on a fresh one
        for w in conns:
            w.close()
        await asyncio.sleep(0.05)
        assert await _get(pool, port, "/len") == (200, b"hello")
        await pool.close()
        srv.close()
    asyncio.run(main())


def test_refused_and_timeouts():
    async def main():
        srv, port = await _server([])
        pool = Pool()
        srv.close()
        await srv.wait_closed()
        with pytest.raises(ConnectFailed):
            await _get(pool, port, "/len")
        srv2, port2 = await _server([])
        with pytest.raises(TimeoutError):
            await _get(pool, port2, "/slow", timeout_s=0.2)
        srv2.close()
    asyncio.run(main())


def test_garbage_is_no_answer():
    async def main():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            await writer.drain()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(NoAnswer):
            await _get(Pool(), port, "/")
        srv.close()
    asyncio.run(main())


async def _sink():
    """A replica that reads a body (Content-Length or chunked) and answers its length and sha256."""
    import hashlib

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        h, n = hashlib.sha256(), 0
        fields = dict(line.split(b": ", 1) for line in head[:-4].split(b"\r\n")[1:])
        if b"content-length" in fields:
            left = int(fields[b"content-length"])
            while left:
                data = await reader.read(min(65536, left))
                h.update(data)
                n, left = n + len(data), left - len(data)
        else:
            while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)):
                data = await reader.readexactly(size + 2)
                h.update(data[:-2])
                n += size
            await reader.readuntil(b"\r\n")
        body = f"{n} {h.hexdigest()}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


STREAMS = [("content-length", 3 * 1024 * 1024 + 7), ("chunked", None)]


@pytest.mark.parametrize("name,length", STREAMS, ids=[s[0] for s in STREAMS])
def test_a_streamed_body_arrives_whole_in_either_framing(name, length):
    import hashlib

    parts = [bytes([i % 251]) * 65536 for i in range(48)] + [b"x" * 7]
    want = hashlib.sha256(b"".join(parts[1:])).hexdigest()

    async def main():
        srv, port = await _sink()

        async def rest():
            for p in parts[1:]:
                yield p
        async with asyncio.timeout(10):
            r = await Pool().request("127.0.0.1", port, "PUT", "/", [], b"", timeout_s=10, rest=rest(),
                                     length=None if length is None else length - len(parts[0]))
            got = b"".join([c async for c in r.body(10)])
        srv.close()
        return got

    assert asyncio.run(main()) == f"{3 * 1024 * 1024 + 7 - 65536} {want}".encode()


def test_a_streamed_body_is_untouched_when_the_replica_refuses_the_connection():
    consumed = []

    async def rest():
        consumed.append(1)
        yield b"never"

    async def main():
        srv, port = await _server([])
        srv.close()
        await srv.wait_closed()
        with pytest.raises(ConnectFailed):
            await Pool().request("127.0.0.1", port, "POST", "/", [], b"first", timeout_s=1, rest=rest(), length=10)
    asyncio.run(main())
    assert consumed == []  # the proxy may send it to another replica
