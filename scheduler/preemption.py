"""Preemption: pick a minimal set of running jobs whose stopping lets a pending job start.

Kinds, in the order a victim is considered for them:
- RECLAIM_OPERATION: an operation job takes back operation-pool capacity lent to innovation.
- RECLAIM_NOMINAL: a job within its project's nominal (or guarantee) takes back capacity from
  projects running above their nominal (a job within its own guarantee may also take from
  projects above their guarantee: guarantees are reclaimed within one cycle).
- PRIORITY (policy.priority_preemption): within one project, higher priority preempts lower.

Never: a job marked not preemptible (`Job.preemptible`); a victim whose removal would take its project below its guarantee (same-project
priority preemption excepted: it only reorders the project's own share); an operation victim
for an innovation job; a victim already chosen this cycle.

Selection (Kueue's minimalPreemptions): candidates sorted by preference (project most over its
nominal, lowest priority, least work lost = now - start, id) are released one by one on the
working state until the gang fits (placement and quota both); then each chosen victim is put
back, latest first, and dropped from the set if the job still fits without it. So the set
really frees space on the right nodes, and no victim is superfluous. Every release is undone
afterwards: victims keep their resources this cycle (nobody else may use them), and the part
of the preemptor's future placement that is free now is held for it.

Single-worker jobs search node by node: candidates are walked in preference order and the
first node whose victims free enough wins, then victims that node does not need are dropped.
Gangs release candidates in preference order until the gang places, then drop what is not
needed. Quota is checked once, on the final set, as a what-if with undo.

Bounds (performance): one preemptor per project per cycle (Kueue considers one head per
ClusterQueue); a failed search is remembered per (project, flavor, kind) with its size, and a
request at least as big fails at once, because the state only gets tighter within a cycle.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Iterator, NamedTuple

from quotas.amount import round9
from quotas.tree import Verdict
from scheduler.backfill import release_profile
from scheduler.model import RESOURCES, Outcome, Preemption, ReasonCode, WorkloadClass
from scheduler.quota_view import DEPT_NOMINAL, GUARANTEE, NOMINAL
from scheduler.reasons import bare, explained

if TYPE_CHECKING:  # pragma: no cover
    from scheduler.cycle import Run, Shape, _Cycle
    from scheduler.model import Job
    from scheduler.steps import Reclaim

MAX_CANDIDATES = 512
EPS = 1e-9



class Found(NamedTuple):
    """A successful victim search: (run, kind) per victim, sorted by id, and the placement."""

    victims: list[tuple["Run", str]]
    placed: list[tuple[int, int]]  # (node index, workers)


_WORDS = {
    "RECLAIM_OPERATION": "operation work takes back operation-pool capacity that was lent to innovation jobs",
    "RECLAIM_NOMINAL": "project {p} takes back capacity within its quota that was lent to projects above theirs",
    "PRIORITY": "a higher-priority job of the same project needs the capacity",
}
_UNITS = ("GPUs", "CPUs", "GB of memory")


def _victim_message(cyc: "_Cycle", job: "Job", s: "Shape", r: "Run", kind: str) -> str:
    """One sentence: why the victim stops, and on which resource and flavor it was borrowing
    (its project's usage against its nominal there), and the work it loses."""
    ri = need_index(s)
    unit = _UNITS[ri]
    flavor = cyc.labels[r.fid]
    text = f"Job {r.job.id} is stopped because " + _WORDS[kind].format(p=job.project)
    if kind == "RECLAIM_OPERATION":
        text += f": it was borrowing {_num(r.req[ri])} {unit} of the operation pool ({flavor})"
    elif kind == "RECLAIM_NOMINAL":
        key = (cyc.qv.flavors[r.fid], RESOURCES[ri])
        q = r.job.project
        used = cyc.tree.used(q, key).value
        nominal = cyc.tree.project_spec(q, key).nominal.value
        text += (f": project {q} was borrowing {unit} on {flavor} ({_num(used)} in use, nominal "
                 f"{_num(nominal)}) and job {job.id} needs {_num(s.req[ri])} {unit} there")
    lost = cyc.now - r.at_risk
    text += (f"; it resumes from its checkpoint and loses {_num(lost / 60.0)} min of work." if r.job.checkpointable
             else f"; it loses {_num(lost / 60.0)} min of work.")
    return text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def try_preempt(cyc: "_Cycle", job: "Job", s: "Shape", reclaim: list["Reclaim"],
                position: int) -> Outcome:
    """Issue preemptions for `job` if some flavor can be freed: Outcome.PREEMPT when it did,
    Outcome.NO_FIT otherwise (flavors in `reclaim` order, the first that frees wins)."""
    pid = job.project
    if pid in cyc.preemptors:
        return Outcome.NO_FIT
    op = job.workload_class is WorkloadClass.OPERATION
    policy = cyc.policy
    prio = policy.priority_preemption
    # hysteresis: an innovation job reclaims its nominal only once its demand has persisted
    patient = not op and cyc.now - job.submit_time < policy.reclaim_after_s
    gpu_need = s.req[0] > 0
    for fid, wg, wn in reclaim:
        fx = cyc.world.flavors[fid]
        op_reclaim = op and fx.pool.workload_class is WorkloadClass.OPERATION
        if wn and not wg and not op and (patient or fx.pool.name in cyc.reservations.by_pool):
            # not yet (hysteresis), or futile: a job ahead in the order holds this pool's
            # reservation and would take the capacity freed, and the victims would be lost work
            wn = False
        if not (op_reclaim or wn or wg or prio):
            continue
        if not prio and gpu_need:
            b = _bounds(cyc, fid)
            if wn and not wg and not op:  # guarded: only victims the work-aware rules allow
                room = _guarded_room(cyc, fid, _max_loss(cyc, job, s, fid))
            else:
                room = (b[0] if op_reclaim else 0.0) + (b[2] if wg else b[1] if wn else 0.0)
            if wg and fid in cyc.reservations.by_fid:
                room += cyc.reservations.by_fid[fid].blocked_g
            if room <= 0 or fx.total_free_g + room < s.req[0]:
                continue  # not enough preemptible GPUs in this flavor, whatever the search
        memo = (pid, fid, op_reclaim, wg, wn, job.priority if prio else 0)
        failed = cyc.preempt_failed.get(memo)
        if failed is not None and all(a >= b for a, b in zip((s.g, s.c, s.m) + s.req, failed)):
            continue  # something no bigger already failed, and the state only got tighter
        res = cyc.reservations.by_fid.get(fid) if wg else None
        redo = res.lift(cyc.world) if res is not None else None  # a guarantee outranks a reservation
        found = _search(cyc, job, s, fid, op_reclaim, wg, wn, prio)
        if found is not None:
            _issue(cyc, job, s, fid, found.victims, found.placed, position)
        if redo is not None:
            redo()
        if found is not None:
            return Outcome.PREEMPT
        if failed is None or all(a <= b for a, b in zip((s.g, s.c, s.m) + s.req, failed)):
            cyc.preempt_failed[memo] = (s.g, s.c, s.m) + s.req
    return Outcome.NO_FIT


def may_help(cyc: "_Cycle", job: "Job", s: "Shape", fid: int) -> bool:
    """Cheap necessary condition for a preemption on flavor fid (before any quota lookup)."""
    if cyc.policy.priority_preemption or not s.req[0]:
        return True
    b = _bounds(cyc, fid)
    room = max(b[2], b[0] if job.workload_class is WorkloadClass.OPERATION else 0.0)
    return room > 0 and cyc.world.flavors[fid].total_free_g + room >= s.req[0]


def cheap_reclaim(cyc: "_Cycle", fid: int, need: float, budget_gpu_s: float) -> bool:
    """Could operation free `need` GPUs of flavor fid by reclaiming lent capacity, when the
    cheapest lent job loses at most `budget_gpu_s` GPU-seconds of work? (Operation reclaim
    takes the least work at risk first, so if even that loses more, every set does.)"""
    b = _bounds(cyc, fid)
    if b[0] <= 0 or cyc.world.flavors[fid].total_free_g + b[0] < need:
        return False
    cheapest = cyc.cheapest_lent.get(fid)
    if cheapest is None:
        now, flags = cyc.now, cyc.run_flags
        cheapest = cyc.cheapest_lent[fid] = min(
            ((now - r.at_risk) * r.req[0] for r in cyc.runs_by_fid.get(fid, ())
             if flags.get(r.job.id, _NO)[0]), default=float("inf"))
    return cheapest <= budget_gpu_s


def _bounds(cyc: "_Cycle", fid: int) -> list[float]:
    """Upper bounds of preemptible GPUs in a flavor: [lent to innovation on an operation pool,
    over nominal or borrowing, over guarantee]. Computed once; victims are subtracted."""
    got = cyc.bounds.get(fid)
    if got is None:
        got = cyc.bounds[fid] = [0.0, 0.0, 0.0]
        qv = cyc.qv
        gi = 0 in qv.managed[fid]
        j = qv.managed[fid].index(0) if gi else -1
        op_pool = cyc.world.flavors[fid].pool.workload_class is WorkloadClass.OPERATION
        for r in cyc.runs_by_fid.get(fid, ()):
            rec = qv.record(r.job.project, fid) if gi else None
            g_room, n_room = (rec[GUARANTEE][j], rec[NOMINAL][j]) if rec else (-1.0, -1.0)
            flags = (op_pool and r.job.workload_class is WorkloadClass.INNOVATION and g_room < -EPS,
                     g_room < -EPS and (n_room < -EPS or r.borrowing), g_room < -EPS)
            cyc.run_flags[r.job.id] = flags
            for k in range(3):
                if flags[k]:
                    got[k] += r.req[0]
    return got


def need_index(s: "Shape") -> int:
    """The resource a preemptor needs, as an index into RESOURCES: GPUs when it asks for any,
    else CPUs, else memory. Borrowing is judged on that resource."""
    return 0 if s.req[0] > 0 else 1 if s.req[1] > 0 else 2


def _guarded_room(cyc: "_Cycle", fid: int, waited: float) -> float:
    """The GPUs an innovation nominal reclaim may free in flavor fid for a preemptor that has
    waited `waited` s: borrowing innovation runs past the minimum runtime, not started aged,
    whose work at risk is within the wait. Lets a hopeless search be skipped before it walks
    every running job (computed once per flavor, then a bisect). Like `_bounds` it reads the
    borrowing flags of the cycle's start: a project pushed over its nominal by this cycle's
    admissions is not counted (a bound for the snapshot, not for the working state)."""
    got = cyc.guard_rooms.get(fid)
    if got is None:
        pol, now = cyc.policy, cyc.now
        flags = cyc.run_flags
        risks = sorted((now - r.at_risk, r.req[0]) for r in cyc.runs_by_fid.get(fid, ())
                       if r.job.workload_class is WorkloadClass.INNOVATION and flags.get(r.job.id, _NO)[1]
                       and _not_exempt(pol, r.job)
                       and now - r.start >= pol.min_runtime_s and r.start - r.job.submit_time < pol.aging_after_s)
        times, cum, acc = [], [], 0.0
        for t, g in risks:
            acc += g
            times.append(t)
            cum.append(acc)
        got = cyc.guard_rooms[fid] = (times, cum)
    times, cum = got
    if not cum:
        return 0.0
    if not cyc.policy.lost_work_bounded_by_wait:
        return cum[-1]
    k = bisect_right(times, waited)
    return cum[k - 1] if k else 0.0


_NO = (False, False, False)


def _max_loss(cyc: "_Cycle", job: "Job", s: "Shape", fid: int) -> float:
    """The most work (seconds) a victim of this guarded reclaim may lose: what the preemption
    saves the preemptor. Not more than it has waited (`lost_work_bounded_by_wait`), and with
    `loss_bounded_by_release` not more than it would still wait for the flavor's running jobs
    to free its GPUs by themselves (at their expected ends): killing an hour of work for GPUs
    that free in five minutes saves five minutes. Measured on mixed traces, where most jobs
    are short: victims whose GPUs were about to free anyway were most of the lost work of
    innovation reclaim."""
    pol = cyc.policy
    if not pol.lost_work_bounded_by_wait:
        return float("inf")
    loss = cyc.now - job.submit_time
    if pol.loss_bounded_by_release and s.req[0] > 0:
        loss = min(loss, _natural_wait(cyc, fid, s))
    return loss


def _natural_wait(cyc: "_Cycle", fid: int, s: "Shape") -> float:
    """Seconds until flavor fid has `need` GPUs free with no preemption: the GPUs free now
    plus the running jobs' releases at their expected ends (the queue ahead ignored, so a
    lower bound; inf when never). Fragmentation is ignored too: a lower bound again, which
    makes the rule spare victims only when capacity is really near (0 when enough GPUs are free
    in total but scattered: a release soon joins them). inf when the gang's GPUs are free on
    whole nodes now: then CPUs or memory bind, which GPU releases do not tell."""
    got = cyc.release_profiles.get(fid)
    if got is None:
        got = cyc.release_profiles[fid] = release_profile(cyc, fid)
    times, cum = got
    fx = cyc.world.flavors[fid]
    short = s.req[0] - fx.total_free_g
    if short <= EPS:
        b, g = fx.buckets, s.g
        fit = sum(len(b[f]) * (f // g) for f in range(g, len(b))) if g > 0 else 0
        return float("inf") if fit >= s.w else 0.0
    k = bisect_left(cum, short - EPS)
    return times[k] - cyc.now if k < len(times) else float("inf")


def _not_exempt(pol, job: "Job") -> bool:
    """False when the job was preempted often enough to be spared by innovation reclaims."""
    return not pol.reclaim_exempt_after or job.preemptions < pol.reclaim_exempt_after


def _guarded(cyc: "_Cycle", fid: int, ri: int, max_loss: float) -> list["Run"]:
    """The candidates a guarded (innovation nominal) reclaim may stop, in `_ranked` order:
    innovation runs past the minimum runtime, not started aged, at most `max_loss` s of work
    at risk. Why: walking every running job of the flavor for each such search cost more than
    the rest of the cycle (most are protected). The fixed filters run once per (flavor,
    resource); per search only a bisect on work at risk and a sort of what is left."""
    got = cyc.guarded.get((fid, ri))
    if got is None:
        pol, now = cyc.policy, cyc.now
        ranked = _ranked(cyc, fid, ri)
        pos = {id(r): k for k, r in enumerate(ranked)}
        ok = sorted(((now - r.at_risk, pos[id(r)], r) for r in ranked
                     if r.job.workload_class is WorkloadClass.INNOVATION and now - r.start >= pol.min_runtime_s
                     and _not_exempt(pol, r.job)
                     and r.start - r.job.submit_time < pol.aging_after_s), key=lambda t: (t[0], t[1]))
        got = cyc.guarded[(fid, ri)] = ([t[0] for t in ok], [(t[1], t[2]) for t in ok])
    risks, items = got
    k = bisect_right(risks, max_loss) if max_loss != float("inf") else len(items)
    return [r for _pos, r in sorted(items[:k], key=lambda t: t[0])]


def _ranked(cyc: "_Cycle", fid: int, ri: int = 0, op_reclaim: bool = False) -> list["Run"]:
    """Running jobs of a flavor in victim preference order (computed once per cycle and
    resource): project most over its nominal of that resource, lowest priority, least work at
    risk (seconds since its start, or its last checkpoint for a checkpointable job), id.

    Operation reclaim ranks by work lost alone (lowest priority, then GPU-seconds at risk):
    every lent job borrows alike, so the cheapest to stop goes first (a 1-GPU clinical job
    should not stop a 32-GPU gang that has run for hours when a young 1-GPU job would do)."""
    if op_reclaim:
        got = cyc.ranked.get((fid, -1))
        if got is None:
            now = cyc.now
            got = cyc.ranked[(fid, -1)] = sorted(
                cyc.runs_by_fid.get(fid, ()),
                key=lambda r: (r.job.workload_class is WorkloadClass.OPERATION, r.job.priority,
                               (now - r.at_risk) * max(r.req[0], 1.0), r.job.id))
        return got
    got = cyc.ranked.get((fid, ri))
    if got is None:
        key = (cyc.qv.flavors[fid], RESOURCES[ri])
        over: dict[str, float] = {}
        for r in cyc.runs_by_fid.get(fid, ()):
            q = r.job.project
            if q not in over:
                over[q] = (cyc.tree.used(q, key) - cyc.tree.project_spec(q, key).nominal).value
        now = cyc.now
        got = sorted(cyc.runs_by_fid.get(fid, ()),
                     key=lambda r: (-over[r.job.project], r.job.priority, now - r.at_risk, r.job.id))
        cyc.ranked[(fid, ri)] = got
    return got


def _eligible(cyc: "_Cycle", job: "Job", s: "Shape", fid: int, op_reclaim: bool, wg: bool, wn: bool,
              prio: bool) -> Iterator[tuple["Run", str]]:
    """Candidates in preference order with their kind; lazily, so a search stops early.

    A victim's project must stay above its guarantee (and, for nominal reclaim, above its
    nominal) counting the victims already taken from it in this search; both are judged on the
    resource the preemptor needs (`need_index`), so a job that borrows only CPUs is no victim
    for a GPU job.

    Work-aware (an innovation job reclaiming nominal, not within its guarantee): a victim
    that has run less than `min_runtime_s` is protected (checkpointable or not: a job stopped
    right after its start makes no progress and its restart costs again, and without it two
    projects can hand the same capacity back and forth within one instant), and with
    `lost_work_bounded_by_wait` no victim loses more work than the preemptor has waited; a job
    that started aged (waited past `aging_after_s`) is no victim either, else the aged job and
    its preemptor take turns on the same capacity and neither finishes.
    Operation reclaim and guarantees are never held back by these.
    """
    qv = cyc.qv
    ri = need_index(s)
    managed = qv.managed[fid]
    gi = ri in managed  # is the needed resource managed in this flavor?
    j = managed.index(ri) if gi else -1
    innovation = job.workload_class is WorkloadClass.INNOVATION
    policy = cyc.policy
    guarded = innovation and not wg
    now = cyc.now
    min_run = policy.min_runtime_s if guarded else 0.0
    max_loss = _max_loss(cyc, job, s, fid) if guarded else float("inf")
    max_loss_res = max_loss * s.req[ri] if policy.loss_gpu_weighted else float("inf")  # the same bound weighted by the needed resource
    exempt = policy.reclaim_exempt_after if guarded else 0
    aging = policy.aging_after_s
    taken: dict[str, float] = {}
    dtaken: dict[str, float] = {}
    rooms: dict[str, tuple[float, float, float]] = {}
    dept_of = cyc.dept_of
    ranked = _guarded(cyc, fid, ri, max_loss) if guarded and not prio else _ranked(cyc, fid, ri, op_reclaim)
    for r in ranked:
        v = r.job
        if v.id in cyc.victims or not v.preemptible or (innovation and v.workload_class is WorkloadClass.OPERATION):
            continue
        q = v.project
        room = rooms.get(q)
        if room is None:
            if gi:
                rec = qv.record(q, fid)
                room = rooms[q] = (rec[GUARANTEE][j], rec[NOMINAL][j], rec[DEPT_NOMINAL][j])
            else:
                room = rooms[q] = (-1.0, -1.0, -1.0)
        t = taken.get(q, 0.0)
        d = dept_of.get(q, "")
        # rooms left (guarantee, nominal, department nominal - usage) after the victims so far
        g_room, n_room, d_room = room[0] + t, room[1] + t, room[2] + dtaken.get(d, 0.0)
        need = r.req[ri]
        kind = None
        if q == job.project:
            if prio and v.priority < job.priority:
                kind = "PRIORITY"
        elif need <= 0 and not op_reclaim:
            continue  # it holds none of what the preemptor needs
        elif g_room + need <= EPS:  # the project stays at or above its guarantee without it
            if op_reclaim and v.workload_class is WorkloadClass.INNOVATION:
                kind = "RECLAIM_OPERATION"
            elif wg or (wn and (n_room < -EPS or d_room < -EPS if gi else r.borrowing)):
                # borrowing now, on the resource the preemptor needs (its project or department
                # above nominal there); the admission-time `borrowing` flag is neither per
                # resource nor current (a victim chosen by it could take the capacity back)
                kind = "RECLAIM_NOMINAL"
                if guarded and (now - r.start < min_run or now - r.at_risk > max_loss
                                or (now - r.at_risk) * need > max_loss_res + EPS
                                or (exempt and v.preemptions >= exempt)
                                or r.start - v.submit_time >= aging):
                    continue  # too young to stop, it would lose more work (seconds, or seconds x
                    # resource) than the preemptor waited, it was preempted often enough, or it
                    # started as an aged job (stopping it would undo the starvation bound)
        if kind is not None:
            taken[q] = t + need
            dtaken[d] = dtaken.get(d, 0.0) + need
            yield r, kind


def _search(cyc: "_Cycle", job: "Job", s: "Shape", fid: int, op_reclaim: bool, wg: bool, wn: bool, prio: bool):
    """Minimal victim set and the placement it allows, or None."""
    w = cyc.world
    nodes = w.nodes
    cands = _eligible(cyc, job, s, fid, op_reclaim, wg, wn, prio)
    chosen: list[tuple["Run", str]] = []
    if s.w == 1:
        # single worker: the first node whose victims (in preference order) free enough
        acc: dict[int, list] = {}
        target = None
        for n_seen, (r, kind) in enumerate(cands):
            if n_seen >= MAX_CANDIDATES:
                break
            for i, k in _per_node(r):
                n = nodes[i]
                if not n.ready or n.fid != fid or n.cap_g < s.g:
                    continue
                a = acc.get(i)
                if a is None:
                    a = acc[i] = [0, 0.0, 0.0, []]
                a[0] += r.g * k
                a[1] += r.c * k
                a[2] += r.m * k
                a[3].append((r, kind))
                if _node_fits(n, a[0], a[1], a[2], s):
                    target = i
                    break
            if target is not None:
                break
        if target is None:
            return None
        chosen = list(acc[target][3])
        # minimise: drop victims (latest first) that the node does not need
        for idx in range(len(chosen) - 1, -1, -1):
            rest = chosen[:idx] + chosen[idx + 1:]
            fr = _freed_on(rest, target)
            if _node_fits(nodes[target], *fr, s):
                chosen = rest
        undos = [_release(w, r) for r, _ in chosen]
        placed = w.place(fid, 1, s.g, s.c, s.m, s.allowed)
        if placed is not None and placed[0][0] != target and (s.allowed is None or s.allowed(nodes[target], 1)):
            placed = [(target, 1)] if nodes[target].fits(s.g, s.c, s.m) >= 1 else placed
    else:
        undos = []
        placed = None
        for n_seen, (r, kind) in enumerate(cands):
            if n_seen >= MAX_CANDIDATES:
                break
            chosen.append((r, kind))
            undos.append(_release(w, r))
            fx = w.flavors[fid]
            if fx.total_free_g >= s.req[0] and fx.max_free >= s.g:
                placed = w.place(fid, s.w, s.g, s.c, s.m, s.allowed)
                if placed is not None:
                    break
        if placed is None:
            for u in reversed(undos):
                u()
            return None
        for idx in range(len(chosen) - 1, -1, -1):  # put back, latest first, what is not needed
            undos[idx]()
            p = w.place(fid, s.w, s.g, s.c, s.m, s.allowed)
            if p is not None:
                placed = p
                del chosen[idx]
                del undos[idx]
            else:
                undos[idx] = _release(w, chosen[idx][0])
        placed = w.place(fid, s.w, s.g, s.c, s.m, s.allowed)
    ok = placed is not None and _quota_ok(cyc, job, s, fid, [r for r, _ in chosen])
    for u in reversed(undos):
        u()
    if not ok:
        return None
    return Found(sorted(chosen, key=lambda t: t[0].job.id), placed)


def _node_fits(n, g: float, c: float, m: float, s: "Shape") -> bool:
    return (n.free_g + g >= s.g and (s.c <= 0 or n.free_c + c + EPS >= s.c)
            and (s.m <= 0 or n.free_m + m + EPS >= s.m))


def _per_node(r: "Run") -> list[tuple[int, int]]:
    """(node index, workers of r on it), sorted by node: computed once per run."""
    got = r.per_node
    if got is None:
        counts: dict[int, int] = {}
        for i, _ids in r.taken:
            counts[i] = counts.get(i, 0) + 1
        got = r.per_node = sorted(counts.items())
    return got


def _freed_on(victims, i: int) -> tuple[float, float, float]:
    g = c = m = 0.0
    for r, _k in victims:
        k = sum(1 for x, _ in r.taken if x == i)
        g += r.g * k
        c += r.c * k
        m += r.m * k
    return g, c, m


def _release(w, r: "Run"):
    """What-if: the victim's workers leave their nodes. Returns the undo."""
    for i, ids in r.taken:
        w.give(i, r.g, r.c, r.m, ids)

    def undo() -> None:
        for i, ids in r.taken:
            w.take(i, r.g, r.c, r.m, ids)

    return undo


def _quota_ok(cyc: "_Cycle", job: "Job", s: "Shape", fid: int, victims: list["Run"]) -> bool:
    """Would the job pass quota once the victims' usage is gone?

    Its own limits do not change; only the capacity lendable to it grows. Victims never take
    their project below its guarantee, so QuotaTree.lendable_if_removed answers exactly
    without a what-if on the tree.
    """
    qv = cyc.qv
    if not qv.managed[fid] or qv.check(job.project, fid, s.req)[0] is Verdict.OK:
        return True  # quota was never the problem
    if qv.limits(job.project, fid, s.req).level:
        return False
    tree = cyc.tree
    fl = qv.flavors[fid]
    for ri in qv.managed[fid]:
        if not s.req[ri]:
            continue
        removed: dict[str, float] = {}
        for r in victims:
            if r.fid == fid and r.req[ri]:
                d = cyc.dept_of.get(r.job.project, "")
                removed[d] = removed.get(d, 0.0) + r.req[ri]
        got = tree.lendable_if_removed_value(job.project, (fl, RESOURCES[ri]), removed)
        if round9(float(s.req[ri])) > got:  # Amount.of(request) > lendable, in floats
            return False
    return True


def _issue(cyc: "_Cycle", job: "Job", s: "Shape", fid: int, victims, placed, position: int) -> None:
    w = cyc.world
    for r, kind in victims:
        cyc.victims.add(r.job.id)
        flags = cyc.run_flags.get(r.job.id)
        if flags is not None and r.fid in cyc.bounds:
            for k in range(3):
                if flags[k]:
                    cyc.bounds[r.fid][k] -= r.req[0]
        msg = _victim_message(cyc, job, s, r, kind) if cyc.explain else ""
        cyc.preemptions.append(Preemption(r.job.id, job.id, kind, msg))
    # hold, for the preemptor, the part of its future placement that is free right now
    for i, k in placed:
        n = w.nodes[i]
        g = max(0, min(k * s.g, n.free_g))
        c = max(0.0, min(k * s.c, n.free_c))
        m = max(0.0, min(k * s.m, n.free_m))
        if g or c or m:
            w.take(i, g, c, m)
    cyc.preemptors.add(job.project)
    cyc.epoch += 1
    if cyc.explain:
        d = {"victims": len(victims), "victim_ids": [r.job.id for r, _ in victims],
             "kinds": sorted({k for _, k in victims}), "requested": int(s.req[0]),
             "flavor": cyc.labels[fid], "resource": _UNITS[need_index(s)],
             "lost_work_s": round(sum(cyc.now - r.at_risk for r, _ in victims), 1)}
        cyc.pending[job.id] = explained(ReasonCode.PREEMPTING, d, position)
    else:
        cyc.pending[job.id] = bare(ReasonCode.PREEMPTING)
