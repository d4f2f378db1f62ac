"""The service controller's small decisions, as functions: a probe, the restart backoff, the
autoscaler's replica count, a free host port. No database, no state of their own."""

from __future__ import annotations

import math
import socket
import time
from typing import Iterable

import httpx

PORT_RANGE = (20000, 29999)  # host ports the broker hands out (process replicas, container publishes)


def probe(http: httpx.Client, host: str, port: int, spec: dict) -> tuple[bool, str]:
    """One readiness or liveness probe: HTTP GET of `path` (2xx/3xx passes) or a TCP connect.
    Returns (passed, why not)."""
    timeout = float(spec.get("timeout_s", 1.0))
    try:
        if spec.get("tcp"):
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True, ""
        r = http.get(f"http://{host}:{port}{spec.get('path') or '/'}", timeout=timeout)
        return (200 <= r.status_code < 400), f"HTTP {r.status_code}"
    except Exception as e:  # refused, reset, timeout, bad answer: the probe failed, saying how
        return False, f"{type(e).__name__}: {str(e)[:120]}"


def backoff(restart: dict, failures: int) -> float:
    """Seconds before the next replica after `failures` in a row: initial x 2^(failures-1), capped."""
    first = float(restart.get("backoff_initial_s", 1.0))
    cap = float(restart.get("backoff_max_s", 60.0))
    return min(cap, first * (2 ** max(0, failures - 1)))


def autoscale(*, inflight: float, target: float, lo: int, hi: int, desired: int, samples: list[tuple[float, int]],
              scaled_at: float | None, now: float, cooldown_s: float) -> tuple[int, list[tuple[float, int]]]:
    """(new desired replicas, samples to keep). Want = ceil(in flight / target) within lo..hi: up
    at once; down only once `cooldown_s` passed since the last change, to the highest want seen
    within the cool-down (a dip between two bursts does not scale down)."""
    want = math.ceil(inflight / target) if target > 0 else lo
    want = min(max(want, lo), hi)
    kept = [(t, w) for t, w in samples if now - t <= cooldown_s] + [(now, want)]
    new = desired
    if want > desired:
        new = want
    elif want < desired and (scaled_at is None or now - scaled_at >= cooldown_s):
        new = max(w for _, w in kept)
    return new, kept


def free_port(taken: Iterable[int]) -> int:
    """A port of PORT_RANGE that no live replica uses and nothing on this host listens on."""
    used = set(taken)
    lo, hi = PORT_RANGE
    start = lo + int(time.time() * 1000) % (hi - lo)
    for k in range(hi - lo):
        port = lo + (start - lo + k) % (hi - lo)
        if port in used:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for a replica")
