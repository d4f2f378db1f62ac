"""Which resource binds a capacity-blocked job: GPUs, CPUs or memory, with its numbers.

Why: "2 GPUs are free but no node has 1 free GPU together" is wrong when the GPUs are free
and the node's CPUs are all taken. A pending reason must name the resource that actually
blocks, so that a user asks for fewer CPUs instead of waiting for GPUs that are already there.

Rule, over the ready nodes of one flavor (a gang runs on one flavor: the first the job may use
that has its GPUs free in total; when none has, GPUs bind). GPUs are judged first, then CPUs,
then memory, so a GPU shortage is always reported as such:
- NO_CAPACITY on a resource when the free total of that resource is below the job's total;
- else FRAGMENTED on the first resource that no node can offer one worker together with the
  resources judged before it (GPUs when no node has the worker's GPUs free, CPUs when the
  nodes with those GPUs lack the CPUs, ...);
- else FRAGMENTED on GPUs: single workers fit, but not the whole gang at once.

Cost: the GPU total comes from the flavor index in O(1); the node scan runs only when the
GPUs suffice in total (or the job needs none), and its answer is cached per (shape, flavor)
while the cycle's state epoch is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from scheduler.model import ReasonCode

if TYPE_CHECKING:  # pragma: no cover
    from scheduler.cycle import Shape, _Cycle

EPS = 1e-9
UNITS = ("GPUs", "CPUs", "GB of memory")


class Binding(NamedTuple):
    """The code and the resource that binds, with the numbers a reason quotes."""

    code: ReasonCode
    resource: int  # index into RESOURCES
    requested: float  # the job's total of that resource
    per_worker: float  # one worker's need of that resource
    free: float  # free in total on the ready nodes of the flavors
    largest_free: float  # the most free on one node (among nodes with the resources judged before)


def binding(cyc: "_Cycle", s: "Shape", fids: list[int]) -> Binding:
    """The binding resource for a job of shape `s` on flavors `fids` (see module doc).

    A gang runs on one flavor, so totals are judged per flavor: when no flavor has the GPUs
    in total, GPUs bind (NO_CAPACITY); else the first flavor that has them is scanned."""
    flavors = cyc.world.flavors
    need_g = s.req[0]
    first = -1
    if s.only is not None:  # a node filter (data, image): totals over the nodes it may use
        free = {f: [cyc.world.nodes[i].free_g for i in flavors[f].nodes if s.usable(cyc.world.nodes[i])] for f in fids}
        total = {f: sum(v) for f, v in free.items()}
        first = next((f for f in fids if total[f] >= need_g and total[f] > 0), -1)
        if first < 0:
            largest = max((x for v in free.values() for x in v), default=0)
            return Binding(ReasonCode.NO_CAPACITY, 0, need_g, s.g, sum(total.values()), largest)
    for f in fids if first < 0 else ():
        if flavors[f].total_free_g >= need_g:
            first = f
            break
    if first < 0:  # the common case in a full cluster: no scan
        free_g = sum(flavors[f].total_free_g for f in fids if flavors[f].any_ready)
        largest = max((flavors[f].max_free for f in fids), default=0)
        return Binding(ReasonCode.NO_CAPACITY, 0, need_g, s.g, free_g, max(largest, 0))
    key = (s, first)
    hit = cyc.bindings.get(key)
    if hit is not None and hit[0] == cyc.epoch:
        return hit[1]
    got = _scan(cyc, s, first)
    cyc.bindings[key] = (cyc.epoch, got)
    return got


def _scan(cyc: "_Cycle", s: "Shape", fid: int) -> Binding:
    w = cyc.world
    g, c, m = s.g, s.c, s.m
    tot = [0.0, 0.0, 0.0]
    best = [0.0, 0.0, 0.0]  # largest free on one node of: GPUs; CPUs where GPUs fit; memory where both fit
    fits = [False, False, False]
    for i in w.flavors[fid].nodes:
        n = w.nodes[i]
        if not n.ready or (s.only is not None and not s.usable(n)):
            continue
        tot[0] += n.free_g
        tot[1] += n.free_c
        tot[2] += n.free_m
        if n.free_g > best[0]:
            best[0] = n.free_g
        if n.free_g >= g:
            fits[0] = True
            if n.free_c > best[1]:
                best[1] = n.free_c
            if c <= 0 or n.free_c + EPS >= c:
                fits[1] = True
                if n.free_m > best[2]:
                    best[2] = n.free_m
                if m <= 0 or n.free_m + EPS >= m:
                    fits[2] = True
    per = (g, c, m)
    for ri in range(3):
        if s.req[ri] > 0 and tot[ri] + EPS < s.req[ri]:
            return Binding(ReasonCode.NO_CAPACITY, ri, s.req[ri], per[ri], tot[ri], best[ri])
    for ri in range(3):
        if not fits[ri] and (per[ri] > 0 or ri == 0):
            return Binding(ReasonCode.FRAGMENTED, ri, s.req[ri], per[ri], tot[ri], best[ri])
    return Binding(ReasonCode.FRAGMENTED, 0, s.req[0], g, tot[0], best[0])
