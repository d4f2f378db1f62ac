"""Batching push to the broker with an on-disk buffer, ordered replay and jittered backoff.

Why every report goes through the buffer, even when the broker is up: one code path for
"send now" and "send after an outage" keeps the order simple to reason about. A report is
written to the buffer when it is built and removed only when the broker has acknowledged it
(2xx, or 409 = already stored), so the invariants are:

- ordered: reports leave in `seq` order; a failure stops the flush, so nothing overtakes a
  report that is still waiting;
- no loss within the bound: a report is deleted only after an acknowledgement, or when the
  buffer is over its bound (then the *oldest* go first and are counted in `dropped`), or when
  the broker rejects it as malformed (400/413/422: retrying could never succeed, and keeping
  it would block every later report; counted in `rejected`);
- no busy loop: after a failure the next try waits `Backoff.delay(failures)`; 401/403/429
  and 5xx count as failures too (the data is fine, the broker or the token is not).

Time is passed in (`now`), and the jitter comes from an injected `random.Random`, so tests
neither sleep nor flake.
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import httpx

log = logging.getLogger("broker_agent.push")

TELEMETRY_PATH = "/api/v1/telemetry"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": delay(n) is uniform in [d/2, d], d = min(cap, base*2^(n-1))."""

    base_s: float = 1.0
    cap_s: float = 300.0

    def ceiling(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * (2 ** max(0, min(failures, 64) - 1)))

    def delay(self, failures: int, rng: random.Random) -> float:
        d = self.ceiling(failures)
        return d * (0.5 + 0.5 * rng.random())


class Buffer(Protocol):
    dropped: int

    def append(self, seq: int, body: bytes) -> None: ...

    def oldest(self) -> tuple[int, bytes] | None: ...

    def remove(self, seq: int) -> None: ...

    def __len__(self) -> int: ...

    def max_seq(self) -> int | None: ...


