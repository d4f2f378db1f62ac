"""One scheduling cycle, as numbered steps over a snapshot (Kueue style).

`run_cycle(snapshot, now, policy)` is a pure function: it reads no clock and returns
decisions (admissions with placements, preemptions, one pending reason per other job).

Steps:
 1. Index: node free resources and GPU indices from running placements; quota usage bubbled up
    the tree; budget reservations; fair-share allocation.
 2. Order pending jobs: class (operation first), priority, quota tier (within guarantee, then
    within nominal, then borrowing, as Kueue orders non-borrowing first), fair share (weighted
    dominant share of allocation plus decayed past usage, updated as the cycle admits), submit
    time, id. `strict_fifo`: submit time then id, with head-of-line blocking.
 3. For each job: budget, quota, gang placement on its candidate flavors (non-borrowing first).
 4. Preemption when quota allows but capacity does not (scheduler.preemption).
 5. Backfill: the first capacity-blocked job of each pool gets a reservation at its earliest
    start; later jobs start only if they do not delay it (scheduler.backfill).
 6. Exactly one pending reason per job that is not admitted.

Determinism: every sort uses total keys ending in ids; no set or dict order leaks into output.
"""

from __future__ import annotations

import heapq
from typing import Iterable

from quotas.amount import Amount
from quotas.budget import BudgetLedger, remaining_reservation
from quotas.fairshare import dominant_share, past_equivalent
from quotas.tree import QuotaTree, Verdict
from scheduler import backfill as bf
from scheduler import preemption as pre
from scheduler.model import (
    POLICIES, RESOURCES, Admission, CycleResult, CycleStats, Flavor, Job, Outcome, PendingReason,
    Placement, Policy, Preemption, ReasonCode, Running, Snapshot, WorkloadClass,
)
from scheduler.quota_view import QuotaView
from scheduler.reasons import bare, explained
from scheduler.state import World

DEFAULT_POLICY = POLICIES["fair-backfill-preempt"]
EPS = 1e-9


class Shape:
    """What a job needs, resolved once per distinct (class, pool, models, gang) shape."""

    __slots__ = ("fids", "never", "model_missing", "largest", "w", "g", "c", "m", "req")

    def __init__(self, world: World, job: Job) -> None:
        pw = job.per_worker
        self.w, self.g, self.c, self.m = job.workers, int(pw.gpus), float(pw.cpus), float(pw.memory_gb)
        self.req = (float(self.w * self.g), self.w * self.c, self.w * self.m)
        op = job.workload_class is WorkloadClass.OPERATION
        pool_ok = []
        for fx in world.flavors:
            p = fx.pool
            if job.pool is not None and p.name != job.pool:
                continue
            if op and p.workload_class is not WorkloadClass.OPERATION:
                continue
            if not op and p.workload_class is WorkloadClass.OPERATION and not p.lend_to_innovation:
                continue
            pool_ok.append(fx)
        models = job.gpu_models
        with_model = [fx for fx in pool_ok if not models or fx.flavor.gpu_model in models]
        self.model_missing = bool(pool_ok) and not with_model
        fits = [fx for fx in with_model if fx.max_cap_g >= self.g and fx.max_cap_c + EPS >= self.c
                and fx.max_cap_m + EPS >= self.m]
        self.largest = max((fx.max_cap_g for fx in with_model), default=0)
        self.never = not pool_ok or (bool(with_model) and not fits)

        def rank(fx):  # own-class pools first, then preferred model order, then names
            lent = (not op) and fx.pool.workload_class is WorkloadClass.OPERATION
            mi = models.index(fx.flavor.gpu_model) if models else 0
            return (lent, mi, fx.flavor.pool, fx.flavor.gpu_model)

        self.fids = tuple(fx.fid for fx in sorted(fits, key=rank))


def run_cycle(snapshot: Snapshot, now: float, policy: Policy = DEFAULT_POLICY) -> CycleResult:
    """Decide admissions, preemptions and pending reasons for one snapshot at time `now`."""
    return _Cycle(snapshot, now, policy).run()


