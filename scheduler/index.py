"""Step 1 of a cycle: index the snapshot (nodes, running work, quotas, budgets, shapes).

Why its own module: the cycle's decision steps read these indexes thousands of times, and
building them is the per-cycle fixed cost (it dominates in small, frequent cycles such as the
simulator's), so it is written for speed: running work is bulk-loaded into the node state
(indexes built once), flavors are keyed by plain tuples, and budget reservations are computed
only where a budget exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quotas.amount import Amount
from quotas.budget import BudgetLedger, remaining_reservation
from quotas.tree import QuotaTree
from scheduler.model import RESOURCES, Flavor, Job, ReasonCode, WorkloadClass
from scheduler.quota_view import QuotaView
from scheduler.state import World

if TYPE_CHECKING:  # pragma: no cover
    from scheduler.cycle import _Cycle

EPS = 1e-9


def fkey(fl: Flavor) -> tuple[str, str]:
    """The quota tree's flavor key: a plain (pool, model) tuple."""
    return (fl.pool, fl.gpu_model)


class Shape:
    """What a job needs, resolved once per distinct (class, pool, models, gang) shape.

    Candidate flavors: operation jobs use operation pools; innovation jobs use innovation pools
    and, as borrowed preemptible work, operation pools that lend (when the policy lends to this
    job: `may_borrow`, part of the shape's key); with `may_borrow`, operation jobs may also
    overflow into innovation pools (`Policy.operation_overflow`). Order: own-class pools first,
    then the job's model preference, then names.
    """

    __slots__ = ("fids", "ready_fids", "code", "largest", "w", "g", "c", "m", "req", "rank", "allowed", "only")

    def __init__(self, world: World, job: Job, may_borrow: bool = True) -> None:
        pw = job.per_worker
        self.w, self.g, self.c, self.m = job.workers, int(pw.gpus), float(pw.cpus), float(pw.memory_gb)
        self.req = (float(self.w * self.g), self.w * self.c, self.w * self.m)
        op = job.workload_class is WorkloadClass.OPERATION
        self.rank = 0 if op else 1
        pool_ok, overflow = [], []
        for fx in world.flavors:
            p = fx.pool
            if job.pool is not None and p.name != job.pool:
                continue
            if op and p.workload_class is not WorkloadClass.OPERATION:
                if may_borrow and job.pool is None:
                    overflow.append(fx)
                continue
            if not op and p.workload_class is WorkloadClass.OPERATION and not (p.lend_to_innovation and may_borrow):
                continue
            pool_ok.append(fx)
        models = job.gpu_models
        with_model = [fx for fx in pool_ok if not models or fx.flavor.gpu_model in models]
        fits = [fx for fx in with_model if fx.max_cap_g >= self.g and fx.max_cap_c + EPS >= self.c
                and fx.max_cap_m + EPS >= self.m]
        if fits and overflow:  # an operation job that has an operation pool may overflow beside it
            fits += [fx for fx in overflow if (not models or fx.flavor.gpu_model in models)
                     and fx.max_cap_g >= self.g and fx.max_cap_c + EPS >= self.c and fx.max_cap_m + EPS >= self.m]
        self.largest = max((fx.max_cap_g for fx in with_model), default=0)

        def rank(fx):
            lent = (fx.pool.workload_class is WorkloadClass.OPERATION) is not op  # another class's pool
            mi = models.index(fx.flavor.gpu_model) if models else 0
            return (lent, mi, fx.flavor.pool, fx.flavor.gpu_model)

        # `place`'s node filter: None, or only the nodes that hold the job's data and take its
        # image (`only`: their indices); a node dedicated to an image takes one worker, on an
        # otherwise empty node (one job per pod)
        self.allowed = self.only = None
        only: frozenset[int] | None = None
        if job.nodes:
            only = frozenset(world.by_id[n] for n in job.nodes if n in world.by_id)
            fits = [fx for fx in fits if any(i in only and world.nodes[i].ready for i in fx.nodes)]
        if world.dedicated:
            mine = world.image_nodes.get(job.image, frozenset())
            only = mine if only is None else only & mine
        if only is not None:
            self.only = only
            self.allowed = _dedicated_filter(only) if job.image else lambda wn, k, _only=only: k if wn.i in _only else 0
        self.fids = tuple(fx.fid for fx in sorted(fits, key=rank))
        if only is None:
            self.ready_fids = tuple(f for f in self.fids if world.flavors[f].any_ready)
        else:  # a flavor counts as ready only with a ready node this job may use
            self.ready_fids = tuple(f for f in self.fids
                                    if any(i in only and world.nodes[i].ready for i in world.flavors[f].nodes))
        self.code: ReasonCode | None = None  # a reason that holds whatever the cycle does
        if job.nodes and not self.fids and with_model:
            self.code = ReasonCode.DATA_UNAVAILABLE
            return
        if not pool_ok:
            self.code = ReasonCode.NEVER_FITS
        elif not with_model:
            self.code = ReasonCode.GPU_MODEL_UNAVAILABLE
        elif not fits:
            self.code = ReasonCode.NEVER_FITS
        elif not self.ready_fids:
            self.code = ReasonCode.GPU_MODEL_UNAVAILABLE if models else ReasonCode.NO_CAPACITY

    def usable(self, wn) -> bool:
        """A ready node that may take one worker of this shape now (its node filter passed)."""
        return wn.ready and (self.allowed is None or self.allowed(wn, 1) >= 1)


