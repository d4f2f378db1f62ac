"""Step 2 of a cycle: the order in which pending jobs are considered.

Class (operation first), priority, quota tier (within guarantee, within nominal, borrowing),
fair share (updated as the cycle admits), submit time, id; `strict_fifo`: submit time, id.
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
    a queue item (rank, -priority, submit, id, input index, job, shape, tier flavor) that
    sorts without a key function; a heap entry only adds the tier and share. The input
    index is a tie-break that never changes the order (ids are unique; a duplicate id keeps
    input order, as the stable sort on (class, priority, submit, id) did).
    """
    pend = cyc.snap.pending
    shape = cyc.shape
    if cyc.policy.strict_fifo:
        for j in sorted(pend, key=lambda j: (j.submit_time, j.id)):
            yield j, shape(j)
        return
    managed = cyc.qv.managed
    shapes = cyc.shapes
    tier_fid: dict[Shape, int] = {}  # -2: no ready flavor (tier 2), -1: unmanaged (tier 1)
    queues: dict[str, list[tuple]] = {}
    for i, j in enumerate(pend):
        pw = j.per_worker
        s = shapes.get((j.workload_class is _OP, j.pool, j.gpu_models, j.workers, pw.gpus, pw.cpus, pw.memory_gb))
        if s is None:
            s = shape(j)
        f0 = tier_fid.get(s)
        if f0 is None:
            fids = s.ready_fids
            f0 = tier_fid[s] = -2 if not fids else fids[0] if managed[fids[0]] else -1
        item = (s.rank, -j.priority, j.submit_time, j.id, i, j, s, f0)
        q = queues.get(j.project)
        if q is None:
            queues[j.project] = [item]
        else:
            q.append(item)
    for q in queues.values():  # small sorts per project instead of one big one
        q.sort()
    shares = {pid: cyc.share(pid) for pid in queues}
    pos = dict.fromkeys(queues, 0)
    limits = cyc.qv.limits

    def entry(it: tuple, pid: str) -> tuple:
        f0 = it[7]
        if f0 >= 0:  # cyc.tier, inlined
            got = limits(pid, f0, it[6].req)
            t = 0 if got[2] else 1 if got[3] else 2
        else:
            t = 1 if f0 == -1 else 2
        return (it[0], it[1], t, shares[pid], it[2], it[3], pid, it)

    heap = [entry(q[0], pid) for pid, q in queues.items()]
    heapq.heapify(heap)
    dirty = cyc._dirty
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        e = pop(heap)
        it = e[7]
        yield it[5], it[6]
        pid = e[6]
        q = queues[pid]
        p = pos[pid] + 1
        pos[pid] = p
        if dirty:  # admissions moved shares (and tiers): re-key those projects' heads
            for d in sorted(dirty):
                shares[d] = cyc.share(d)
            moved = [i for i, x in enumerate(heap) if x[6] in dirty]
            for i in moved:
                hp = heap[i][6]
                heap[i] = entry(queues[hp][pos[hp]], hp)
            if moved:
                heapq.heapify(heap)
            dirty.clear()
        if p < len(q):  # entry(q[p], pid), inlined: once per pending job
            it = q[p]
            f0 = it[7]
            if f0 >= 0:
                got = limits(pid, f0, it[6].req)
                t = 0 if got[2] else 1 if got[3] else 2
            else:
                t = 1 if f0 == -1 else 2
            push(heap, (it[0], it[1], t, shares[pid], it[2], it[3], pid, it))
