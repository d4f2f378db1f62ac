"""A cached, float-valued view of the quota tree for the cycle's hot loop.

Why: one quota question per pending job per flavor, thousands of times per cycle, is too slow
through `Amount` arithmetic (microseconds per operation). The tree (quotas.tree) stays the one
place where quota math is done, in `Amount`; this view caches the tree's answers as floats per
(project, flavor) and re-asks the tree only when usage changed.

Monotonicity makes the cache cheap: within a cycle usage only grows (admissions add usage;
preemption victims keep theirs until they stop), so headroom and lendable capacity only
shrink. A request that fails against a stale cached number fails against the fresh one too;
only a request that would pass is re-checked against fresh numbers.

The cached rooms are differences of the tree's Amount values (spec value - usage value);
usage is always finite, so an unlimited spec stays an unlimited (inf) room and no NaN can
arise. tests/unit/test_quota_view.py checks the view against QuotaTree.check.

Only "managed" keys are checked: (flavor, resource) pairs that some project or department has
a spec for. A resource nobody configured is limited by physical capacity alone and never
makes a job count as borrowing.
"""

from __future__ import annotations

from typing import Callable

from quotas.amount import Amount
from quotas.tree import QuotaTree, Verdict
from scheduler.model import RESOURCES
from scheduler.steps import Limits

EPS = 1e-9
INF = float("inf")
# Every answer `_limits` can give, made once: a NamedTuple's constructor runs Python code and
# the answers are few (8 flag combinations, 2 levels x 3 resources).
_PASS = {(g, n, b): Limits("", -1, g, n, b) for g in (False, True) for n in (False, True) for b in (False, True)}
_FAIL = {(lv, ri): Limits(lv, ri, False, False, False) for lv in ("project", "department") for ri in range(len(RESOURCES))}
_UNMANAGED = _PASS[(False, False, False)]


Rooms = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]
"""A project's rooms on one flavor, one float per managed resource (negative: over it):
(project limit, department limit, guarantee, nominal, department nominal) - usage.
A plain tuple: `_limits` unpacks it on every cache miss, and unpacking a NamedTuple goes
through the iterator protocol (measured). Indexes `GUARANTEE` and `NOMINAL` name its fields."""
GUARANTEE, NOMINAL, DEPT_NOMINAL = 2, 3, 4


