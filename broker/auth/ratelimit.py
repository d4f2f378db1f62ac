"""Per-token rate limiting: one token bucket per key, injectable clock.

Why a token bucket: it allows short bursts (a CLI listing jobs then fetching a few) while
bounding the sustained rate, and its state is two floats per key. `check` answers either
"allowed" or "retry after N seconds" (the exact time until one token is back), which the API
turns into 429 with a ``Retry-After`` header (rounded up to whole seconds, at least 1).

Memory is bounded: at most `max_keys` buckets; when full, the least recently used bucket is
dropped (a dropped bucket comes back full, which only ever errs on the side of allowing).
Invariant: over any window of T seconds a key is allowed at most ``burst + rate * T`` units.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

from broker.ports import Clock

__all__ = ["RateDecision", "SharedTokenBuckets", "TokenBucketLimiter"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0  # > 0 only when not allowed
    remaining: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """Value for the HTTP ``Retry-After`` header (whole seconds, >= 1)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class TokenBucketLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, key: Hashable, cost: float = 1.0, *, now: float | None = None, rate: float | None = None,
              burst: float | None = None) -> RateDecision:
        """Take `cost` units from `key`'s bucket if it holds them; otherwise say when it will.
        `rate` / `burst` override the limiter's for this key (one limiter, keys with their own
        limits, e.g. per service); the invariant holds per key while its limits stay the same."""
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else burst
        if cost > burst:
            return RateDecision(False, retry_after_s=math.inf)
        with self._lock:
            t = self._clock() if now is None else now
            tokens, at = self._buckets.get(key, (burst, t))
            tokens = min(burst, tokens + max(0.0, t - at) * rate)
            if tokens >= cost:
                tokens -= cost
                decision = RateDecision(True, remaining=tokens)
            else:
                decision = RateDecision(False, retry_after_s=(cost - tokens) / rate, remaining=tokens)
            self._buckets[key] = (tokens, t)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        return decision

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitMiddleware:
    """Pure ASGI middleware: one bucket per bearer token (per client address without one).

    Keyed on a hash of the ``Authorization`` header, so it runs *before* authentication and
    also throttles floods of bad tokens; the key never holds the token itself. Answers 429 with
    ``Retry-After`` and the standard error shape. Paths in `exempt` (health probes) pass.
    """

    def __init__(self, app, limiter: TokenBucketLimiter, *, exempt: tuple[str, ...] = ("/healthz", "/readyz")):
        self.app = app
        self.limiter = limiter
        self.exempt = exempt

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            return await self.app(scope, receive, send)
        auth = None
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                auth = v
                break
        if auth:
            import hashlib

            key: Hashable = "t:" + hashlib.sha256(auth).hexdigest()[:32]
        else:
            client = scope.get("client") or ("?", 0)
            key = "a:" + str(client[0])
        d = self.limiter.check(key)
        if d.allowed:
            return await self.app(scope, receive, send)
        import json

        body = json.dumps({"error": {"code": "RATE_LIMITED",
                                     "message": f"too many requests; retry in {d.retry_after_header} s",
                                     "details": {"retry_after_s": round(d.retry_after_s, 3)}}}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", d.retry_after_header.encode())]})
        await send({"type": "http.response.body", "body": body})


class _Slot(ctypes.Structure):
    _fields_ = [("key", ctypes.c_uint64), ("tokens", ctypes.c_double), ("at", ctypes.c_double)]


class SharedTokenBuckets:
    """`TokenBucketLimiter.check(key, rate=, burst=)` with its buckets in shared memory, for
    the service entry point's worker processes (`broker.entry`): every process that holds the
    same table takes from the same buckets, so a caller's limit is the configured one whatever
    process its connection lands on (not one per process).

    The table: `slots` fixed slots of (64-bit key hash, tokens, time) in one shared array,
    guarded by one process-shared lock (a semaphore: no system call when nobody else holds it).
    A key's slot is found by open addressing within PROBE slots; when they are all taken, the
    probed slot whose bucket is fullest after refill is given to the new key. A reused slot
    comes back full, like a dropped bucket of `TokenBucketLimiter`: it only ever errs on the
    side of allowing. Key hashes are blake2b of `repr(key)` (str / tuple keys: stable across
    processes, unlike `hash`). The clock must be the same for every process
    (`time.monotonic` is, on one host). Invariant: as `TokenBucketLimiter`'s, per key, while
    its slot is kept.

    Build it with `SharedTokenBuckets.create(ctx, slots)` in the parent; the object pickles into
    a `multiprocessing` child of that context (the array and the lock travel with it)."""

    PROBE = 8

    def __init__(self, array, lock, *, clock: Clock = time.monotonic) -> None:
        self._array, self._lock, self._clock = array, lock, clock
        self._hashes: dict[Hashable, int] = {}  # this process's: key -> its 64-bit hash
        self._slots = array
        self._n = len(self._slots)

    @classmethod
    def create(cls, ctx, slots: int = 65_536) -> "SharedTokenBuckets":
        """`ctx`: a multiprocessing context (spawn for processes started beside threads)."""
        return cls(ctx.RawArray(_Slot, slots), ctx.Lock())

    def __getstate__(self):
        return {"array": self._array, "lock": self._lock}

    def __setstate__(self, state) -> None:
        self.__init__(state["array"], state["lock"])

    def check(self, key: Hashable, cost: float = 1.0, *, now: float | None = None, rate: float | None = None,
              burst: float | None = None) -> RateDecision:
        if rate is None or burst is None or rate <= 0:
            raise ValueError("a shared bucket needs its rate and burst on every check")
        if cost > burst:
            return RateDecision(False, retry_after_s=math.inf)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= 100_000:
                self._hashes.clear()
            h = self._hashes[key] = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(),
                                                   "little") or 1
        slots, n = self._slots, self._n
        with self._lock:
            t = self._clock() if now is None else now
            slot = None
            fullest, fullest_tokens = None, -1.0
            for i in range(self.PROBE):
                s = slots[(h + i) % n]
                k = s.key
                if k == h:
                    slot = s
                    tokens = min(burst, s.tokens + max(0.0, t - s.at) * rate)
                    break
                if k == 0:
                    slot, tokens = s, burst
                    s.key = h
                    break
                # a slot of another key: how full its bucket is now (under this key's rate: only
                # to choose which one to give up)
                level = s.tokens + max(0.0, t - s.at) * rate
                if level > fullest_tokens:
                    fullest, fullest_tokens = s, level
            if slot is None:
                slot, tokens = fullest, burst
                slot.key = h
            if tokens >= cost:
                tokens -= cost
                decision = RateDecision(True, remaining=tokens)
            else:
                decision = RateDecision(False, retry_after_s=(cost - tokens) / rate, remaining=tokens)
            slot.tokens, slot.at = tokens, t
        return decision
