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

The reserved head keeps its reservation time (it is also played on the timeline). GPUs only:
CPUs and memory rarely bind in a GPU cluster and fragmentation is ignored, so an estimate is
what the queue allows, not a promise.

Cost: a walk over the flavor's profile per job (its steps: releases and estimated jobs); the
first `MAX_SIMULATED` blocked jobs of a cycle are simulated, later ones get the lower bound (first release that covers them) so that a very deep
queue stays within the cycle's time budget. Messages depend only on the numbers they quote
and are built once per distinct value.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from scheduler.backfill import _gpu_releases
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
    for n, (job, s, fids, code, details, position) in enumerate(cyc.to_estimate):
        need = s.req[0]
        est = None
        if n < MAX_SIMULATED and need > 0:
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


def _lower_bound(cyc: "_Cycle", bounds: dict, fids: list[int], need: float) -> float | None:
    """The first time enough GPUs in total are released in one of the flavors (the queue
    ahead ignored): for jobs beyond the simulated ones."""
    est = None
    for fid in fids:
        tl = bounds.get(fid)
        if tl is None:
            ends, cum, acc = [], [], 0.0
            for end, _jid, gpus in _gpu_releases(cyc, fid):
                acc += gpus
                ends.append(end)
                cum.append(acc)
            tl = bounds[fid] = (ends, cum, float(cyc.world.flavors[fid].total_free_g))
        ends, cum, free = tl
        short = need - free
        j = bisect_left(cum, short - EPS) if short > 0 else 0
        t = cyc.now if short <= 0 else ends[j] if j < len(ends) else None
        if t is not None and (est is None or t < est):
            est = t
    return est
