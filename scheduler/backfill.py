"""Backfill: reserve the earliest start of the first capacity-blocked job of each pool.

Why: without a reservation, a stream of small jobs can keep a large gang waiting forever.
EASY-style backfill computes when the blocked job could start (running jobs end by start_time +
max_runtime_s x their project's real/requested runtime ratio, learned by the broker, or by their
hard limit once past that; this cycle's victims stop now) and holds, on the nodes it will
use, the part of its need that must come out of resources free now. Later jobs run on what is
left, or anywhere if they finish (by their max_runtime) before the reservation starts.

A reservation is applied to the working state as a virtual `take` and lifted (`lift` returns
the redo) only to test or admit a job that ends before it: the Kueue "what-if returns undo"
pattern, no copies.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Callable

from scheduler.state import EPS, World, pack

if TYPE_CHECKING:  # pragma: no cover
    from scheduler.cycle import Shape, _Cycle
    from scheduler.model import Job


class Reservation:
    __slots__ = ("job_id", "fid", "start", "blocks", "blocked_g")

    def __init__(self, job_id: str, fid: int, start: float) -> None:
        self.job_id, self.fid, self.start = job_id, fid, start
        self.blocks: list[list] = []  # [node index, g, c, m, ids taken]
        self.blocked_g = 0

    def apply(self, world: World) -> None:
        for b in self.blocks:
            b[4] = world.take(b[0], b[1], b[2], b[3])

    def lift(self, world: World) -> Callable[[], None]:
        """Give the held resources back; returns the redo that holds them again."""
        for i, g, c, m, ids in self.blocks:
            world.give(i, g, c, m, ids)
        return lambda: self.apply(world)


class Reservations:
    def __init__(self) -> None:
        self.any = False
        self.by_fid: dict[int, Reservation] = {}
        self.by_pool: dict[str, Reservation] = {}
        self.head_start: dict[str, float] = {}
        self._unreserved: frozenset[int] | None = None
        self.never: set = set()  # (shape, flavor) that cannot start even on an empty flavor

    def unreserved_fids(self, cyc: "_Cycle") -> frozenset[int]:
        """Flavors of pools that hold no reservation yet (cached until the next reservation)."""
        got = self._unreserved
        if got is None:
            got = self._unreserved = frozenset(
                fx.fid for fx in cyc.world.flavors if fx.pool.name not in self.by_pool)
        return got

    def could_fit(self, cyc: "_Cycle", s: "Shape", fid: int) -> bool:
        res = self.by_fid.get(fid)
        return res is not None and cyc.world.flavors[fid].total_free_g + res.blocked_g >= s.req[0]

    def reserve(self, cyc: "_Cycle", job: "Job", s: "Shape", fids: list[int]) -> None:
        """Reserve for `job` unless its best pool already holds a reservation."""
        best = None
        for fid in fids:
            if cyc.world.flavors[fid].pool.name in self.by_pool or (s, fid) in self.never:
                continue
            got = earliest_start(cyc, s, fid)
            if got is None:  # not even once everything running has ended: stays so this cycle
                self.never.add((s, fid))
            if got is not None and (best is None or got[0] < best[0]):
                best = (got[0], fid, got[1], got[2])
        if best is None:
            return
        start, fid, placed, free_at = best
        w = cyc.world
        res = Reservation(job.id, fid, start)
        for i, k in placed:
            n = w.nodes[i]
            fg, fc, fm = free_at[i]
            need = (k * s.g, k * s.c, k * s.m)
            now_free = (n.free_g, n.free_c, n.free_m)
            at = (fg, fc, fm)
            blk = [max(0.0, min(need[r] - (at[r] - now_free[r]), now_free[r])) for r in range(3)]
            if blk[0] > 0 or blk[1] > EPS or blk[2] > EPS:
                res.blocks.append([i, int(blk[0]), blk[1], blk[2], ()])
                res.blocked_g += int(blk[0])
        res.apply(w)
        self.by_fid[fid] = res
        self.by_pool[w.flavors[fid].pool.name] = res
        self.head_start[job.id] = start
        cyc.epoch += 1
        self.any = True
        self._unreserved = None


_by_time_id = itemgetter(0, 1)  # sort key (time, job id), in C


def _end(r, now: float) -> float:
    """When a running job is planned to release its resources: its expected end (max_runtime
    x its project's runtime ratio) while that lies ahead, else its hard limit."""
    e = r.expected_end
    if e <= now:
        e = r.end
    return e if e > now else now


def _k(f: list[float], g: int, c: float, m: float) -> int:
    k = int(f[0]) // g if g else 1 << 30
    if c > 0:
        k = min(k, int((f[1] + EPS) // c))
    if m > 0:
        k = min(k, int((f[2] + EPS) // m))
    return max(k, 0)


def _events(cyc: "_Cycle", fid: int) -> list[tuple[float, str, list[tuple[int, int, float, float]]]]:
    """Resource releases in flavor fid: (time, job id, [(node, gpus, cpus, mem)])."""
    now = cyc.now
    out = []
    for r in cyc.runs_by_fid.get(fid, ()):
        end = now if r.job.id in cyc.victims else _end(r, now)
        out.append((end, r.job.id, [(i, r.g, r.c, r.m) for i, _ids in r.taken]))
    for end, jid, f, placed, s in cyc.started:
        if f == fid:
            out.append((end, jid, [(i, k * s.g, k * s.c, k * s.m) for i, k in placed]))
    out.sort(key=_by_time_id)
    return out


def _gpu_releases(cyc: "_Cycle", fid: int) -> list[tuple[float, str, int]]:
    """_events(cyc, fid) with each event's GPUs summed: (time, job id, GPUs), same order.
    The estimates only need GPU totals, so no per-node lists are built."""
    now, victims = cyc.now, cyc.victims
    out = []
    for r in cyc.runs_by_fid.get(fid, ()):
        jid = r.job.id
        out.append((now if jid in victims else _end(r, now), jid, r.g * len(r.taken)))
    for end, jid, f, placed, s in cyc.started:
        if f == fid:
            out.append((end, jid, sum(k * s.g for _i, k in placed)))
    out.sort(key=_by_time_id)
    return out


def release_profile(cyc: "_Cycle", fid: int) -> tuple[list[float], list[float]]:
    """(times, cumulative GPUs released by then) of flavor fid, from `_gpu_releases`: when
    do `k` more GPUs than are free now become free in total (fragmentation ignored)."""
    times, cum, acc = [], [], 0.0
    for end, _jid, gpus in _gpu_releases(cyc, fid):
        acc += gpus
        times.append(end)
        cum.append(acc)
    return times, cum


def earliest_start(cyc: "_Cycle", s: "Shape", fid: int):
    """(time, placement, free per node at that time) for the gang on flavor fid, or None."""
    w = cyc.world
    free = {i: [float(w.nodes[i].free_g), w.nodes[i].free_c, w.nodes[i].free_m]
            for i in w.flavors[fid].nodes if w.nodes[i].ready}
    sg, sc, sm = s.g, s.c, s.m
    ks = {i: _k(f, sg, sc, sm) for i, f in free.items()}  # workers that fit per node, kept current
    total = sum(ks.values())
    when = cyc.now
    if total < s.w:
        for end, _jid, parts in _events(cyc, fid):
            for i, g, c, m in parts:
                f = free.get(i)
                if f is None:
                    continue
                f0, f1, f2 = f[0] + g, f[1] + c, f[2] + m
                f[0], f[1], f[2] = f0, f1, f2
                k = int(f0) // sg if sg else 1 << 30  # _k(f, sg, sc, sm), inlined
                if sc > 0:
                    k = min(k, int((f1 + EPS) // sc))
                if sm > 0:
                    k = min(k, int((f2 + EPS) // sm))
                if k < 0:
                    k = 0
                total += k - ks[i]
                ks[i] = k
            if total >= s.w:
                when = end
                break
        else:
            return None
    cands = [(_k(f, s.g, s.c, s.m), int(f[0]), i) for i, f in sorted(free.items())]
    placed = pack([c for c in cands if c[0] > 0], s.w)
    if placed is None:
        return None
    return when, placed, {i: tuple(free[i]) for i, _k2 in placed}
