"""The cycle's working state of nodes: free resources, free GPU indices, per-flavor indexes.

Why an index: a cycle looks at thousands of pending jobs, most of which cannot start. Each
flavor keeps its ready nodes bucketed by free GPU count, plus the total free GPUs, so "can a
worker of g GPUs fit anywhere?" and "is there enough in total?" are O(1)-ish, and best-fit
(least leftover) is a walk up the buckets. Changes go through `take`/`give`, which are each
other's undo; nothing is copied per job.

Invariants: free_* never below zero for a ready node after a real admission; a GPU index is
either in `free_ids` or used by exactly one placement; `buckets[f]` holds exactly the ready
nodes of the flavor with f free GPUs, each list sorted by node index.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from operator import attrgetter
from typing import Iterable

from scheduler.model import Flavor, Node, NodeState, Pool, WorkloadClass

EPS = 1e-9
_READY = NodeState.READY
_node_id = attrgetter("id")


class WNode:
    """One node's mutable free resources during a cycle."""

    __slots__ = ("i", "node", "id", "fid", "ready", "cap_g", "cap_c", "cap_m",
                 "free_g", "free_c", "free_m", "free_ids")

    def __init__(self, i: int, node: Node, fid: int) -> None:
        self.i = i
        self.node = node
        self.id = node.id
        self.fid = fid
        self.ready = node.state is _READY  # node.state.schedulable, without the property call
        cap = node.capacity
        self.cap_g = self.free_g = g = int(cap.gpus)
        self.cap_c = self.free_c = float(cap.cpus)
        self.cap_m = self.free_m = float(cap.memory_gb)
        self.free_ids = list(range(g))

    def fits(self, g: int, c: float, m: float) -> int:
        """How many workers of (g, c, m) fit here now (capped at 1<<30)."""
        k = self.free_g // g if g else 1 << 30
        if c > 0:
            k = min(k, int((self.free_c + EPS) // c))
        if m > 0:
            k = min(k, int((self.free_m + EPS) // m))
        return k


class FlavorIndex:
    """Per-flavor view: ready nodes by free GPU count, total free, largest node ever seen."""

    __slots__ = ("fid", "flavor", "pool", "nodes", "buckets", "total_free_g", "max_cap_g",
                 "max_cap_c", "max_cap_m", "any_node", "any_ready", "ready_cap_g", "max_free")

    def __init__(self, fid: int, flavor: Flavor, pool: Pool) -> None:
        self.fid = fid
        self.flavor = flavor
        self.pool = pool
        self.nodes: list[int] = []
        self.buckets: list[list[int]] = [[]]
        self.total_free_g = 0
        self.max_cap_g = 0  # over all nodes of the flavor, whatever their state
        self.max_cap_c = 0.0
        self.max_cap_m = 0.0
        self.any_node = False
        self.any_ready = False
        self.ready_cap_g = 0
        self.max_free = -1  # largest free GPU count on one ready node (-1: no ready node)

    def max_free_g(self) -> int:
        return self.max_free

    def _recompute_max(self) -> None:
        b = self.buckets
        for f in range(len(b) - 1, -1, -1):
            if b[f]:
                self.max_free = f
                return
        self.max_free = -1


class World:
    """All nodes and flavor indexes of one cycle."""

    def __init__(self, nodes: Iterable[Node], pools: Iterable[Pool]) -> None:
        self.pools = {p.name: p for p in pools}
        self.nodes: list[WNode] = []
        self.by_id: dict[str, int] = {}
        self.flavors: list[FlavorIndex] = []
        self.fid: dict[tuple[str, str], int] = {}  # (pool, model) -> flavor index (tuples hash in C)
        fids, flavors, wnodes, by_id = self.fid, self.flavors, self.nodes, self.by_id
        for i, node in enumerate(sorted(nodes, key=_node_id)):
            fk = (node.pool, node.gpu_model)
            fid = fids.get(fk)
            if fid is None:
                fid = len(flavors)
                fids[fk] = fid
                pool = self.pools.get(node.pool) or Pool(node.pool, WorkloadClass.INNOVATION)
                flavors.append(FlavorIndex(fid, Flavor(node.pool, node.gpu_model), pool))
            w = WNode(i, node, fid)
            by_id[node.id] = i
            wnodes.append(w)
            fx = flavors[fid]
            fx.nodes.append(i)
            fx.any_node = True
            if w.cap_g > fx.max_cap_g:  # max(), without the calls
                fx.max_cap_g = w.cap_g
            if w.cap_c > fx.max_cap_c:
                fx.max_cap_c = w.cap_c
            if w.cap_m > fx.max_cap_m:
                fx.max_cap_m = w.cap_m
            if w.ready:
                fx.any_ready = True
                fx.ready_cap_g += w.cap_g
        self.pools_with_nodes = sorted({fx.pool.name for fx in self.flavors})
        # image -> indices of the nodes that take its jobs ("" : general nodes); `dedicated`
        # False (no node dedicated to an image, every deployment but pods per image) keeps every
        # shape free of a node filter
        by_image: dict[str, list[int]] = {}
        for w in wnodes:
            by_image.setdefault(w.node.image, []).append(w.i)
        self.image_nodes = {k: frozenset(v) for k, v in by_image.items()}
        self.dedicated = any(by_image.keys() - {""})
        self._used_ids: dict[int, set[int]] = {}
        self._unassigned: list[tuple[int, int, list]] = []  # (node, gpus, slot to fill with ids)
        self._final = False

    # -- bulk loading of running work (step 1), then `finalize` builds the indexes once --------
    def occupy(self, i: int, g: int, c: float, m: float, ids: tuple[int, ...] | None, slot: list | None = None) -> None:
        """Account running work on node i before `finalize`; ids None: any free ones, written
        into slot[0] at finalize (a snapshot without GPU indices)."""
        w = self.nodes[i]
        w.free_g -= g
        w.free_c -= c
        w.free_m -= m
        if ids is None:
            self._unassigned.append((i, g, slot if slot is not None else [()]))
        elif ids:
            used = self._used_ids.get(i)
            if used is None:
                self._used_ids[i] = set(ids)
            else:
                used.update(ids)

    def finalize(self) -> None:
        for i, used in self._used_ids.items():
            w = self.nodes[i]
            w.free_ids = [x for x in w.free_ids if x not in used]
        for i, g, slot in self._unassigned:
            w = self.nodes[i]
            slot[0] = tuple(w.free_ids[:g])
            del w.free_ids[:g]
        for fx in self.flavors:
            fx.buckets = [[] for _ in range(fx.max_cap_g + 1)]
            for i in fx.nodes:
                w = self.nodes[i]
                if w.ready:
                    f = min(max(w.free_g, 0), w.cap_g)
                    fx.buckets[f].append(i)
                    fx.total_free_g += f
            fx._recompute_max()
        self._final = True

    # -- mutation (take and give are each other's undo) ----------------------------------
    def _rebucket(self, w: WNode, old_g: int) -> None:
        # bucket by clamped free count: an over-committed input snapshot must not crash us
        new = min(max(w.free_g, 0), w.cap_g)
        old = min(max(old_g, 0), w.cap_g)
        if not w.ready or old == new:
            return
        fx = self.flavors[w.fid]
        b = fx.buckets[old]
        del b[bisect_left(b, w.i)]
        insort(fx.buckets[new], w.i)
        fx.total_free_g += new - old
        if new > fx.max_free:
            fx.max_free = new
        elif old == fx.max_free and not b:
            fx._recompute_max()

    def take(self, i: int, g: int, c: float, m: float, ids: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Use resources on node i; returns the GPU indices taken (the lowest free ones unless given)."""
        w = self.nodes[i]
        old = w.free_g
        if ids is None:
            ids = tuple(w.free_ids[:g])
            del w.free_ids[:g]
        else:
            fi = w.free_ids
            for x in ids:
                j = bisect_left(fi, x)
                if j < len(fi) and fi[j] == x:
                    del fi[j]
        w.free_g -= g
        w.free_c -= c
        w.free_m -= m
        self._rebucket(w, old)
        return ids

    def give(self, i: int, g: int, c: float, m: float, ids: tuple[int, ...]) -> None:
        w = self.nodes[i]
        old = w.free_g
        for x in ids:
            insort(w.free_ids, x)
        w.free_g += g
        w.free_c += c
        w.free_m += m
        self._rebucket(w, old)

    # -- placement -------------------------------------------------------------------------
    def place(self, fid: int, workers: int, g: int, c: float, m: float,
              allowed: "callable | None" = None) -> list[tuple[int, int]] | None:
        """Gang placement: [(node index, workers on it)] for all workers, or None.

        Best fit: a single node that holds the whole gang with the least GPUs left over; else
        fewest nodes (most workers per node first), finishing on the best-fitting node.
        `allowed(w, k) -> k'` may cap how many workers a node takes (backfill reservations).
        """
        fx = self.flavors[fid]
        buckets = fx.buckets
        nodes = self.nodes
        top = len(buckets)
        if workers == 1:
            for f in range(g, top):
                for i in buckets[f]:
                    w = nodes[i]
                    if (c <= 0 or w.free_c + EPS >= c) and (m <= 0 or w.free_m + EPS >= m):
                        if allowed is None or allowed(w, 1) >= 1:
                            return [(i, 1)]
            return None
        if fx.total_free_g < workers * g:
            return None
        cands: list[tuple[int, int, int]] = []  # (k, free_g, node index)
        total = 0
        for f in range(g, top):
            for i in buckets[f]:
                w = nodes[i]
                k = w.fits(g, c, m)
                if allowed is not None and k > 0:
                    k = allowed(w, k)
                if k >= workers:
                    return [(i, workers)]  # ascending free: the first whole fit is the best fit
                if k > 0:
                    cands.append((k, f, i))
                    total += k
        if total < workers:
            return None
        return pack(cands, workers)


def pack(cands: list[tuple[int, int, int]], workers: int) -> list[tuple[int, int]] | None:
    """Fewest nodes for a gang: cands are (workers that fit, free GPUs, node index).

    Takes the nodes that hold most workers first and finishes on the best-fitting node (least
    free GPUs) that holds the rest. Deterministic: ties break on node index.
    """
    if sum(t[0] for t in cands) < workers:
        return None
    for k, f, i in sorted(cands, key=lambda t: (t[1], t[2])):
        if k >= workers:
            return [(i, workers)]
    cands = sorted(cands, key=lambda t: (-t[0], t[1], t[2]))
    out: list[tuple[int, int]] = []
    left = workers
    used: set[int] = set()
    for k, _f, i in cands:
        if k >= left:
            best = min((t for t in cands if t[0] >= left and t[2] not in used), key=lambda t: (t[1], t[2]))
            out.append((best[2], left))
            return out
        out.append((i, k))
        used.add(i)
        left -= k
    return None