def _dedicated_filter(only: frozenset[int]):
    """`place`'s filter for an image's job: its image's nodes only, one worker on a node
    nothing else holds (a pod runs one job worker in its life; the broker retires it after)."""
    def allowed(wn, k: int) -> int:
        if wn.i not in only or wn.free_g != wn.cap_g or wn.free_c + EPS < wn.cap_c:
            return 0
        return min(k, 1)
    return allowed


class Run:
    """A running job as the cycle indexes it (for preemption and backfill timelines)."""

    __slots__ = ("job", "fid", "start", "end", "taken", "req", "borrowing", "g", "c", "m", "per_node", "at_risk",
                 "expected_end")

    def __init__(self, job: Job, fid: int, start: float, borrowing: bool, at_risk_since: float,
                 ratio: float = 1.0) -> None:
        self.job, self.fid, self.start, self.borrowing = job, fid, start, borrowing
        self.end = start + job.max_runtime_s  # at the latest (the broker enforces max_runtime)
        # the project's real/requested runtime ratio applied, never past `end`
        self.expected_end = start + job.max_runtime_s * ratio if ratio < 1.0 else self.end
        self.at_risk = at_risk_since  # a preemption throws away the work since then
        pw = job.per_worker
        self.g, self.c, self.m = int(pw.gpus), float(pw.cpus), float(pw.memory_gb)
        self.req = (float(job.workers * self.g), job.workers * self.c, job.workers * self.m)
        self.taken: list[tuple[int, tuple[int, ...]]] = []  # (node index, GPU ids) per worker
        self.per_node: list[tuple[int, int]] | None = None  # (node, workers), filled by preemption


