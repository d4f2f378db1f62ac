"""The quota tree: region > department > project, counted per key = (flavor, resource).

Every tree node has three numbers per key (all `Amount`, any may be unlimited):

- `guaranteed`: never lent to anyone; other projects may not take it even while it is idle.
- `nominal`: the node's fair entitlement; lendable to others while unused.
- `limit`: hard maximum including borrowing.

The region is the root; its capacity per key is the physical capacity of the flavor (the caller
passes it). Usage bubbles up: a department's usage is the sum of its projects' usage, the
region's usage the sum of the departments'.

Decisions the issue left open (documented here so the admin API can show them):

- A project with no spec for a key has guaranteed 0, nominal 0, limit unlimited: it may only
  borrow idle capacity (see scheduler.model.QuotaSpec).
- A department with no spec for a key is "just the sum of its projects": guaranteed = sum of
  the projects' guaranteed, nominal = sum of their nominal, limit unlimited.
- Borrowing (taking more than one's nominal) is allowed only from capacity that is idle in the
  region and not protected by someone else's unused guarantee. The same protection applies to
  any admission above the requester's own guarantee, so guarantees stay real even when
  nominals are over-committed. A department protects max(its own unused guarantee, the sum of
  its projects' unused guarantees) against other departments.

`QuotaTree` is a working state: `add_usage` returns its undo (Kueue style) so what-if
questions never copy the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Hashable, Mapping, Protocol

from quotas.amount import UNLIMITED, ZERO, Amount, _make, amax, amin, round9

Key = tuple[Hashable, str]  # (flavor, resource)


class SpecLike(Protocol):
    guaranteed: Amount
    nominal: Amount
    limit: Amount


@dataclass(frozen=True, slots=True)
class Spec:
    """A quota spec the tree owns (the scheduler's QuotaSpec satisfies the same protocol)."""

    guaranteed: Amount = ZERO
    nominal: Amount = ZERO
    limit: Amount = UNLIMITED


DEFAULT_PROJECT_SPEC = Spec()


class Verdict(IntEnum):
    """Ordered quota outcomes (greater is better), mirroring scheduler.model.Outcome."""

    LIMIT = 0  # over a limit: waits regardless of others
    RECLAIM = 1  # fits only if capacity lent/borrowed by others is reclaimed
    OK = 2


@dataclass(frozen=True, slots=True)
class Check:
    """The answer for one key; numbers are the ones a pending reason shows."""

    verdict: Verdict
    borrowing: bool = False  # the request takes the project above its nominal
    within_guarantee: bool = False
    level: str = ""  # "project" | "department" | "borrow" | "reserved" when not OK
    in_use: Amount = ZERO
    nominal: Amount = ZERO
    limit: Amount = UNLIMITED
    available: Amount = UNLIMITED  # what could still be taken at the failing level


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation finding, worded for the admin API."""

    code: str  # GUARANTEE_ABOVE_NOMINAL | NOMINAL_ABOVE_LIMIT | GUARANTEES_EXCEED_PARENT
    where: str  # "project:<id>" | "department:<id>" | "region"
    key: Key
    message: str


def validate_spec(where: str, key: Key, spec: SpecLike) -> list[Problem]:
    """Invariant: a valid spec has guaranteed <= nominal <= limit."""
    out = []
    if spec.guaranteed > spec.nominal:
        out.append(Problem("GUARANTEE_ABOVE_NOMINAL", where, key,
                           f"{where} guarantees {spec.guaranteed} {key[1]} but its nominal is only {spec.nominal}."))
    if spec.nominal > spec.limit:
        out.append(Problem("NOMINAL_ABOVE_LIMIT", where, key,
                           f"{where} has nominal {spec.nominal} {key[1]} above its limit {spec.limit}."))
    return out


def validate_tree(
    capacity: Mapping[Key, Amount],
    departments: Mapping[str, Mapping[Key, SpecLike]],
    projects: Mapping[str, tuple[str, Mapping[Key, SpecLike]]],
) -> list[Problem]:
    """Invariant: every spec is ordered and children's guarantees fit the parent's nominal.

    (For the region, the parent's nominal is the flavor's capacity.) Returns findings sorted
    by place and key; an empty list means the tree is valid.
    """
    problems: list[Problem] = []
    child_g: dict[tuple[str, Key], Amount] = {}
    for pid, (dept, specs) in projects.items():
        for key, spec in specs.items():
            problems += validate_spec(f"project:{pid}", key, spec)
            child_g[(dept, key)] = child_g.get((dept, key), ZERO) + spec.guaranteed
    dept_g: dict[Key, Amount] = {}
    for (dept, key), g in child_g.items():
        spec = departments.get(dept, {}).get(key)
        if spec is not None and g > spec.nominal:
            problems.append(Problem("GUARANTEES_EXCEED_PARENT", f"department:{dept}", key,
                                    f"projects of {dept} are guaranteed {g} {key[1]} but the department's nominal is {spec.nominal}."))
        dept_g[key] = dept_g.get(key, ZERO) + (spec.guaranteed if spec is not None else g)
    for dept, specs in departments.items():
        for key, spec in specs.items():
            problems += validate_spec(f"department:{dept}", key, spec)
            if (dept, key) not in child_g:
                dept_g[key] = dept_g.get(key, ZERO) + spec.guaranteed
    for key, g in dept_g.items():
        cap = capacity.get(key, ZERO)
        if g > cap:
            problems.append(Problem("GUARANTEES_EXCEED_PARENT", "region", key,
                                    f"departments are guaranteed {g} {key[1]} but the region has only {cap}."))
    return sorted(problems, key=lambda p: (p.where, str(p.key), p.code))


_INF = float("inf")


def _fadd(a: float, b: float) -> float:
    """(Amount(a) + Amount(b)).value without the objects (round9's integral fast path inlined)."""
    if a == _INF or b == _INF:
        return _INF
    x = a + b
    return x if x.is_integer() else round9(x)


def _fsub(a: float, b: float) -> float:
    """(Amount(a) - Amount(b)).value without the objects (round9's integral fast path inlined)."""
    if a == _INF:
        return _INF
    if b == _INF:
        return 0.0
    x = a - b
    return x if x.is_integer() else round9(x)


def _clamp0(x: float) -> float:
    """Amount(x).clamp0().value."""
    return x if x >= 0 else 0.0


def _amount(x: float) -> Amount:
    """The Amount of a value already rounded by _fadd/_fsub/round9 (unlimited: UNLIMITED)."""
    return UNLIMITED if x == _INF else _make(x)


class QuotaTree:
    """Usage and headroom for one cycle. Mutated only through `add_usage` (which returns undo)."""

    def __init__(
        self,
        capacity: Mapping[Key, Amount],
        departments: Mapping[str, Mapping[Key, SpecLike]],
        projects: Mapping[str, tuple[str, Mapping[Key, SpecLike]]],
        usage: Mapping[str, Mapping[Key, Amount]] | None = None,
    ) -> None:
        """Build the tree; `usage` (per project, per key) is bubbled up in one pass."""
        self.capacity = dict(capacity)
        self._pspec = {pid: specs for pid, (_, specs) in projects.items()}
        self.dept_of = {pid: dept for pid, (dept, _) in projects.items()}
        self._members: dict[str, list[str]] = {}
        for pid in sorted(self.dept_of):
            self._members.setdefault(self.dept_of[pid], []).append(pid)
        self._dspec: dict[str, dict[Key, Spec]] = {}
        for dept in set(departments) | set(self._members):
            given = departments.get(dept, {})
            eff: dict[Key, Spec] = {k: Spec(v.guaranteed, v.nominal, v.limit) for k, v in given.items()}
            for pid in self._members.get(dept, ()):
                for key, ps in self._pspec[pid].items():
                    if key in given:
                        continue
                    old = eff.get(key, Spec(ZERO, ZERO, UNLIMITED))
                    eff[key] = Spec(old.guaranteed + ps.guaranteed, old.nominal + ps.nominal, UNLIMITED)
            self._dspec[dept] = eff
        self.usage: dict[tuple[str, Key], Amount] = {}  # project and department usage
        self.region_usage: dict[Key, Amount] = {}
        # Bulk bubbling: usage is always finite, so department and region sums are added up
        # once as numbers and rounded into one Amount each (same result as Amount additions).
        dsum: dict[tuple[str, Key], float] = {}
        rsum: dict[Key, float] = {}
        for pid in sorted(usage or {}):
            dept = self.dept_of.get(pid, "")
            for key, a in usage[pid].items():
                a = Amount.of(a)
                self.usage[(pid, key)] = self.usage.get((pid, key), ZERO) + a
                dsum[(dept, key)] = dsum.get((dept, key), 0.0) + a.value
                rsum[key] = rsum.get(key, 0.0) + a.value
        for k, v in dsum.items():
            self.usage[k] = self.usage.get(k, ZERO) + Amount.of(v)
        for key, v in rsum.items():
            self.region_usage[key] = Amount.of(v)
        self.version = 0  # bumps on every change: lets callers cache headroom
        # Unused-guarantee bookkeeping, kept incrementally so protection is O(1) per check:
        # _ug_sum[(dept, key)] = sum of its projects' unused guarantees, _prot[(dept, key)] =
        # what the department protects against other departments, _total_prot[key] = sum.
        self._ug_sum: dict[tuple[str, Key], Amount] = {}
        self._prot: dict[tuple[str, Key], Amount] = {}
        self._total_prot: dict[Key, Amount] = {}
        pspec = self._pspec
        for dept in sorted(self._dspec):
            keys = set(self._dspec[dept])
            # members with some guarantee: only they can have an unused one (self._unused)
            guaranteed = [(pid, specs) for pid in self._members.get(dept, ())
                          for specs in (pspec.get(pid, {}),) if any(v.guaranteed > ZERO for v in specs.values())]
            for key in sorted(keys, key=str):
                s = ZERO
                for pid, specs in guaranteed:
                    spec = specs.get(key)
                    if spec is None or not spec.guaranteed > ZERO:
                        continue  # unused guarantee 0 (the default spec guarantees nothing)
                    u = (spec.guaranteed - self.used(pid, key)).clamp0()
                    if u.value:
                        s = s + u
                self._ug_sum[(dept, key)] = s
                p = amax(self._unused(self.department_spec(dept, key), dept, key), s)
                self._prot[(dept, key)] = p
                self._total_prot[key] = self._total_prot.get(key, ZERO) + p

    def _unused(self, spec: SpecLike, owner: str, key: Key) -> Amount:
        return (spec.guaranteed - self.used(owner, key)).clamp0() if spec.guaranteed > ZERO else ZERO

    # -- specs -----------------------------------------------------------------------------
    def project_spec(self, pid: str, key: Key) -> SpecLike:
        return self._pspec.get(pid, {}).get(key, DEFAULT_PROJECT_SPEC)

    def department_spec(self, dept: str, key: Key) -> SpecLike:
        return self._dspec.get(dept, {}).get(key, DEFAULT_PROJECT_SPEC)

    def used(self, owner: str, key: Key) -> Amount:
        return self.usage.get((owner, key), ZERO)

    # -- usage -----------------------------------------------------------------------------
    def add_usage(self, pid: str, amounts: Mapping[Key, Amount]) -> Callable[[], None]:
        """Invariant: a department's usage is the sum of its projects', the region's of all.

        Computed in floats step for step with Amount's rules (_fadd/_fsub round to 1e-9 and
        let unlimited absorb; clamp0; amax rounds the larger value), each stored result
        wrapped back into an Amount: the cycle calls this on every admission, and the Amount
        objects of every intermediate step showed in its profile."""
        dept = self.dept_of.get(pid, "")
        usage, region, prot = self.usage, self.region_usage, self._prot
        for key, a in amounts.items():
            av = Amount.of(a).value
            pk, dk = (pid, key), (dept, key)
            pu = usage.get(pk, ZERO).value
            du = usage.get(dk, ZERO).value
            pa, da = _fadd(pu, av), _fadd(du, av)
            usage[pk] = _amount(pa)
            usage[dk] = _amount(da)
            region[key] = _amount(_fadd(region.get(key, ZERO).value, av))
            old = prot.get(dk)
            if old is not None:
                g = self.project_spec(pid, key).guaranteed.value
                delta = _fsub(_clamp0(_fsub(g, pa)), _clamp0(_fsub(g, pu)))
                ug = _fadd(self._ug_sum[dk].value, delta)
                self._ug_sum[dk] = _amount(ug)
                own = _clamp0(_fsub(self.department_spec(dept, key).guaranteed.value, da))
                p = _amount(round9(max(own, ug)))  # amax(own, ug)
                self._total_prot[key] = _amount(_fsub(_fadd(self._total_prot[key].value, p.value), old.value))
                prot[dk] = p
        self.version += 1

        def undo() -> None:
            self.add_usage(pid, {k: ZERO - a for k, a in amounts.items()})

        return undo

    # -- protection ---------------------------------------------------------------------
    def protected_from(self, pid: str, key: Key) -> Amount:
        """Invariant: others' unused guarantees are never lent, so pid may not take them."""
        dept = self.dept_of.get(pid, "")
        total = self._total_prot.get(key, ZERO)
        if (dept, key) not in self._prot:
            return total
        own = (self.project_spec(pid, key).guaranteed - self.used(pid, key)).clamp0()
        return total - self._prot[(dept, key)] + self._ug_sum[(dept, key)] - own

    def department_lendable(self, dept: str, key: Key) -> Amount:
        """Invariant: lendable_to(p) = (department_lendable(dept of p) + p's unused guarantee)^+.

        The department part (may be negative) is shared by all its projects, so callers can
        cache it per department instead of per project.
        """
        idle = self.capacity.get(key, ZERO) - self.region_usage.get(key, ZERO)
        total = self._total_prot.get(key, ZERO)
        if (dept, key) not in self._prot:
            return idle - total
        return idle - (total - self._prot[(dept, key)] + self._ug_sum[(dept, key)])

    def department_lendable_value(self, dept: str, key: Key) -> float:
        """department_lendable(dept, key).value, in floats with Amount's exact rules (each
        step rounded to 1e-9; unlimited absorbs in +, x - unlimited = 0): the quota view asks
        this after every admission in a flavor, and four Amount objects per answer showed."""
        idle = _fsub(self.capacity.get(key, ZERO).value, self.region_usage.get(key, ZERO).value)
        total = self._total_prot.get(key, ZERO).value
        prot = self._prot.get((dept, key))
        if prot is None:
            return _fsub(idle, total)
        return _fsub(idle, _fadd(_fsub(total, prot.value), self._ug_sum[(dept, key)].value))

    def lendable_if_removed(self, pid: str, key: Key, removed: Mapping[str, Amount]) -> Amount:
        """Invariant: equals lendable_to(pid) after removing `removed` usage per department,
        provided each removal leaves its project at or above its own guarantee (as preemption
        victims do), so projects' unused guarantees do not change. No what-if on the tree."""
        dept = self.dept_of.get(pid, "")
        idle = self.capacity.get(key, ZERO) - self.region_usage.get(key, ZERO)
        total = self._total_prot.get(key, ZERO)
        for e in sorted(removed):
            r = removed[e]
            idle = idle + r
            if e != dept and (e, key) in self._prot:
                own = (self.department_spec(e, key).guaranteed - (self.used(e, key) - r)).clamp0()
                total = total + amax(own, self._ug_sum[(e, key)]) - self._prot[(e, key)]
        if (dept, key) in self._prot:
            own_p = (self.project_spec(pid, key).guaranteed - self.used(pid, key)).clamp0()
            protected = total - self._prot[(dept, key)] + self._ug_sum[(dept, key)] - own_p
        else:
            protected = total
        return (idle - protected).clamp0()

    def lendable_if_removed_value(self, pid: str, key: Key, removed: Mapping[str, float]) -> float:
        """lendable_if_removed(pid, key, {d: Amount.of(v)}).value, step for step in floats with
        Amount's rules (round9 after each + and -, unlimited absorbs, clamp at 0): preemption
        asks it for every victim set it finds, and the Amount version cost ~60 us a call."""
        dept = self.dept_of.get(pid, "")
        idle = _fsub(self.capacity.get(key, ZERO).value, self.region_usage.get(key, ZERO).value)
        total = self._total_prot.get(key, ZERO).value
        prot = self._prot
        for e in sorted(removed):
            r = round9(float(removed[e]))
            idle = _fadd(idle, r)
            if e != dept and (e, key) in prot:
                own = _clamp0(_fsub(self.department_spec(e, key).guaranteed.value, _fsub(self.used(e, key).value, r)))
                total = _fsub(_fadd(total, round9(max(own, self._ug_sum[(e, key)].value))), prot[(e, key)].value)
        if (dept, key) in prot:
            own_p = _clamp0(_fsub(self.project_spec(pid, key).guaranteed.value, self.used(pid, key).value))
            protected = _fsub(_fadd(_fsub(total, prot[(dept, key)].value), self._ug_sum[(dept, key)].value), own_p)
        else:
            protected = total
        return _clamp0(_fsub(idle, protected))

    def lendable_to(self, pid: str, key: Key) -> Amount:
        """Invariant: lendable = region capacity - region usage - others' unused guarantees."""
        idle = self.capacity.get(key, ZERO) - self.region_usage.get(key, ZERO)
        return (idle - self.protected_from(pid, key)).clamp0()

    # -- the check -----------------------------------------------------------------------
    def check(self, pid: str, key: Key, request: Amount, reclaimable: Amount = ZERO) -> Check:
        """Invariant: OK never takes a node over its limit nor borrows protected capacity."""
        dept = self.dept_of.get(pid, "")
        ps = self.project_spec(pid, key)
        ds = self.department_spec(dept, key)
        pu, du = self.used(pid, key), self.used(dept, key)
        after = pu + request
        if after > ps.limit:
            return Check(Verdict.LIMIT, level="project", in_use=pu, nominal=ps.nominal, limit=ps.limit,
                         available=(ps.limit - pu).clamp0())
        if du + request > ds.limit:
            return Check(Verdict.LIMIT, level="department", in_use=du, nominal=ds.nominal, limit=ds.limit,
                         available=(ds.limit - du).clamp0())
        borrowing = after > ps.nominal or du + request > ds.nominal
        within_g = after <= ps.guaranteed
        if within_g:
            return Check(Verdict.OK, borrowing, True, in_use=pu, nominal=ps.nominal, limit=ps.limit)
        lendable = self.lendable_to(pid, key)
        if request <= lendable:
            return Check(Verdict.OK, borrowing, False, in_use=pu, nominal=ps.nominal, limit=ps.limit,
                         available=lendable)
        level = "borrow" if after > ps.nominal else "reserved"
        verdict = Verdict.RECLAIM if request <= lendable + reclaimable else Verdict.LIMIT
        return Check(verdict, borrowing, False, level=level, in_use=pu, nominal=ps.nominal,
                     limit=ps.limit, available=lendable)


def headroom(tree: QuotaTree, pid: str, key: Key) -> Amount:
    """Invariant: headroom = the most pid could take now without any limit or borrow failing."""
    dept = tree.dept_of.get(pid, "")
    ps = tree.project_spec(pid, key)
    ds = tree.department_spec(dept, key)
    pu = tree.used(pid, key)
    room = amin(ps.limit - pu, ds.limit - tree.used(dept, key)).clamp0()
    own = (ps.guaranteed - pu).clamp0()
    return amin(room, amax(own, tree.lendable_to(pid, key)))
