"""Step 2 of a cycle: the order in which pending jobs are considered.

Class (operation first), priority, aged (waited past `Policy.aging_after_s`: then by submit
time, ahead of the fair-share order), quota tier (within guarantee, within nominal,
borrowing), fair share (updated as the cycle admits), submit time, id; `strict_fifo`: submit
time, id. Aging bounds every wait: the oldest job becomes its pool's backfill head. With
`Policy.aging_backlog_factor` the threshold scales with the load: a job is aged only once it
has also waited longer than the backlog's drain time (`backlog_drain_s`), the wait strict
arrival order would give a job submitted now.
Why its own module: it runs once per pending job and is written for speed (see `order`).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Iterator

from scheduler.index import Shape
from scheduler.model import Job, WorkloadClass

if TYPE_CHECKING:  # pragma: no cover
    from scheduler.cycle import _Cycle

_OP = WorkloadClass.OPERATION


def order(cyc: "_Cycle") -> Iterator[tuple[Job, Shape]]:
    """Jobs in cycle order, with their shapes. One heap entry per project (its head), so
    a project's share and tier are re-keyed when it is admitted something.

    Cost: this runs once per pending job, so each job's static part is resolved once into
    a queue item (base, submit, id, input index, job, shape, tier flavor) that sorts without
    a key function; `base` folds (class rank, -priority) into one int so that, times 6 plus
    3 for a job that is not aged plus the tier, one int compares like the (rank, -priority,
    not aged, tier) prefix in the heap. An aged job (waited past `Policy.aging_after_s`) has
    its submit time where others have their project's share: aged jobs first, oldest first. A heap
    entry is (that int, share, submit, id, project, item, the project's iterator). The
    input index is a tie-break that never changes the order (ids are unique; a duplicate id
    keeps input order, as the stable sort on (class, priority, submit, id) did).
    """
    pend = cyc.snap.pending
    shape = cyc.shape
    if cyc.policy.strict_fifo:
        for j in sorted(pend, key=lambda j: (j.submit_time, j.id)):
            yield j, shape(j)
        return
    managed = cyc.qv.managed
    shapes = cyc.shapes
    may_borrow = cyc.may_borrow
    # per shape key: (shape, tier flavor); tier flavor -2: no ready flavor (tier 2), -1: unmanaged (tier 1)
    info: dict[tuple, tuple[Shape, int]] = {}
    queues: dict[str, list[tuple]] = {}
    prios = [j.priority for j in pend]
    top = max(max(prios), -min(prios)) if prios else 0  # the largest |priority|
    span = 2 * top + 1  # (top - priority) lies in [0, span)
    for i, j in enumerate(pend):
        pw = j.per_worker
        key = (j.workload_class is _OP, j.pool, j.gpu_models, j.workers, pw.gpus, pw.cpus, pw.memory_gb,
               may_borrow(j))
        if j.nodes:
            key += (j.nodes,)
        got = info.get(key)
        if got is None:
            s = shapes.get(key) or shape(j)
            fids = s.ready_fids
            got = info[key] = (s, -2 if not fids else fids[0] if managed[fids[0]] else -1)
        s, f0 = got
        item = ((s.rank * span + top - j.priority) * 6, j.submit_time, j.id, i, j, s, f0)
        try:
            queues[j.project].append(item)
        except KeyError:
            queues[j.project] = [item]
    shares = {pid: cyc.share(pid) for pid in queues}
    limits = cyc.qv.limits
    limc = cyc.qv._limc  # limits' own memo, read directly on the per-job path
    aged_before = _aged_before(cyc, pend)  # submitted at or before this: aged (-inf: none)
    cyc.aged_before = aged_before

    def entry(it: tuple, pid: str, rest: Iterator[tuple]) -> tuple:
        f0 = it[6]
        if f0 >= 0:  # cyc.tier, inlined
            got = limits(pid, f0, it[5].req)
            t = 0 if got.within_guarantee else 1 if got.within_nominal else 2
        else:
            t = 1 if f0 == -1 else 2
        if it[1] <= aged_before:  # aged: ahead of the fair-share order, by submit time
            return (it[0] + t, it[1], it[1], it[2], pid, it, rest)
        return (it[0] + 3 + t, shares[pid], it[1], it[2], pid, it, rest)

    heap = []
    for pid, q in queues.items():
        q.sort()  # small sorts per project instead of one big one
        rest = iter(q)
        heap.append(entry(next(rest), pid, rest))
    heapq.heapify(heap)
    dirty = cyc._dirty
    pop, replace = heapq.heappop, heapq.heapreplace
    while heap:
        e = heap[0]  # popped below: replaced by the project's next entry in one sift
        it = e[5]
        yield it[4], it[5]
        pid = e[4]
        if dirty:  # admissions moved shares (and tiers): re-key those projects' heads
            pop(heap)
            for d in sorted(dirty):
                shares[d] = cyc.share(d)
            moved = [i for i, x in enumerate(heap) if x[4] in dirty]
            for i in moved:
                x = heap[i]
                heap[i] = entry(x[5], x[4], x[6])
            if moved:
                heapq.heapify(heap)
            dirty.clear()
            rest = e[6]
            it = next(rest, None)
            if it is not None:
                heapq.heappush(heap, entry(it, pid, rest))
            continue
        rest = e[6]
        it = next(rest, None)
        if it is None:
            pop(heap)
            continue
        f0 = it[6]  # entry(it, pid, rest), inlined: once per pending job
        if f0 >= 0:
            m = limc.get((pid, f0))
            got = m.get(it[5].req) if m is not None else None
            if got is None:
                got = limits(pid, f0, it[5].req)
            t = 0 if got.within_guarantee else 1 if got.within_nominal else 2
        else:
            t = 1 if f0 == -1 else 2
        if it[1] <= aged_before:
            replace(heap, (it[0] + t, it[1], it[1], it[2], pid, it, rest))
        else:
            replace(heap, (it[0] + 3 + t, shares[pid], it[1], it[2], pid, it, rest))


def backlog_drain_s(cyc: "_Cycle") -> float:
    """Seconds strict arrival order would need to start every job visible now: the GPU-seconds
    of the pending jobs (at their expected runtimes) and the rest of the running ones, over
    the ready GPUs. Under fifo a job waits about this drain time as it stood at its submit, so a
    job that has waited longer than the drain time now is behind where fifo would have it."""
    now, er = cyc.now, cyc.expected_runtime
    work = 0.0
    for j in cyc.snap.pending:
        g = j.workers * j.per_worker.gpus
        if g:
            work += g * er(j)
    for r in cyc.snap.running:
        g = len(r.placements) * r.job.per_worker.gpus
        left = r.start_time + er(r.job) - now
        if g and left > 0:
            work += g * left
    gpus = sum(n.capacity.gpus for n in cyc.snap.nodes if n.state.schedulable)
    return work / gpus if gpus else 0.0


def _aged_before(cyc: "_Cycle", pend) -> float:
    """The submit time at or before which a job counts as aged: the `Policy.aged_jobs`
    longest-waiting pending jobs, if they have waited past `aging_after_s` (-inf: none).

    Why only a few: aging every job past a threshold turns a congested queue into FIFO (the
    average wait becomes fifo's); putting the few oldest first gives each of them the pool's
    backfill reservation in turn, which bounds the longest wait while the rest keeps the
    fair-share order."""
    policy = cyc.policy
    limit = cyc.now - policy.aging_after_s
    if policy.aged_jobs <= 0 or limit == float("-inf") or not pend:
        return float("-inf")
    if policy.aging_backlog_factor > 0:
        limit = min(limit, cyc.now - policy.aging_backlog_factor * backlog_drain_s(cyc))
    old = [j.submit_time for j in pend if j.submit_time <= limit]
    if not old:
        return float("-inf")
    if len(old) > policy.aged_jobs:
        return heapq.nsmallest(policy.aged_jobs, old)[-1]
    return limit