def index_snapshot(cyc: "_Cycle") -> None:
    """Step 1: node free resources and GPU indices from running placements, quota usage
    bubbled up the tree, budget reservations, fair-share allocation and capacity."""
    snap, now = cyc.snap, cyc.now
    cyc.world = w = World(snap.nodes, snap.pools)
    cyc.projects = {p.id: p for p in snap.projects}
    cyc.departments = {d.id: d for d in snap.departments}
    cyc.dept_of = {p.id: p.department for p in snap.projects}
    cyc.runs: list[Run] = []
    cyc.runs_by_fid: dict[int, list[Run]] = {}
    usage: dict[tuple[str, int], list[float]] = {}
    cyc.alloc: dict[str, list[float]] = {}
    reserved: dict[str, float] = {}
    budgets = {p.id: p.budget_gpu_hours for p in snap.projects if not p.budget_gpu_hours.unlimited}
    budgets.update({d.id: d.budget_gpu_hours for d in snap.departments if not d.budget_gpu_hours.unlimited})
    fid_of = {(fx.flavor.pool, fx.flavor.gpu_model): fx.fid for fx in w.flavors}  # no dataclass hashing
    by_id, dept_of, runs, runs_by_fid, alloc = w.by_id, cyc.dept_of, cyc.runs, cyc.runs_by_fid, cyc.alloc
    projects = cyc.projects
    standins: list[Run] = []  # runs with a GPU-index slot filled at finalize
    for r in sorted(snap.running, key=lambda r: r.job.id):
        j = r.job
        fl = r.flavor
        fid = fid_of.get((fl.pool, fl.gpu_model), -1)
        since = r.start_time
        if j.checkpointable and r.checkpoint_time is not None and r.checkpoint_time > since:
            since = r.checkpoint_time
        p = projects.get(j.project)
        run = Run(j, fid, r.start_time, r.borrowing, since, p.runtime_ratio if p is not None else 1.0)
        g, c, m = run.g, run.c, run.m
        for pl in r.placements:
            i = by_id.get(pl.node)
            if i is not None:
                ids = pl.gpu_indices
                if len(ids) == g:
                    w.occupy(i, g, c, m, ids)
                    run.taken.append((i, ids))
                else:  # indices unknown: the lowest free ones stand in for them
                    slot = [()]
                    w.occupy(i, g, c, m, None, slot)
                    run.taken.append((i, slot))
                    if not standins or standins[-1] is not run:
                        standins.append(run)
        runs.append(run)
        req = run.req
        pid = j.project
        if fid >= 0:
            lst = runs_by_fid.get(fid)
            if lst is None:
                lst = runs_by_fid[fid] = []
            lst.append(run)
            u = usage.get((pid, fid))
            if u is None:
                u = usage[(pid, fid)] = [0.0, 0.0, 0.0]
            u[0] += req[0]
            u[1] += req[1]
            u[2] += req[2]
        a = alloc.get(pid)
        if a is None:
            a = alloc[pid] = [0.0, 0.0, 0.0]
        a[0] += req[0]
        a[1] += req[1]
        a[2] += req[2]
        if budgets:
            dept = dept_of.get(pid, "")
            if pid in budgets or dept in budgets:
                rh = remaining_reservation(int(req[0]), r.start_time, j.max_runtime_s, now).value
                for owner in (pid, dept):
                    reserved[owner] = reserved.get(owner, 0.0) + rh
    w.finalize()
    for run in standins:  # resolve stand-in indices
        run.taken = [(i, ids[0] if type(ids) is list else ids) for i, ids in run.taken]
    capacity: dict[tuple[tuple[str, str], str], Amount] = {}
    for fx in w.flavors:
        tot = [0.0, 0.0, 0.0]
        for i in fx.nodes:
            n = w.nodes[i]
            caps, frees = (n.cap_g, n.cap_c, n.cap_m), (n.free_g, n.free_c, n.free_m)
            for k in range(3):
                tot[k] += caps[k] if n.ready else caps[k] - frees[k]
        for k, res in enumerate(RESOURCES):
            capacity[(fkey(fx.flavor), res)] = Amount.of(tot[k])
    # The tree is keyed by ((pool, model), resource) tuples: they hash in C, Flavor
    # dataclasses in Python, and the hot paths look keys up millions of times.
    dspecs = {d.id: {(fkey(f), r): v for (f, r), v in d.quotas.items()} for d in snap.departments}
    pspecs = {p.id: (p.department, {(fkey(f), r): v for (f, r), v in p.quotas.items()}) for p in snap.projects}
    tree_usage: dict[str, dict[tuple[tuple[str, str], str], Amount]] = {}
    for (pid, fid), u in usage.items():
        fl = fkey(w.flavors[fid].flavor)
        d = tree_usage.setdefault(pid, {})
        for k, res in enumerate(RESOURCES):
            if u[k]:
                d[(fl, res)] = Amount.of(u[k])
    cyc.tree = QuotaTree(capacity, dspecs, pspecs, tree_usage)
    managed = {k for s in dspecs.values() for k in s} | {k for _, s in pspecs.values() for k in s}
    cyc.qv = QuotaView(cyc.tree, [fkey(fx.flavor) for fx in w.flavors], managed)
    spent = {o: float(x.spent_gpu_hours) for o, x in [*cyc.projects.items(), *cyc.departments.items()]}
    cyc.ledger = BudgetLedger(budgets, spent)
    for owner in sorted(reserved):
        if owner in budgets:
            cyc.ledger.reserve((owner,), Amount.of(reserved[owner]))
    cap = [0.0, 0.0, 0.0]
    for n in w.nodes:
        if n.ready:
            cap[0] += n.cap_g
            cap[1] += n.cap_c
            cap[2] += n.cap_m
    cyc.cap = dict(zip(RESOURCES, cap))