class _Cycle:
    def __init__(self, snap: Snapshot, now: float, policy: Policy) -> None:
        self.snap, self.now, self.policy = snap, now, policy
        self.explain = policy.explain
        # -- step 1: indexes ---------------------------------------------------------------
        self.world = w = World(snap.nodes, snap.pools)
        self.projects = {p.id: p for p in snap.projects}
        self.departments = {d.id: d for d in snap.departments}
        self.dept_of = {p.id: p.department for p in snap.projects}
        self.running = sorted(snap.running, key=lambda r: r.job.id)
        usage: dict[tuple[str, int], list[float]] = {}
        self.alloc: dict[str, list[float]] = {}
        reserved: dict[str, float] = {}
        self.borrowed = [[0.0, 0.0, 0.0] for _ in w.flavors]  # reclaimable by nominal owners
        self.lent = [[0.0, 0.0, 0.0] for _ in w.flavors]  # innovation on operation pools
        self.run_fid: dict[str, int] = {}
        for r in self.running:
            j = r.job
            pw = j.per_worker
            g, c, m = int(pw.gpus), float(pw.cpus), float(pw.memory_gb)
            for pl in r.placements:
                i = w.by_id.get(pl.node)
                if i is None:
                    continue
                ids = tuple(pl.gpu_indices) if len(pl.gpu_indices) == g else None
                w.take(i, g, c, m, ids)
            tot = (float(j.workers * g), j.workers * c, j.workers * m)
            fid = w.fid.get(r.flavor, -1)
            self.run_fid[j.id] = fid
            if fid >= 0:
                u = usage.setdefault((j.project, fid), [0.0, 0.0, 0.0])
                for k in range(3):
                    u[k] += tot[k]
                    if r.borrowing:
                        self.borrowed[fid][k] += tot[k]
                    if j.workload_class is WorkloadClass.INNOVATION and \
                            w.flavors[fid].pool.workload_class is WorkloadClass.OPERATION:
                        self.lent[fid][k] += tot[k]
            a = self.alloc.setdefault(j.project, [0.0, 0.0, 0.0])
            for k in range(3):
                a[k] += tot[k]
            rh = remaining_reservation(j.workers * g, r.start_time, j.max_runtime_s, now).value
            for owner in (j.project, self.dept_of.get(j.project, "")):
                reserved[owner] = reserved.get(owner, 0.0) + rh
        capacity: dict[tuple[Flavor, str], Amount] = {}
        for fx in w.flavors:
            tot = [0.0, 0.0, 0.0]
            for i in fx.nodes:
                n = w.nodes[i]
                caps = (n.cap_g, n.cap_c, n.cap_m)
                frees = (n.free_g, n.free_c, n.free_m)
                for k in range(3):
                    tot[k] += caps[k] if n.ready else caps[k] - frees[k]
            for k, r in enumerate(RESOURCES):
                capacity[(fx.flavor, r)] = Amount.of(tot[k])
        dspecs = {d.id: d.quotas for d in snap.departments}
        pspecs = {p.id: (p.department, p.quotas) for p in snap.projects}
        self.tree = QuotaTree(capacity, dspecs, pspecs)
        managed = {k for s in dspecs.values() for k in s} | {k for _, s in pspecs.values() for k in s}
        self.qv = QuotaView(self.tree, [fx.flavor for fx in w.flavors], managed)
        for (pid, fid), u in sorted(usage.items()):
            self.qv.add(pid, fid, (u[0], u[1], u[2]))
        budgets = {p.id: p.budget_gpu_hours for p in snap.projects if not p.budget_gpu_hours.unlimited}
        budgets.update({d.id: d.budget_gpu_hours for d in snap.departments if not d.budget_gpu_hours.unlimited})
        spent = {p.id: p.spent_gpu_hours for p in snap.projects}
        spent.update({d.id: d.spent_gpu_hours for d in snap.departments})
        self.ledger = BudgetLedger(budgets, spent)
        for owner in sorted(reserved):
            if owner in budgets:
                self.ledger.reserve((owner,), Amount.of(reserved[owner]))
        # fair share: capacity totals over ready nodes
        cap = [0.0, 0.0, 0.0]
        for n in w.nodes:
            if n.ready:
                cap[0] += n.cap_g
                cap[1] += n.cap_c
                cap[2] += n.cap_m
        self.cap = dict(zip(RESOURCES, cap))
        self.shapes: dict[tuple, Shape] = {}
        self.admissions: list[Admission] = []
        self.preemptions: list[Preemption] = []
        self.pending: dict[str, PendingReason] = {}
        self.victims: set[str] = set()
        self.started: list[tuple[float, str, int, tuple]] = []  # (end, job id, fid, placement)
        self.reservations = bf.Reservations()

    # -- helpers --------------------------------------------------------------------------
    def shape(self, job: Job) -> Shape:
        pw = job.per_worker
        key = (job.workload_class, job.pool, job.gpu_models, job.workers, pw.gpus, pw.cpus, pw.memory_gb)
        s = self.shapes.get(key)
        if s is None:
            s = self.shapes[key] = Shape(self.world, job)
        return s

    def share(self, pid: str) -> float:
        if not self.policy.fair_share:
            return 0.0
        a = self.alloc.get(pid, (0.0, 0.0, 0.0))
        p = self.projects.get(pid)
        d = self.departments.get(p.department) if p else None
        weight = (p.weight if p else 1.0) * (d.weight if d else 1.0)
        past = past_equivalent(p.decayed_usage_gpu_s, self.policy.fair_share_half_life_s) if p else 0.0
        return dominant_share({"gpus": a[0] + past, "cpus": a[1], "memory_gb": a[2]}, self.cap, weight)

    def tier(self, job: Job, s: Shape) -> int:
        """0 within guarantee, 1 within nominal, 2 borrowing (on the job's first flavor)."""
        if not s.fids:
            return 2
        lp, ld, g, n, dn = self.qv.record(job.project, s.fids[0])
        managed = self.qv.managed[s.fids[0]]
        if not managed:
            return 1
        if all(s.req[ri] <= g[j] + EPS for j, ri in enumerate(managed)):
            return 0
        if all(s.req[ri] <= n[j] + EPS for j, ri in enumerate(managed)):
            return 1
        return 2

    # -- step 2: order -------------------------------------------------------------------
    def order(self) -> Iterable[Job]:
        pend = self.snap.pending
        if self.policy.strict_fifo:
            yield from sorted(pend, key=lambda j: (j.submit_time, j.id))
            return
        queues: dict[str, list[Job]] = {}
        for j in sorted(pend, key=lambda j: (j.workload_class.rank, -j.priority, j.submit_time, j.id)):
            queues.setdefault(j.project, []).append(j)
        heap = []
        pos = {pid: 0 for pid in queues}
        shares = {pid: self.share(pid) for pid in queues}
        for pid, q in queues.items():
            j = q[0]
            heap.append((j.workload_class.rank, -j.priority, self.tier(j, self.shape(j)), shares[pid],
                         j.submit_time, j.id, pid))
        heapq.heapify(heap)
        self._dirty: set[str] = set()
        while heap:
            item = heapq.heappop(heap)
            pid = item[-1]
            q = queues[pid]
            j = q[pos[pid]]
            yield j
            pos[pid] += 1
            if pid in self._dirty:  # the project was admitted something: its share/tier moved
                self._dirty.discard(pid)
                shares[pid] = self.share(pid)
            if pos[pid] < len(q):
                nj = q[pos[pid]]
                heapq.heappush(heap, (nj.workload_class.rank, -nj.priority, self.tier(nj, self.shape(nj)),
                                      shares[pid], nj.submit_time, nj.id, pid))

    # -- step 3..6 -----------------------------------------------------------------------
    def run(self) -> CycleResult:
        policy = self.policy
        fifo = policy.strict_fifo
        blocked = False  # fifo head-of-line
        cap_left = policy.max_admissions
        position = 0
        for job in self.order():
            position += 1
            if blocked or (cap_left is not None and cap_left <= 0):
                self.wait(job, ReasonCode.WAITING_FOR_HIGHER_PRIORITY, {}, position)
                continue
            ok = self.schedule(job, position)
            if ok:
                if cap_left is not None:
                    cap_left -= 1
            elif fifo and self.pending[job.id].code in (ReasonCode.NO_CAPACITY, ReasonCode.FRAGMENTED):
                blocked = True
        stats = CycleStats(len(self.snap.pending), len(self.admissions), len(self.preemptions), len(self.pending))
        return CycleResult(tuple(self.admissions), tuple(self.preemptions), self.pending, stats)

    def wait(self, job: Job, code: ReasonCode, details: dict, position: int, est: float | None = None) -> None:
        if self.explain:
            details.setdefault("requested", int(job.total.gpus))
            self.pending[job.id] = explained(code, details, position, est)
        else:
            self.pending[job.id] = bare(code, position)

    def schedule(self, job: Job, position: int) -> bool:
        """Try to admit one job; on failure record its single pending reason. Returns admitted."""
        s = self.shape(job)
        fifo = self.policy.strict_fifo
        if s.never or (s.model_missing and not fifo):
            if s.model_missing:
                return self.wait(job, ReasonCode.GPU_MODEL_UNAVAILABLE, {"gpu_models": job.gpu_models}, position)
            return self.wait(job, ReasonCode.NEVER_FITS, {"per_worker": s.g, "largest_node": s.largest}, position)
        fx_ready = [fid for fid in s.fids if self.world.flavors[fid].any_ready]
        if not fx_ready:
            if job.gpu_models:
                return self.wait(job, ReasonCode.GPU_MODEL_UNAVAILABLE, {"gpu_models": job.gpu_models}, position)
            return self.wait(job, ReasonCode.NO_CAPACITY, self.capacity_details(s), position)
        pid = job.project
        dept = self.dept_of.get(pid, "")
        gpu_h = s.req[0] * job.max_runtime_s / 3600.0
        budget_owners = tuple(o for o in (pid, dept) if o in self.ledger.budget)
        if budget_owners:
            bc = self.ledger.check(budget_owners, Amount.of(gpu_h))
            if not bc.ok:
                return self.wait(job, ReasonCode.BUDGET_EXHAUSTED, {
                    "owner": bc.owner, "budget": bc.budget.value, "spent": bc.spent.value,
                    "reserved": bc.reserved.value, "left": bc.left.value, "requested_gpu_hours": gpu_h}, position)
        quota_fail = None
        reclaim: list[tuple[int, bool]] = []  # (fid, borrowing) where quota allows only by reclaiming
        capacity_fids: list[int] = []  # quota ok, no room
        chosen = None
        for fid in fx_ready:
            fx = self.world.flavors[fid]
            lent_pool = job.workload_class is WorkloadClass.INNOVATION and \
                fx.pool.workload_class is WorkloadClass.OPERATION
            if fifo:
                verdict, borrowing = Verdict.OK, lent_pool
            else:
                rec = self.reclaimable(job, fid)
                verdict, borrowing, within_g, level, ri = self.qv.check(pid, fid, s.req, rec)
                borrowing = borrowing or lent_pool
                if verdict is Verdict.LIMIT:
                    quota_fail = quota_fail or (fid, level, ri)
                    continue
                if verdict is Verdict.RECLAIM:
                    reclaim.append((fid, borrowing))
                    continue
            placed = self.try_place(job, s, fid)
            if placed is None:
                capacity_fids.append(fid)
                reclaim.append((fid, borrowing))
                continue
            if chosen is None or (chosen[1] and not borrowing):
                chosen = (fid, borrowing, placed)
            if not borrowing:
                break
        if chosen is not None:
            self.admit(job, s, *chosen)
            return True
        # -- step 4: preemption --------------------------------------------------------------
        if self.policy.preemption and not fifo and reclaim:
            got = pre.try_preempt(self, job, s, reclaim)
            if got:
                return False
        # -- step 5: backfill reservation for the first capacity-blocked job of a pool ---------
        est = None
        if capacity_fids and self.policy.backfill and not fifo:
            est = bf.reserve_or_estimate(self, job, s, capacity_fids)
        # -- step 6: the reason ---------------------------------------------------------------
        if capacity_fids or (reclaim and quota_fail is None):
            fids = capacity_fids or [f for f, _ in reclaim]
            if self.reservations.blocks(self, s, fids):
                return self.wait(job, ReasonCode.BACKFILL_RESERVATION, self.capacity_details(s, fids), position, est)
            d = self.capacity_details(s, fids)
            code = ReasonCode.FRAGMENTED if d["free"] >= s.req[0] and s.req[0] > 0 else ReasonCode.NO_CAPACITY
            return self.wait(job, code, d, position, est)
        if quota_fail is not None:
            return self.wait(job, ReasonCode.QUOTA_LIMIT, self.quota_details(job, s, *quota_fail), position)
        return self.wait(job, ReasonCode.NO_CAPACITY, self.capacity_details(s), position, est)

    def reclaimable(self, job: Job, fid: int) -> tuple[float, float, float] | None:
        """Capacity this job could take back by preemption (None: it may not reclaim)."""
        if not self.policy.preemption:
            return None
        fx = self.world.flavors[fid]
        if job.workload_class is WorkloadClass.OPERATION and fx.pool.workload_class is WorkloadClass.OPERATION:
            return tuple(a + b for a, b in zip(self.borrowed[fid], self.lent[fid]))
        return tuple(self.borrowed[fid])

    def try_place(self, job: Job, s: Shape, fid: int):
        fx = self.world.flavors[fid]
        if fx.max_free_g() < s.g or fx.total_free_g < s.req[0]:
            return None
        allowed = self.reservations.allowed_fn(self, job, fid)
        return self.world.place(fid, s.w, s.g, s.c, s.m, allowed)

    def admit(self, job: Job, s: Shape, fid: int, borrowing: bool, placed: list[tuple[int, int]]) -> None:
        w = self.world
        placements = []
        rank = 0
        for i, k in placed:
            for _ in range(k):
                ids = w.take(i, s.g, s.c, s.m)
                placements.append(Placement(rank, w.nodes[i].id, ids))
                rank += 1
        fx = w.flavors[fid]
        self.admissions.append(Admission(job.id, fx.flavor, tuple(placements), borrowing))
        self.qv.add(job.project, fid, s.req)
        if borrowing:
            pass  # borrowed-this-cycle capacity is not reclaimable until it is running
        owners = tuple(o for o in (job.project, self.dept_of.get(job.project, "")) if o in self.ledger.budget)
        if owners:
            self.ledger.reserve(owners, Amount.of(s.req[0] * job.max_runtime_s / 3600.0))
        a = self.alloc.setdefault(job.project, [0.0, 0.0, 0.0])
        for k in range(3):
            a[k] += s.req[k]
        if hasattr(self, "_dirty"):
            self._dirty.add(job.project)
        self.started.append((self.now + job.max_runtime_s, job.id, fid, tuple(placed)))

    # -- details for reasons ----------------------------------------------------------------
    def capacity_details(self, s: Shape, fids: list[int] | None = None) -> dict:
        if not self.explain:
            return {"free": sum(self.world.flavors[f].total_free_g for f in (fids or s.fids))}
        fl = [self.world.flavors[f] for f in (fids or s.fids)]
        free = sum(fx.total_free_g for fx in fl if fx.any_ready)
        ready = sum(fx.ready_cap_g for fx in fl)
        return {"requested": int(s.req[0]), "per_worker": s.g, "workers": s.w, "free": free,
                "in_use": max(0, ready - free), "flavors": [f"{fx.flavor.pool}/{fx.flavor.gpu_model}" for fx in fl]}

    def quota_details(self, job: Job, s: Shape, fid: int, level: str, ri: int) -> dict:
        if not self.explain:
            return {}
        fx = self.world.flavors[fid]
        r = RESOURCES[ri]
        key = (fx.flavor, r)
        owner = self.dept_of.get(job.project, "") if level == "department" else job.project
        c = self.tree.check(job.project, key, Amount.of(s.req[ri]))
        spec = self.tree.department_spec(owner, key) if level == "department" else self.tree.project_spec(owner, key)
        return {"level": level, "owner": owner, "project": job.project, "resource": r if r != "gpus" else "GPUs",
                "flavor": f"{fx.flavor.pool}/{fx.flavor.gpu_model}", "requested": s.req[ri],
                "in_use": self.tree.used(owner, key).value, "nominal": spec.nominal.value,
                "limit": spec.limit.value, "available": c.available.value}


__all__ = ["run_cycle", "Outcome", "Running"]