class QuotaView:
    def __init__(self, tree: QuotaTree, flavors: list, managed: set) -> None:
        """flavors[fid]: the tree's key for flavor fid; managed: (flavor key, resource) pairs."""
        self.tree = tree
        self.flavors = flavors
        # per flavor: indices into RESOURCES of the managed resources
        self.managed: list[tuple[int, ...]] = [
            tuple(ri for ri, r in enumerate(RESOURCES) if (fl, r) in managed) for fl in flavors
        ]
        self._fver: list[int] = [0] * len(flavors)
        self._rec: dict[tuple[str, int], tuple] = {}  # project part, per (project, flavor)
        self._drec: dict[tuple[str, int], tuple] = {}  # department part, per (department, flavor)
        self._full: dict[tuple[str, int], Rooms] = {}  # record() answers, per (project, flavor)
        self._full_holders: dict[tuple[str, int], list[str]] = {}  # who holds one, per (department, flavor)
        self._limc: dict[tuple[str, int], dict] = {}  # limits() answers per (project, flavor), by request
        self._lfc: dict[tuple[str, int], dict] = {}  # lend_fail answers per (project, flavor), by request
        self._members: dict[str, list[str]] = {}
        for pid in sorted(tree.dept_of):
            self._members.setdefault(tree.dept_of[pid], []).append(pid)
        self._lend: dict[tuple[str, int], tuple[int, int, tuple[float, ...]]] = {}
        # bumped by every usage decrease (preemption what-ifs): cached lendable numbers from an
        # older epoch are no longer upper bounds, so their failures are not trusted
        self._epoch = 0

    # -- cached reads --------------------------------------------------------------------
    def record(self, pid: str, fid: int) -> Rooms:
        """(project limit room, department limit room, guarantee room, nominal room,
        department nominal room) per managed resource of the flavor.

        The combined record is cached per (project, flavor) (one lookup on the hot path) and
        dropped, for every project that cached one under the same department, whenever that
        department's usage in the flavor changes (`_bump`)."""
        got = self._full.get((pid, fid))
        if got is None:
            got = self._full[(pid, fid)] = self._record(pid, fid)
            dept = self.tree.dept_of.get(pid, "")
            holders = self._full_holders.get((dept, fid))
            if holders is None:
                holders = self._full_holders[(dept, fid)] = []
            holders.append(pid)
        return got

    def _record(self, pid: str, fid: int) -> Rooms:
        hit = self._rec.get((pid, fid))
        if hit is None:
            fl = self.flavors[fid]
            t = self.tree
            lp, g, n = [], [], []
            for ri in self.managed[fid]:
                key = (fl, RESOURCES[ri])
                ps, pu = t.project_spec(pid, key), t.used(pid, key).value
                lp.append(ps.limit.value - pu)  # usage is always finite: inf - u stays inf
                g.append(ps.guaranteed.value - pu)
                n.append(ps.nominal.value - pu)
            hit = self._rec[(pid, fid)] = (tuple(lp), tuple(g), tuple(n))
        dept = self.tree.dept_of.get(pid, "")
        dh = self._drec.get((dept, fid))
        if dh is None:
            fl = self.flavors[fid]
            t = self.tree
            ld, dn = [], []
            for ri in self.managed[fid]:
                key = (fl, RESOURCES[ri])
                ds, du = t.department_spec(dept, key), t.used(dept, key).value
                ld.append(ds.limit.value - du)
                dn.append(ds.nominal.value - du)
            dh = self._drec[(dept, fid)] = (tuple(ld), tuple(dn))
        return hit[0], dh[0], hit[1], hit[2], dh[1]

    def lendable(self, pid: str, fid: int, fresh: bool) -> tuple[float, ...]:
        """tree.lendable_to per managed resource, from a per-department cached part."""
        dept = self.tree.dept_of.get(pid, "")
        fv = self._fver[fid]
        hit = self._lend.get((dept, fid))
        if hit is None or (hit[0] != fv and (fresh or hit[1] != self._epoch)):
            fl = self.flavors[fid]
            dl = self.tree.department_lendable_value
            vals = tuple([dl(dept, (fl, RESOURCES[ri])) for ri in self.managed[fid]])
            hit = self._lend[(dept, fid)] = (fv, self._epoch, vals)
        g = self.record(pid, fid)[GUARANTEE]
        return tuple([max(0.0, b + (x if x > 0 else 0.0)) for b, x in zip(hit[2], g)])

    # -- the checks -----------------------------------------------------------------------
    def limits(self, pid: str, fid: int, req: tuple[float, float, float]) -> Limits:
        """Hard limits and flags: (failing level or "", resource index, within guarantee,
        within nominal, borrowing). Only the project's and department's own numbers: cheap,
        and memoised per request size until the project's or department's usage changes."""
        memo = self._limc.get((pid, fid))
        if memo is None:
            memo = self._limc[(pid, fid)] = {}
        got = memo.get(req)
        if got is None:
            got = memo[req] = self._limits(pid, fid, req)
        return got

    def _limits(self, pid: str, fid: int, req: tuple[float, float, float]) -> Limits:
        managed = self.managed[fid]
        if not managed:
            return _UNMANAGED
        lp, ld, g, n, dn = self.record(pid, fid)
        borrowing = False
        within_g = within_n = True
        for j, ri in enumerate(managed):
            a = req[ri]
            if a <= 0:
                continue
            if a > lp[j] + EPS:
                return _FAIL[("project", ri)]
            if a > ld[j] + EPS:
                return _FAIL[("department", ri)]
            if a > g[j] + EPS:
                within_g = False
            if a > n[j] + EPS:
                within_n = False
                borrowing = True
            elif a > dn[j] + EPS:
                borrowing = True
        return _PASS[(within_g, within_n, borrowing)]

    def lend_fail(self, pid: str, fid: int, req: tuple[float, float, float]) -> int:
        """-1 when the request fits what pid may take beyond its own guarantee (idle capacity
        not protected by others' guarantees); else the failing resource index.

        Memoised per (project, flavor, request) until usage in the flavor changes (any
        department's usage moves the lendable capacity, so the flavor's version is the key)."""
        memo = self._lfc.get((pid, fid))
        if memo is None:
            memo = self._lfc[(pid, fid)] = {}
        got = memo.get(req)
        fv = self._fver[fid]
        if got is not None and got[0] == fv:
            return got[1]
        ri = self._lend_fail(pid, fid, req)
        memo[req] = (fv, ri)
        return ri

    def _lend_fail(self, pid: str, fid: int, req: tuple[float, float, float]) -> int:
        managed = self.managed[fid]
        for fresh in (False, True):
            lend = self.lendable(pid, fid, fresh)
            for j, ri in enumerate(managed):
                if req[ri] > lend[j] + EPS:
                    return ri
        return -1

    def check(self, pid: str, fid: int, req: tuple[float, float, float]) -> tuple[Verdict, bool, bool]:
        """(verdict OK/LIMIT, borrowing, within guarantee): QuotaTree.check over all managed keys."""
        level, _ri, within_g, _wn, borrowing = self.limits(pid, fid, req)
        if level:
            return Verdict.LIMIT, False, False
        if within_g or not self.managed[fid]:
            return Verdict.OK, borrowing, within_g
        if self.lend_fail(pid, fid, req) >= 0:
            return Verdict.LIMIT, borrowing, False
        return Verdict.OK, borrowing, False

    # -- mutation ------------------------------------------------------------------------
    def add(self, pid: str, fid: int, req: tuple[float, float, float]) -> Callable[[], None]:
        """Add usage to the tree (all resources, managed or not); returns the undo."""
        fl = self.flavors[fid]
        amounts = {(fl, r): Amount.of(req[ri]) for ri, r in enumerate(RESOURCES) if req[ri]}
        undo_tree = self.tree.add_usage(pid, amounts)
        if any(x < 0 for x in req):
            self._epoch += 1
        self._bump(pid, fid)

        def undo() -> None:
            undo_tree()
            self._bump(pid, fid)

        return undo

    def _bump(self, pid: str, fid: int) -> None:
        """Usage of pid (and so of its department) changed in flavor fid."""
        dept = self.tree.dept_of.get(pid, "")
        self._rec.pop((pid, fid), None)
        self._drec.pop((dept, fid), None)
        full = self._full
        for q in self._full_holders.pop((dept, fid), ()):
            full.pop((q, fid), None)
        limc = self._limc
        limc.pop((pid, fid), None)
        for q in self._members.get(dept, ()):
            limc.pop((q, fid), None)
        self._fver[fid] += 1
