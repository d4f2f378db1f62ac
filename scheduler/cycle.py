"""One scheduling cycle, as numbered steps over a snapshot (Kueue style).

`run_cycle(snapshot, now, policy)` is a pure function: it reads no clock and returns
decisions (admissions with placements, preemptions, one pending reason per other job).

Steps:
 1. Index (scheduler.index): node free resources and GPU indices from running placements;
    quota usage bubbled up the tree; budget reservations; fair-share allocation.
 2. Order pending jobs (scheduler.ordering): class (operation first), priority, quota tier (within guarantee, then
    within nominal, then borrowing: Kueue orders non-borrowing first, and it is what makes a
    guarantee hold within the cycle), fair share (weighted dominant share of allocation plus
    decayed past usage, updated as the cycle admits), submit time, id.
    `strict_fifo`: submit time then id, head-of-line blocking, no quota/backfill/preemption.
 3. For each job: budget, hard quota limits, a cheap capacity test on the per-flavor index,
    then lending rules, then gang placement on its candidate flavors (non-borrowing first).
 4. Preemption when quota allows but capacity does not (scheduler.preemption).
 5. Backfill: the first capacity-blocked job of each pool gets a reservation at its earliest
    start; later jobs start only if they do not delay it (scheduler.backfill).
 6. Exactly one pending reason per job that is not admitted (scheduler.reasons).

Codes: a job blocked by physical capacity gets NO_CAPACITY / FRAGMENTED even when it would also
be borrowing; QUOTA_LIMIT means a hard limit, or idle capacity that exists but is not lendable
to it (others' guarantees). Per flavor, outcomes are ranked with the ordered `Outcome` enum
(FIT > PREEMPT > NO_FIT), a non-borrowing fit before a borrowing one.

Cost (a deep queue is the normal case): a job whose flavors have no room skips straight to
steps 4-6 (`no_room`); outcomes of jobs that were not admitted are memoised per (project,
shape) while the state epoch is unchanged; quota headroom is a cached float view
(scheduler.quota_view); preemption searches are bounded (scheduler.preemption).

Determinism: every sort uses total keys ending in ids; no set or dict order leaks into output.
"""

from __future__ import annotations

import gc
from typing import Iterator

from quotas.amount import Amount
from quotas.fairshare import dominant_share, past_equivalent
from scheduler import backfill as bf
from scheduler import eta
from scheduler import ordering
from scheduler import preemption as pre
from scheduler.model import (
    POLICIES, RESOURCES, Admission, CycleResult, CycleStats, Job, Outcome, PendingReason, Placement,
    Policy, Preemption, ReasonCode, Snapshot, WorkloadClass,
)
from scheduler.binding import UNITS, Binding, binding
from scheduler.index import Run, Shape, index_snapshot
from scheduler.reasons import bare, explained, message
from scheduler.steps import Blocked, Deferred, QuotaFail, Reclaim, Started, failed_at

DEFAULT_POLICY = POLICIES["fair-backfill-preempt"]
_OP = WorkloadClass.OPERATION
EPS = 1e-9


def run_cycle(snapshot: Snapshot, now: float, policy: Policy = DEFAULT_POLICY) -> CycleResult:
    """Decide admissions, preemptions and pending reasons for one snapshot at time `now`.

    The cyclic garbage collector is paused for the call (and restored after): a big cycle
    allocates in bursts, and each generation-2 collection re-walks every object of the
    snapshot, which measured 30-45 % of a 10k-pending cycle. Reference counting still frees
    everything; the few cycles (undo closures) are collected once it is re-enabled.
    """
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        return _Cycle(snapshot, now, policy).run()
    finally:
        if enabled:
            gc.enable()


