"""A cached, float-valued view of the quota tree for the cycle's hot loop.

Why: one quota question per pending job per flavor, thousands of times per cycle, is too slow
through `Amount` arithmetic (microseconds per operation). The tree (quotas.tree) stays the one
place where quota math is done, in `Amount`; this view caches the tree's answers as floats per
(project, flavor) and re-asks the tree only when usage changed.

Monotonicity makes the cache cheap: within a cycle usage only grows (admissions add usage;
preemption victims keep theirs until they stop), so headroom and lendable capacity only
shrink. A request that fails against a stale cached number fails against the fresh one too;
only a request that would pass is re-checked against fresh numbers.

Only "managed" keys are checked: (flavor, resource) pairs that some project or department has
a spec for. A resource nobody configured is limited by physical capacity alone and never
makes a job count as borrowing.
"""

from __future__ import annotations

from typing import Callable

from quotas.amount import Amount
from quotas.tree import QuotaTree, Verdict
from scheduler.model import RESOURCES, Flavor

EPS = 1e-9
INF = float("inf")

# project record: (lim_p, lim_d, g, n, dn) tuples of floats per managed resource
_Rec = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]


class QuotaView:
    def __init__(self, tree: QuotaTree, flavors: list[Flavor], managed: set[tuple[Flavor, str]]) -> None:
        self.tree = tree
        self.flavors = flavors
        # per flavor: indices into RESOURCES of the managed resources
        self.managed: list[tuple[int, ...]] = [
            tuple(ri for ri, r in enumerate(RESOURCES) if (fl, r) in managed) for fl in flavors
        ]
        self._pver: dict[tuple[str, int], int] = {}
        self._dver: dict[tuple[str, int], int] = {}
        self._fver: list[int] = [0] * len(flavors)
        self._rec: dict[tuple[str, int], tuple[int, int, _Rec]] = {}
        self._lend: dict[tuple[str, int], tuple[int, tuple[float, ...]]] = {}

    # -- cached reads --------------------------------------------------------------------
    def record(self, pid: str, fid: int) -> _Rec:
        dept = self.tree.dept_of.get(pid, "")
        pv, dv = self._pver.get((pid, fid), 0), self._dver.get((dept, fid), 0)
        hit = self._rec.get((pid, fid))
        if hit is not None and hit[0] == pv and hit[1] == dv:
            return hit[2]
        fl = self.flavors[fid]
        t = self.tree
        lp, ld, g, n, dn = [], [], [], [], []
        for ri in self.managed[fid]:
            key = (fl, RESOURCES[ri])
            ps, ds = t.project_spec(pid, key), t.department_spec(dept, key)
            pu, du = t.used(pid, key), t.used(dept, key)
            lp.append((ps.limit - pu).value)
            ld.append((ds.limit - du).value)
            g.append((ps.guaranteed - pu).value)
            n.append((ps.nominal - pu).value)
            dn.append((ds.nominal - du).value)
        rec = (tuple(lp), tuple(ld), tuple(g), tuple(n), tuple(dn))
        self._rec[(pid, fid)] = (pv, dv, rec)
        return rec

    def lendable(self, pid: str, fid: int, fresh: bool) -> tuple[float, ...]:
        fv = self._fver[fid]
        hit = self._lend.get((pid, fid))
        if hit is not None and (hit[0] == fv or not fresh):
            return hit[1]
        fl = self.flavors[fid]
        vals = tuple(self.tree.lendable_to(pid, (fl, RESOURCES[ri])).value for ri in self.managed[fid])
        self._lend[(pid, fid)] = (fv, vals)
        return vals

    # -- the check -----------------------------------------------------------------------
    def check(self, pid: str, fid: int, req: tuple[float, float, float],
              reclaimable: tuple[float, float, float] | None = None) -> tuple[Verdict, bool, bool, str, int]:
        """(verdict, borrowing, within_guarantee, failing level, failing resource index).

        Same rules as QuotaTree.check, over all managed resources of the flavor.
        """
        managed = self.managed[fid]
        if not managed:
            return Verdict.OK, False, False, "", -1
        lp, ld, g, n, dn = self.record(pid, fid)
        borrowing = False
        within_g = True
        for j, ri in enumerate(managed):
            a = req[ri]
            if a <= 0:
                continue
            if a > lp[j] + EPS:
                return Verdict.LIMIT, False, False, "project", ri
            if a > ld[j] + EPS:
                return Verdict.LIMIT, False, False, "department", ri
            if a > g[j] + EPS:
                within_g = False
            if a > n[j] + EPS or a > dn[j] + EPS:
                borrowing = True
        if within_g:
            return Verdict.OK, borrowing, True, "", -1
        for fresh in (False, True):
            lend = self.lendable(pid, fid, fresh)
            bad = -1
            for j, ri in enumerate(managed):
                if req[ri] > lend[j] + EPS:
                    bad = j
                    break
            if bad >= 0:
                ri = managed[bad]
                level = "borrow" if req[ri] > n[bad] + EPS else "reserved"
                if reclaimable is not None and all(
                        req[r2] <= lend[j2] + reclaimable[r2] + EPS for j2, r2 in enumerate(managed)):
                    return Verdict.RECLAIM, borrowing, False, level, ri
                return Verdict.LIMIT, borrowing, False, level, ri
        return Verdict.OK, borrowing, False, "", -1

    # -- mutation ------------------------------------------------------------------------
    def add(self, pid: str, fid: int, req: tuple[float, float, float]) -> Callable[[], None]:
        """Add usage to the tree (all resources, managed or not); returns the undo."""
        fl = self.flavors[fid]
        amounts = {(fl, r): Amount.of(req[ri]) for ri, r in enumerate(RESOURCES) if req[ri]}
        undo_tree = self.tree.add_usage(pid, amounts)
        self._bump(pid, fid)

        def undo() -> None:
            undo_tree()
            self._bump(pid, fid)

        return undo

    def _bump(self, pid: str, fid: int) -> None:
        dept = self.tree.dept_of.get(pid, "")
        self._pver[(pid, fid)] = self._pver.get((pid, fid), 0) + 1
        self._dver[(dept, fid)] = self._dver.get((dept, fid), 0) + 1
        self._fver[fid] += 1