class MemoryBuffer:
    """Bounded in-memory buffer (used when no --buffer-dir is given): lost on restart."""

    def __init__(self, max_reports: int = 8640, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_reports, self.max_bytes = max_reports, max_bytes
        self._q: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self.dropped = 0

    def append(self, seq: int, body: bytes) -> None:
        self._q.append((seq, body))
        self._bytes += len(body)
        while len(self._q) > 1 and (len(self._q) > self.max_reports or self._bytes > self.max_bytes):
            _, old = self._q.popleft()
            self._bytes -= len(old)
            self.dropped += 1

    def oldest(self) -> tuple[int, bytes] | None:
        return self._q[0] if self._q else None

    def remove(self, seq: int) -> None:
        if self._q and self._q[0][0] == seq:
            _, old = self._q.popleft()
            self._bytes -= len(old)

    def __len__(self) -> int:
        return len(self._q)

    def max_seq(self) -> int | None:
        return self._q[-1][0] if self._q else None


class DiskBuffer:
    """A directory with one file per report, named by zero-padded seq, so name order is seq order.

    Survives agent restarts: reports buffered before a crash are replayed after it. Files are
    written to a temporary name and renamed, so a crash never leaves half a report behind.
    """

    SUFFIX = ".json"

    def __init__(self, path: Path | str, max_reports: int = 8640, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.max_reports, self.max_bytes = max_reports, max_bytes
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        self._index: deque[tuple[int, int]] = deque(
            sorted((int(p.stem), p.stat().st_size) for p in self.path.glob(f"*{self.SUFFIX}") if p.stem.isdigit())
        )
        self._bytes = sum(size for _, size in self._index)
        self.dropped = 0

    def _file(self, seq: int) -> Path:
        return self.path / f"{seq:020d}{self.SUFFIX}"

    def append(self, seq: int, body: bytes) -> None:
        tmp = self.path / f"{seq:020d}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, self._file(seq))
        self._index.append((seq, len(body)))
        self._bytes += len(body)
        while len(self._index) > 1 and (len(self._index) > self.max_reports or self._bytes > self.max_bytes):
            old, size = self._index.popleft()
            self._file(old).unlink(missing_ok=True)
            self._bytes -= size
            self.dropped += 1

    def oldest(self) -> tuple[int, bytes] | None:
        while self._index:
            seq, size = self._index[0]
            try:
                return seq, self._file(seq).read_bytes()
            except FileNotFoundError:  # removed by hand: skip it
                self._index.popleft()
                self._bytes -= size
        return None

    def remove(self, seq: int) -> None:
        if self._index and self._index[0][0] == seq:
            _, size = self._index.popleft()
            self._bytes -= size
            self._file(seq).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._index)

    def max_seq(self) -> int | None:
        return self._index[-1][0] if self._index else None


@dataclass(frozen=True, slots=True)
class SendResult:
    status: int  # HTTP status; 0: no answer (connection refused, timeout, DNS)
    retry_after_s: float | None = None
    error: str = ""


class Sender(Protocol):
    def send(self, body: bytes) -> SendResult: ...


class HttpSender:
    """POST <broker>/api/v1/telemetry with the agent token. `token` may be a function that
    returns it: a projected ServiceAccount token file that the kubelet rotates is read again
    for every request (Kubernetes cluster mode)."""

    def __init__(self, broker_url: str, token: str | Callable[[], str], timeout_s: float = 10.0,
                 client: httpx.Client | None = None) -> None:
        self.url = broker_url.rstrip("/") + TELEMETRY_PATH
        self._client = client or httpx.Client(timeout=timeout_s)
        self._token = token

    def send(self, body: bytes) -> SendResult:
        token = self._token() if callable(self._token) else self._token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            r = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return SendResult(status=0, error=f"{type(e).__name__}: {e}")
        retry_after = None
        if "retry-after" in r.headers:
            try:
                retry_after = float(r.headers["retry-after"])
            except ValueError:
                retry_after = None
        return SendResult(status=r.status_code, retry_after_s=retry_after, error="" if r.is_success else r.text[:300])

    def close(self) -> None:
        self._client.close()


_POISON = {400, 413, 415, 422}  # the report itself is bad: retrying cannot help


@dataclass(frozen=True, slots=True)
class FlushResult:
    sent: int
    pending: int
    ok: bool  # False: stopped by a failure (or still backing off)


class Pusher:
    """Drains the buffer oldest-first into a Sender. Call `flush(now)` as often as you like."""

    def __init__(
        self,
        buffer: Buffer,
        sender: Sender,
        *,
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
        max_per_flush: int = 100,
    ) -> None:
        self.buffer, self.sender, self.backoff = buffer, sender, backoff
        self.rng = rng or random.Random()
        self.max_per_flush = max_per_flush
        self.failures = 0
        self.next_attempt_at = 0.0
        self.sent = 0
        self.rejected = 0
        self.last_error = ""

    def enqueue(self, seq: int, body: bytes) -> None:
        self.buffer.append(seq, body)

    def flush(self, now: float) -> FlushResult:
        if now < self.next_attempt_at:
            return FlushResult(sent=0, pending=len(self.buffer), ok=False)
        sent = 0
        while sent < self.max_per_flush:
            item = self.buffer.oldest()
            if item is None:
                break
            seq, body = item
            res = self.sender.send(body)
            if 200 <= res.status < 300 or res.status == 409:
                self.buffer.remove(seq)
                sent += 1
                self.sent += 1
                self.failures = 0
                continue
            if res.status in _POISON:
                log.error("broker rejected report seq=%d (%d): %s; dropping it", seq, res.status, res.error)
                self.buffer.remove(seq)
                self.rejected += 1
                continue
            self.failures += 1
            wait = self.backoff.delay(self.failures, self.rng)
            if res.retry_after_s is not None:
                wait = max(wait, min(res.retry_after_s, self.backoff.cap_s))
            self.next_attempt_at = now + wait
            self.last_error = res.error or f"HTTP {res.status}"
            if self.failures == 1 or self.failures % 10 == 0:
                log.warning(
                    "push failed (%s); %d report(s) buffered, retry in %.1f s",
                    self.last_error, len(self.buffer), wait,
                )
            return FlushResult(sent=sent, pending=len(self.buffer), ok=False)
        return FlushResult(sent=sent, pending=len(self.buffer), ok=True)


class SeqCounter:
    """Strictly increasing report numbers that survive restarts.

    Starts at max(persisted next value, newest buffered seq + 1, start time in ms): with a
    buffer dir the counter is exact; without one, a restart still never goes back unless the
    clock does.
    """

    def __init__(self, now: float, path: Path | str | None = None, buffered_max: int | None = None) -> None:
        self.path = Path(path) if path else None
        persisted = 0
        if self.path is not None and self.path.exists():
            try:
                persisted = int(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                persisted = 0
        self._next = max(persisted, (buffered_max + 1) if buffered_max is not None else 0, int(now * 1000))

    def next(self) -> int:
        seq = self._next
        self._next += 1
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(str(self._next))
            os.replace(tmp, self.path)
        return seq