class _Cycle:
    def __init__(self, snap: Snapshot, now: float, policy: Policy) -> None:
        self.snap, self.now, self.policy = snap, now, policy
        self.explain = policy.explain
        index_snapshot(self)  # step 1
        self.lend_all = policy.lend_max_gpu_hours == float("inf")
        self.shapes: dict[tuple, Shape] = {}
        self.admissions: list[Admission] = []
        self.preemptions: list[Preemption] = []
        self.pending: dict[str, PendingReason] = {}
        self.victims: set[str] = set()
        self.started: list[Started] = []
        self.reservations = bf.Reservations()
        self.preempt_failed: dict[tuple, tuple] = {}
        self.ranked: dict[int, list[Run]] = {}
        self.bounds: dict[int, list[float]] = {}
        self.run_flags: dict[str, tuple[bool, bool, bool]] = {}
        self.guard_rooms: dict[int, tuple[list[float], list[float]]] = {}  # preemption._guarded_room
        self.cheapest_lent: dict[int, float] = {}  # preemption.cheap_reclaim
        self.release_profiles: dict[int, tuple[list[float], list[float]]] = {}  # preemption._natural_wait
        self.guarded: dict[tuple[int, int], tuple] = {}  # preemption._guarded
        self.preemptors: set[str] = set()  # projects that got a PREEMPTING job this cycle
        self.to_estimate: list[Deferred] = []  # capacity-blocked jobs, explained at the end
        self.labels = [f"{fx.flavor.pool}/{fx.flavor.gpu_model}" for fx in self.world.flavors]
        self._dirty: set[str] = set()
        self.budget_owners: dict[str, tuple[str, ...]] = {}
        self.memo: dict[tuple, tuple[int, Blocked]] = {}  # (epoch, outcome) per (project, shape)
        self.epoch = 0  # bumped by every change of the working state that decisions read
        self.outcome: Blocked | None = None
        self.runtime_dependent = False
        self._left: dict[str, float] = {}
        self._cap_details: dict[tuple, tuple[int, dict]] = {}
        self.bindings: dict[tuple, tuple[int, Binding]] = {}  # (epoch, binding) per (shape, flavor)
        self.capacity_blocked = False
        self.aged_before = float("-inf")  # ordering: jobs submitted at or before this are aged

    # -- helpers --------------------------------------------------------------------------
    def shape(self, job: Job) -> Shape:
        pw = job.per_worker
        # the class as a bool: a str-Enum hashes through Python code, a bool in C
        key = (job.workload_class is _OP, job.pool, job.gpu_models, job.workers, pw.gpus, pw.cpus, pw.memory_gb,
               self.may_borrow(job))
        if job.nodes:  # only where its data is (a distinct shape)
            key += (job.nodes,)
        if self.world.dedicated:  # nodes dedicated to images: only its image's (or general) nodes
            key += ("image", job.image)
        s = self.shapes.get(key)
        if s is None:
            s = self.shapes[key] = Shape(self.world, job, key[7])
        return s

    def expected_runtime(self, job: Job) -> float:
        """max_runtime_s x the project's real/requested ratio (at most 1): what backfill and
        estimated starts plan with. Budgets never use it."""
        p = self.projects.get(job.project)
        if p is not None and p.runtime_ratio < 1.0:
            return job.max_runtime_s * max(p.runtime_ratio, 0.0)
        return job.max_runtime_s

    def may_borrow(self, job: Job) -> bool:
        """The shape key's borrowing flag: for an innovation job, may it run on lent operation
        capacity (`may_borrow_lent`); for an operation job, may it overflow into innovation
        pools when its operation pools are full of operation work (`Policy.operation_overflow`)."""
        if job.workload_class is _OP:
            return (self.policy.operation_overflow and job.preemptible and not job.service and
                    job.workers * job.per_worker.gpus * self.expected_runtime(job)
                    <= self.policy.lend_max_gpu_hours * 3600.0)
        return self.lend_all or self.may_borrow_lent(job)

    def overflow_room(self, job: Job, s: Shape, roomy: list[int]) -> list[int]:
        """An operation job's flavors with room, less the innovation pools' while one of its
        operation flavors can be freed cheaply by reclaiming capacity lent to innovation.

        Both start the operation job within this cycle; they differ in what they cost. A
        reclaim throws away the victims' work since their start (or checkpoint); overflow
        uses idle innovation capacity for the operation job's expected runtime and throws
        nothing away. So: reclaim while the cheapest lent job loses no more GPU-seconds than
        the operation job will use, else overflow; and overflow when operation work fills
        the operation pool (a burst larger than the pool) or this project's preemption of
        the cycle is spent."""
        flavors, need = self.world.flavors, s.req[0]
        budget = need * self.expected_runtime(job)
        if self.policy.preemption and job.project not in self.preemptors and any(
                flavors[f].pool.workload_class is _OP and pre.cheap_reclaim(self, f, need, budget)
                for f in s.ready_fids):
            return [f for f in roomy if flavors[f].pool.workload_class is _OP]
        return roomy

    def may_borrow_lent(self, job: Job) -> bool:
        """May this job run on operation-pool capacity lent to innovation? Lent capacity is
        reclaimed at any moment, so only work that loses little goes there: checkpointable
        jobs and jobs expected to use at most `Policy.lend_max_gpu_hours` (what a preemption
        near their end would throw away)."""
        if job.checkpointable or job.workload_class is _OP:
            return True
        gpus = job.workers * job.per_worker.gpus
        return gpus * self.expected_runtime(job) <= self.policy.lend_max_gpu_hours * 3600.0

    def share(self, pid: str) -> float:
        """Weighted dominant share: (allocation + decayed past GPU use) / capacity / weight."""
        if not self.policy.fair_share:
            return 0.0
        a = self.alloc.get(pid, (0.0, 0.0, 0.0))
        p = self.projects.get(pid)
        d = self.departments.get(p.department) if p else None
        weight = (p.weight if p else 1.0) * (d.weight if d else 1.0)
        past = past_equivalent(p.decayed_usage_gpu_s, self.policy.fair_share_half_life_s) if p else 0.0
        return dominant_share({"gpus": a[0] + past, "cpus": a[1], "memory_gb": a[2]}, self.cap, weight)

    def tier(self, job: Job, s: Shape) -> int:
        """0 within guarantee, 1 within nominal (or unmanaged), 2 borrowing, on its first flavor."""
        if not s.ready_fids:
            return 2
        if not self.qv.managed[s.ready_fids[0]]:
            return 1
        lim = self.qv.limits(job.project, s.ready_fids[0], s.req)
        return 0 if lim.within_guarantee else 1 if lim.within_nominal else 2

    # -- step 2: order -------------------------------------------------------------------
    def order(self) -> Iterator[tuple[Job, Shape]]:
        """Jobs in cycle order, with their shapes (scheduler.ordering)."""
        return ordering.order(self)

    # -- steps 3..6 ----------------------------------------------------------------------
    def run(self) -> CycleResult:
        policy = self.policy
        fifo = policy.strict_fifo
        blocked = False  # fifo head-of-line
        cap_left = policy.max_admissions
        position = 0
        for job, s in self.order():
            position += 1
            if blocked or (cap_left is not None and cap_left <= 0):
                self.wait(job, ReasonCode.WAITING_FOR_HIGHER_PRIORITY, {}, position)
                continue
            self.capacity_blocked = False
            if self.schedule(job, s, position):
                if cap_left is not None:
                    cap_left -= 1
            elif fifo and self.capacity_blocked:
                blocked = True
        if self.explain and self.to_estimate:
            eta.add_estimates(self)
        stats = CycleStats(len(self.snap.pending), len(self.admissions), len(self.preemptions), len(self.pending))
        return CycleResult(tuple(self.admissions), tuple(self.preemptions), self.pending, stats)

    def wait(self, job: Job, code: ReasonCode, details: dict, position: int) -> bool:
        if self.explain:
            details.setdefault("requested", int(job.total.gpus))
            self.pending[job.id] = explained(code, details, position)
        else:
            self.pending[job.id] = bare(code)
        self.outcome = Blocked(code, details)
        return False

    def schedule(self, job: Job, s: Shape, position: int) -> bool:
        """Try to admit one job; on failure record its single pending reason. Returns admitted.

        Outcomes of jobs that were not admitted are memoised per (project, shape) while the
        cycle's state epoch (bumped by every admission, hold, reservation and preemption) is
        unchanged: an identical job meets an identical state, so it gets the same reason
        without repeating quota, placement and preemption work. Decisions that depended on the
        job's runtime (a short job tried against a reservation) are not memoised.
        """
        if s.code is not None:
            return self.static_reason(job, s, position)
        key = (job.project, s, job.priority) if self.policy.priority_preemption else (job.project, s)
        hit = self.memo.get(key)
        if hit is not None and hit[0] == self.epoch and (not self.budget_owners.get(job.project)
                                                         or job.budget_exempt or self.budget_ok(job, s)):
            out = hit[1]
            if self.explain:
                return self.replay(job, s, position, out)
            self.pending[job.id] = bare(out.code)
            if out.fids is not None:
                self.capacity_blocked = True
            return False
        epoch = self.epoch
        self.outcome = None
        self.runtime_dependent = False
        if self._schedule(job, s, position):
            return True
        if self.epoch == epoch and self.outcome is not None and not self.runtime_dependent \
                and self.outcome.code is not ReasonCode.BUDGET_EXHAUSTED:
            self.memo[key] = (epoch, self.outcome)
        return False

    def budget_ok(self, job: Job, s: Shape) -> bool:
        owners = self.budget_owners.get(job.project)
        if not owners:
            return True
        gpu_h = s.req[0] * job.max_runtime_s / 3600.0
        return all(gpu_h <= self.budget_left(o) + EPS for o in owners)

    def replay(self, job: Job, s: Shape, position: int, outcome: Blocked) -> bool:
        code, details = outcome.code, outcome.details
        if outcome.fids is not None:
            self.capacity_blocked = True
            if self.explain:
                self.to_estimate.append((job, s, outcome.fids, code, details, position))
                return False
        elif self.explain:
            # Every job that meets this outcome gets the same sentence (the details are shared
            # and never changed), except the one that says the queue position: built once.
            text = None
            if code is not ReasonCode.WAITING_FOR_HIGHER_PRIORITY:
                text = outcome.text
                if text is None:
                    text = outcome.text = message(code, details, position)
            self.pending[job.id] = explained(code, details, position, text=text)
            return False
        self.pending[job.id] = bare(code)
        return False

    def _schedule(self, job: Job, s: Shape, position: int) -> bool:
        fifo = self.policy.strict_fifo
        pid = job.project
        req = s.req
        owners = self.budget_owners.get(pid)
        if owners is None:
            owners = self.budget_owners[pid] = tuple(
                o for o in (pid, self.dept_of.get(pid, "")) if o in self.ledger.budget)
        if owners and not job.budget_exempt:
            gpu_h = req[0] * job.max_runtime_s / 3600.0
            if any(gpu_h > self.budget_left(o) + EPS for o in owners):
                bc = self.ledger.check(owners, Amount.of(gpu_h))
                if not bc.ok:
                    return self.wait(job, ReasonCode.BUDGET_EXHAUSTED, {
                        "owner": bc.owner, "budget": bc.budget.value, "spent": bc.spent.value,
                        "reserved": bc.reserved.value, "left": bc.left.value,
                        "requested_gpu_hours": gpu_h} if self.explain else {}, position)
        flavors = self.world.flavors
        res = self.reservations
        req0, g = req[0], s.g
        by_fid = res.by_fid
        roomy = []
        for fid in s.ready_fids:
            fx = flavors[fid]
            tf = fx.total_free_g
            if tf >= req0 and fx.max_free >= g:
                roomy.append(fid)
            else:  # res.could_fit, inlined: the reserved GPUs would be enough
                r = by_fid.get(fid)
                if r is not None and tf + r.blocked_g >= req0:
                    roomy.append(fid)
        innovation = job.workload_class is not _OP
        if not innovation and roomy and flavors[roomy[-1]].pool.workload_class is not _OP:
            roomy = self.overflow_room(job, s, roomy)
        if not roomy:
            return self.no_room(job, s, position)
        qv = self.qv
        quota_fail = lend_fail = None
        cap_fids = []
        reclaim: list[Reclaim] = []
        backfill_blocked = False
        chosen = None
        # flavors without room now: only their limits matter, later
        deferred = [fid for fid in s.ready_fids if fid not in roomy] if len(roomy) < len(s.ready_fids) else []
        for fid in roomy:
            fx = flavors[fid]
            borrowing = innovation and fx.pool.workload_class is WorkloadClass.OPERATION
            wg = wn = False
            if not fifo and qv.managed[fid]:
                level, ri, wg, wn, b = qv.limits(pid, fid, req)
                if level:
                    quota_fail = quota_fail or failed_at(fid, level, ri)
                    continue
                borrowing = borrowing or b
                if not wg:
                    ri = qv.lend_fail(pid, fid, req)
                    if ri >= 0:
                        lend_fail = lend_fail or failed_at(fid, "borrow" if not wn else "reserved", ri)
                        reclaim.append((fid, wg, wn))
                        continue
            placed, redo, blocked_by_res = self.try_place(job, s, fid, wg)
            if placed is None:
                backfill_blocked = backfill_blocked or blocked_by_res
                cap_fids.append(fid)
                reclaim.append((fid, wg, wn))
                continue
            if redo is not None:  # a short job slipping in before a reservation
                self.admit(job, s, fid, borrowing, placed)
                redo()
                return True
            # flavors are ranked by (Outcome, not borrowing): a fit beats a fit that borrows
            rank = (Outcome.FIT, not borrowing)
            if chosen is None or rank > chosen[0]:
                chosen = (rank, fid, borrowing, placed)
            if not borrowing:
                break
        if chosen is not None and chosen[0][0] is Outcome.FIT:
            self.admit(job, s, *chosen[1:])
            return True
        return self.blocked(job, s, position, deferred, cap_fids, reclaim, quota_fail or lend_fail, backfill_blocked)

    def capacity_reason(self, job: Job, s: Shape, fids: list[int], position: int, backfill_blocked: bool) -> bool:
        """BACKFILL_RESERVATION, or NO_CAPACITY / FRAGMENTED on the resource that binds
        (scheduler.binding: GPUs, CPUs or memory)."""
        self.capacity_blocked = True
        bd = binding(self, s, fids)
        code = ReasonCode.BACKFILL_RESERVATION if backfill_blocked else bd.code
        if self.explain:  # the reason is built at the end, with its estimated start
            d = self.capacity_details(s, fids, bd)
            self.to_estimate.append((job, s, fids, code, d, position))
        else:
            d = None
            self.pending[job.id] = bare(code)
        self.outcome = Blocked(code, d, fids)
        return False

    def no_room(self, job: Job, s: Shape, position: int) -> bool:
        """Fast path: no candidate flavor has room now, so only preemption could admit the job."""
        return self.blocked(job, s, position, list(s.ready_fids), [], [], None, False)

    def blocked(self, job: Job, s: Shape, position: int, fids: list[int], cap_fids: list[int],
                reclaim: list[Reclaim], quota_fail: QuotaFail | None, backfill_blocked: bool) -> bool:
        """Steps 4-6 for a job that was not admitted; `fids` are flavors without room now.

        For those only the hard limits matter (a limit beats capacity as the reason), and only
        as far as needed: once one flavor is known to be capacity-blocked, a flavor is looked
        at only if a preemption or a reservation could still come from it.
        """
        pid, qv, fifo = job.project, self.qv, self.policy.strict_fifo
        can_preempt = self.policy.preemption and not fifo and pid not in self.preemptors
        want_all = can_preempt or (self.policy.backfill and not fifo and not backfill_blocked and
                                   len(self.reservations.by_pool) < len(self.world.pools_with_nodes))
        skipped = False
        unreserved = self.reservations.unreserved_fids(self) if want_all else ()
        req = s.req
        for fid in fids:
            if cap_fids and (not want_all or (
                    fid not in unreserved and not (can_preempt and pre.may_help(self, job, s, fid)))):
                skipped = True
                continue  # neither a preemption nor a reservation could come from this flavor
            wg = wn = False
            if not fifo and qv.managed[fid]:
                level, ri, wg, wn, _b = qv.limits(pid, fid, req)
                if level:
                    quota_fail = quota_fail or failed_at(fid, level, ri)
                    continue
            cap_fids.append(fid)
            reclaim.append((fid, wg, wn))
        if len(reclaim) > 1 and len(fids) < len(s.ready_fids):
            # (no_room passes every flavor, in order, and then reclaim already follows it)
            order = s.ready_fids
            reclaim.sort(key=lambda t: order.index(t[0]))
        # -- step 4: preemption ----------------------------------------------------------
        if can_preempt and reclaim and pre.try_preempt(self, job, s, reclaim, position) is Outcome.PREEMPT:
            return False
        if cap_fids:
            # -- step 6: the reason (numbers as they are before this job's reservation) --------
            every = cap_fids
            if skipped:  # FRAGMENTED looks at every flavor within limits: few have the GPUs
                flavors = self.world.flavors
                every = cap_fids + [f for f in fids if f not in cap_fids and flavors[f].total_free_g >= s.req[0]
                                    and (fifo or not qv.managed[f] or not qv.limits(pid, f, s.req).level)]
            self.capacity_reason(job, s, every, position, backfill_blocked)
            # -- step 5: backfill reservation for the first capacity-blocked job of a pool -----
            res = self.reservations
            # (once every pool with nodes holds a reservation, reserve() could only skip)
            if self.policy.backfill and not fifo and not backfill_blocked and \
                    len(res.by_pool) < len(self.world.pools_with_nodes) and \
                    (self.now - job.submit_time >= self.policy.reserve_after_s or
                     (self.policy.reserve_aged and job.submit_time <= self.aged_before)):
                res.reserve(self, job, s, cap_fids)
            return False
        if quota_fail is not None:
            return self.wait(job, ReasonCode.QUOTA_LIMIT, self.quota_details(job, s, *quota_fail), position)
        return self.wait(job, ReasonCode.NO_CAPACITY, self.capacity_details(s, list(s.ready_fids)), position)

    def budget_left(self, owner: str) -> float:
        """Cached float of ledger.left(owner); dropped whenever the ledger reserves."""
        v = self._left.get(owner)
        if v is None:
            v = self._left[owner] = self.ledger.left(owner).value
        return v

    def static_reason(self, job: Job, s: Shape, position: int) -> bool:
        code = s.code
        if code is ReasonCode.GPU_MODEL_UNAVAILABLE:
            return self.wait(job, code, {"gpu_models": job.gpu_models}, position)
        if code is ReasonCode.DATA_UNAVAILABLE:
            return self.wait(job, code, {"nodes": sorted(job.nodes)}, position)
        if code is ReasonCode.NEVER_FITS:
            return self.wait(job, code, {"per_worker": s.g, "largest_node": s.largest}, position)
        return self.wait(job, code, self.capacity_details(s, list(s.fids)), position)

    def try_place(self, job: Job, s: Shape, fid: int, within_guarantee: bool = False):
        """(placement or None, redo after admitting or None, blocked only by a reservation).

        A job that ends before a reservation starts, or runs within its project's guarantee
        (a guarantee outranks a backfill reservation), may use the reserved resources.
        """
        w = self.world
        fx = w.flavors[fid]
        if fx.total_free_g >= s.req[0] and fx.max_free >= s.g:
            placed = w.place(fid, s.w, s.g, s.c, s.m, s.allowed)
            if placed is not None:
                return placed, None, False
        res = self.reservations.by_fid.get(fid)
        if res is None:
            return None, None, False
        self.runtime_dependent = True
        redo = res.lift(w)
        placed = w.place(fid, s.w, s.g, s.c, s.m, s.allowed) if fx.max_free >= s.g else None
        if placed is not None and (within_guarantee or self.now + self.expected_runtime(job) <= res.start + EPS):
            return placed, redo, False
        redo()
        return None, None, placed is not None

    def admit(self, job: Job, s: Shape, fid: int, borrowing: bool, placed: list[tuple[int, int]]) -> None:
        w = self.world
        placements = []
        for i, k in placed:
            for _ in range(k):
                placements.append(Placement(len(placements), w.nodes[i].id, w.take(i, s.g, s.c, s.m)))
        self.admissions.append(Admission(job.id, w.flavors[fid].flavor, tuple(placements), borrowing))
        self.qv.add(job.project, fid, s.req)
        owners = tuple(o for o in (job.project, self.dept_of.get(job.project, "")) if o in self.ledger.budget)
        if owners:
            self.ledger.reserve(owners, Amount.of(s.req[0] * job.max_runtime_s / 3600.0))
            for o in owners:
                self._left.pop(o, None)
        a = self.alloc.setdefault(job.project, [0.0, 0.0, 0.0])
        for k in range(3):
            a[k] += s.req[k]
        self._dirty.add(job.project)
        self.epoch += 1
        self.started.append(Started(self.now + self.expected_runtime(job), job.id, fid, list(placed), s))

    # -- details for reasons ----------------------------------------------------------------
    def capacity_details(self, s: Shape, fids: list[int], bd: Binding | None = None) -> dict:
        """Numbers for a capacity reason; one shared (read-only) dict per (shape, flavors)
        while the state epoch is unchanged, so identical jobs share details, estimate and text.
        GPU numbers always; with `resource` and `binding_*` numbers when CPUs or memory bind."""
        key = (s, tuple(fids))
        hit = self._cap_details.get(key)
        if hit is not None and hit[0] == self.epoch:
            return hit[1]
        fl = [self.world.flavors[f] for f in fids]
        if s.only is None:
            free = sum(fx.total_free_g for fx in fl if fx.any_ready)
            ready = sum(fx.ready_cap_g for fx in fl) if self.explain else 0
        else:  # only the nodes this job may use (its data's, its image's)
            ws = [self.world.nodes[i] for fx in fl for i in fx.nodes if s.usable(self.world.nodes[i])]
            free, ready = sum(w.free_g for w in ws), sum(w.cap_g for w in ws)
        if not self.explain:
            return {"free": free}
        d = {"requested": int(s.req[0]), "per_worker": s.g, "workers": s.w, "free": free,
             "in_use": max(0, ready - free), "flavors": [self.labels[f] for f in fids]}
        if bd is not None and bd.resource:
            d.update(resource=UNITS[bd.resource], binding_requested=bd.requested,
                     binding_per_worker=bd.per_worker, binding_free=round(bd.free, 3),
                     binding_largest_free=round(bd.largest_free, 3))
        self._cap_details[key] = (self.epoch, d)
        return d

    def quota_details(self, job: Job, s: Shape, fid: int, level: str, ri: int) -> dict:
        if not self.explain:
            return {}
        fx = self.world.flavors[fid]
        res = RESOURCES[ri]
        key = (self.qv.flavors[fid], res)
        dept = level == "department"
        owner = self.dept_of.get(job.project, "") if dept else job.project
        spec = self.tree.department_spec(owner, key) if dept else self.tree.project_spec(owner, key)
        used = self.tree.used(owner, key)
        avail = self.tree.lendable_to(job.project, key) if level in ("borrow", "reserved") else \
            (spec.limit - used).clamp0()
        return {"level": level, "owner": owner, "project": job.project, "resource": "GPUs" if res == "gpus" else res,
                "flavor": f"{fx.flavor.pool}/{fx.flavor.gpu_model}", "requested": s.req[ri],
                "in_use": used.value, "nominal": spec.nominal.value, "limit": spec.limit.value,
                "available": avail.value}


__all__ = ["run_cycle", "DEFAULT_POLICY"]
