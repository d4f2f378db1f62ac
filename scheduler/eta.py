"""Estimated starts for capacity-blocked jobs: a forward simulation of the queue (explain only).

Why: a lower bound ("the first moment enough GPUs are released") ignores the jobs ahead in the
queue, so in a busy cluster most jobs start later than they were told. Here the jobs are
replayed in cycle order on a per-flavor GPU timeline: the GPUs free now, then the releases of
running jobs (at max_runtime x their project's runtime ratio, or their hard limit once past
it; this cycle's victims now; this cycle's admissions at their expected end); each job ahead
takes its GPUs at its own estimated start and gives them back at its expected end. A job's
estimate is the moment the timeline has its GPUs, never earlier than the job ahead of it in
the same flavor... unless it fits in a hole before them: a job starts at the first moment its
GPUs stay free for its expected runtime (conservative backfill over the queue in cycle order).

That conservative play keeps every job's place, as a policy that reserves for each blocked head
(`fair-backfill`) does. A policy that holds nothing for a blocked job (`reserve_after_s` > 0: the
default, `fair`) admits, at each release, whatever fits in cycle order, so a small job overtakes
a blocked gang: for those the queue is played greedily (`_greedy_estimates`).

The reserved head keeps its reservation time (it is also played on the timeline). GPUs only:
CPUs and memory rarely bind in a GPU cluster and fragmentation is ignored, so an estimate is
what the queue allows, not a promise.

Cost: a walk over the flavor's profile per job (its steps: releases and estimated jobs); the
first `MAX_SIMULATED` blocked jobs of a cycle are simulated, later ones get the lower bound (first release that covers them) so that a very deep
queue stays within the cycle's time budget. Messages depend only on the numbers they quote
and are built once per distinct value.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from typing import TYPE_CHECKING

from scheduler.backfill import _gpu_releases, release_profile
from scheduler.reasons import explained

if TYPE_CHECKING:  # pragma: no cover
    from scheduler.cycle import _Cycle

EPS = 1e-9
MAX_SIMULATED = 400


class _Lane:
    """One flavor's free-GPU profile: free[i] GPUs are free during [times[i], times[i+1]) (the
    last step lasts forever). Starts from the GPUs free now plus the planned releases; each
    estimated job takes its GPUs out of the profile for its expected runtime."""

    __slots__ = ("times", "free")

    def __init__(self, cyc: "_Cycle", fid: int) -> None:
        fx = cyc.world.flavors[fid]
        res = cyc.reservations.by_fid.get(fid)
        acc = float(fx.total_free_g + (res.blocked_g if res is not None else 0))
        times, free = [cyc.now], [acc]
        for end, _jid, g in _gpu_releases(cyc, fid):
            acc += g
            if end <= times[-1] + EPS:
                free[-1] = acc
            else:
                times.append(end)
                free.append(acc)
        self.times, self.free = times, free

    def take(self, need: float, runtime: float) -> float | None:
        """The first step start at which `need` GPUs stay free for `runtime`; they are taken
        out of the profile for that span. None when the flavor never has them free."""
        times, free = self.times, self.free
        n = len(times)
        i = 0
        while i < n:
            if free[i] + EPS < need:
                i += 1
                continue
            end = times[i] + runtime
            j = i + 1
            while j < n and times[j] < end and free[j] + EPS >= need:
                j += 1
            if j == n or times[j] >= end:
                break
            i = j + 1  # step j is short of GPUs: no start before it can hold the job
        else:
            return None
        t0 = times[i]
        end = t0 + runtime
        k = bisect_left(times, end, i)
        if k == n or times[k] != end:
            times.insert(k, end)
            free.insert(k, free[k - 1])
        for x in range(i, k):
            free[x] -= need
        return t0


def add_estimates(cyc: "_Cycle") -> None:
    """Build the deferred capacity reasons (explain only), each with its estimated start."""
    flavors = cyc.world.flavors
    lanes: dict[int, _Lane] = {}
    bounds: dict[int, tuple[list[float], list[float], float]] = {}
    lower: dict[tuple, float | None] = {}  # lower bounds depend only on (flavors, GPUs)
    texts: dict[tuple, str] = {}
    heads = cyc.reservations.head_start
    pending = cyc.pending
    greedy = _greedy_estimates(cyc) if cyc.policy.reserve_after_s > 0 else None
    for n, (job, s, fids, code, details, position) in enumerate(cyc.to_estimate):
        need = s.req[0]
        est = None
        if greedy is not None and n < MAX_SIMULATED:
            est = greedy.get(n)
        elif n < MAX_SIMULATED and need > 0:
            for fid in fids:
                if flavors[fid].ready_cap_g >= need:  # the first flavor that can ever hold it
                    lane = lanes.get(fid)
                    if lane is None:
                        lane = lanes[fid] = _Lane(cyc, fid)
                    est = lane.take(need, cyc.expected_runtime(job))
                    break
        elif need > 0:
            lk = (tuple(fids), need)
            if lk in lower:
                est = lower[lk]
            else:
                est = lower[lk] = _lower_bound(cyc, bounds, fids, need)
        head = heads.get(job.id)
        if head is not None:
            est = head
        tk = (code, details.get("requested"), details.get("free"), details.get("in_use"), details.get("per_worker"),
              details.get("binding_free"), details.get("binding_requested"), details.get("binding_per_worker"),
              details.get("binding_largest_free"), details.get("resource"))
        text = texts.get(tk)
        reason = pending[job.id] = explained(code, details, position, est, text)
        if text is None:
            texts[tk] = reason.message


def _greedy_estimates(cyc: "_Cycle") -> dict[int, float]:
    """Estimated starts (by position in `cyc.to_estimate`) for a policy that holds nothing for
    a blocked job (no reservation unless it has waited `reserve_after_s`): at each release, the
    jobs are started in cycle order, each one that fits in the GPUs free then, whether or not a
    bigger job ahead still waits (greedy list scheduling, as the cycle admits). The lanes'
    conservative backfill instead keeps every job's place, which such a policy does not: measured
    on a mixed trace, it told 32-GPU gangs a fifth of their real wait and small jobs twice theirs.

    Each job is played on the first of its flavors that can ever hold it; GPUs only."""
    flavors = cyc.world.flavors
    per: dict[int, list[tuple[int, float, float]]] = {}
    for n, (job, s, fids, _code, _details, _position) in enumerate(cyc.to_estimate[:MAX_SIMULATED]):
        need = s.req[0]
        if need <= 0:
            continue
        for fid in fids:
            if flavors[fid].ready_cap_g >= need:
                per.setdefault(fid, []).append((n, need, cyc.expected_runtime(job)))
                break
    out: dict[int, float] = {}
    for fid, items in per.items():
        _greedy(cyc, fid, items, out)
    return out


def _greedy(cyc: "_Cycle", fid: int, items: list[tuple[int, float, float]], out: dict[int, float]) -> None:
    """Play `items` (position, GPUs, runtime), in cycle order, on flavor fid's releases.
    Jobs wait in one queue per size, so each start costs the number of distinct sizes."""
    res = cyc.reservations.by_fid.get(fid)
    free = float(cyc.world.flavors[fid].total_free_g + (res.blocked_g if res is not None else 0))
    rel = _gpu_releases(cyc, fid)
    queues: dict[float, deque[int]] = {}
    for k, (_n, need, _rt) in enumerate(items):
        q = queues.get(need)
        if q is None:
            q = queues[need] = deque()
        q.append(k)
    sizes = sorted(queues)
    left = len(items)
    ends: list[tuple[float, float]] = []  # (end, GPUs) of the jobs started in the play
    t, i, nr = cyc.now, 0, len(rel)
    while left:
        while True:  # start, in cycle order, every job that fits now
            best = -1
            for sz in sizes:
                if sz > free + EPS:
                    break
                q = queues[sz]
                if q and (best < 0 or q[0] < best):
                    best = q[0]
            if best < 0:
                break
            n, need, rt = items[best]
            queues[need].popleft()
            out[n] = t
            free -= need
            left -= 1
            heapq.heappush(ends, (t + rt, need))
            if not queues[need]:
                sizes.remove(need)
        if not left:
            break
        nxt = rel[i][0] if i < nr else None
        if ends and (nxt is None or ends[0][0] < nxt):
            nxt = ends[0][0]
        if nxt is None:
            break  # never enough GPUs: no estimate
        t = max(t, nxt)
        while i < nr and rel[i][0] <= t:
            free += rel[i][2]
            i += 1
        while ends and ends[0][0] <= t:
            free += heapq.heappop(ends)[1]


def _lower_bound(cyc: "_Cycle", bounds: dict, fids: list[int], need: float) -> float | None:
    """The first time enough GPUs in total are released in one of the flavors (the queue
    ahead ignored): for jobs beyond the simulated ones."""
    est = None
    for fid in fids:
        tl = bounds.get(fid)
        if tl is None:
            tl = bounds[fid] = (*release_profile(cyc, fid), float(cyc.world.flavors[fid].total_free_g))
        ends, cum, free = tl
        short = need - free
        j = bisect_left(cum, short - EPS) if short > 0 else 0
        t = cyc.now if short <= 0 else ends[j] if j < len(ends) else None
        if t is not None and (est is None or t < est):
            est = t
    return est
