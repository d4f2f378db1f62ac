"""Quota tree: validation findings, usage bubbling, borrowing from lendable capacity, limits."""

from __future__ import annotations

import pytest

from quotas.amount import UNLIMITED, Amount
from quotas.tree import QuotaTree, Spec, Verdict, headroom, validate_tree

A = Amount.of
K = ("innovation/A100", "gpus")  # the tree treats flavors as opaque keys
CAP = {K: A(16)}


def spec(nominal: float | None = 0, guaranteed: float = 0, limit: float | None = None) -> Spec:
    return Spec(A(guaranteed), A(nominal), UNLIMITED if limit is None else A(limit))


def tree(projects: dict, departments: dict | None = None, usage: dict | None = None, cap: dict = CAP) -> QuotaTree:
    """projects: {pid: (dept, Spec or None)}."""
    return QuotaTree(cap, {d: {K: s} for d, s in (departments or {}).items()},
                     {p: (d, {K: s} if s else {}) for p, (d, s) in projects.items()},
                     {p: {K: A(u)} for p, u in (usage or {}).items()})


VALIDATION = {
    "valid": (dict(projects={"a": ("d", spec(8, 4, 12))}, departments={"d": spec(16, 8)}), []),
    "guarantee_above_nominal": (dict(projects={"a": ("d", spec(4, 6))}), ["GUARANTEE_ABOVE_NOMINAL"]),
    "nominal_above_limit": (dict(projects={"a": ("d", spec(8, 0, 4))}), ["NOMINAL_ABOVE_LIMIT"]),
    "children_guarantees_exceed_department": (
        dict(projects={"a": ("d", spec(8, 6)), "b": ("d", spec(8, 6))}, departments={"d": spec(10, 10)}),
        ["GUARANTEES_EXCEED_PARENT"]),
    "departments_exceed_region": (
        dict(projects={}, departments={"d": spec(12, 12), "e": spec(8, 8)}), ["GUARANTEES_EXCEED_PARENT"]),
    "projects_without_department_spec_count_at_region": (
        dict(projects={"a": ("d", spec(10, 10)), "b": ("e", spec(10, 10))}), ["GUARANTEES_EXCEED_PARENT"]),
}


@pytest.mark.parametrize("name", sorted(VALIDATION))
def test_validation(name: str) -> None:
    kw, codes = VALIDATION[name]
    problems = validate_tree(CAP, {d: {K: s} for d, s in kw.get("departments", {}).items()},
                             {p: (d, {K: s}) for p, (d, s) in kw["projects"].items()})
    assert [p.code for p in problems] == codes
    assert all(p.message.endswith(".") for p in problems)


# name: (projects, departments, usage, who, request, verdict, borrowing, level)
CHECKS = {
    "within_guarantee": ({"a": ("d", spec(8, 4))}, None, {}, "a", 4, Verdict.OK, False, ""),
    "within_nominal": ({"a": ("d", spec(8, 4))}, None, {}, "a", 8, Verdict.OK, False, ""),
    "borrow_idle": ({"a": ("d", spec(8, 4))}, None, {}, "a", 12, Verdict.OK, True, ""),
    "project_limit": ({"a": ("d", spec(8, 4, 10))}, None, {}, "a", 12, Verdict.LIMIT, False, "project"),
    "department_limit": ({"a": ("d", spec(8))}, {"d": spec(8, 0, 6)}, {}, "a", 8, Verdict.LIMIT, False, "department"),
    "no_spec_may_only_borrow": ({"a": ("d", None)}, None, {}, "a", 4, Verdict.OK, True, ""),
    "cannot_borrow_others_unused_guarantee": (
        {"a": ("d", None), "g": ("e", spec(12, 12))}, None, {}, "a", 8, Verdict.LIMIT, True, "borrow"),
    "borrow_what_guarantees_leave": (
        {"a": ("d", None), "g": ("e", spec(12, 12))}, None, {}, "a", 4, Verdict.OK, True, ""),
    "sibling_guarantee_protected_too": (
        {"a": ("d", None), "s": ("d", spec(10, 10))}, None, {}, "a", 8, Verdict.LIMIT, True, "borrow"),
    "used_guarantee_no_longer_protected": (
        {"a": ("d", None), "g": ("e", spec(12, 12))}, None, {"g": 12}, "a", 4, Verdict.OK, True, ""),
    "region_full": ({"a": ("d", None), "b": ("d", None)}, None, {"b": 14}, "a", 4, Verdict.LIMIT, True, "borrow"),
    "within_nominal_but_capacity_reserved": (
        {"a": ("d", spec(8)), "g": ("e", spec(12, 12))}, None, {}, "a", 8, Verdict.LIMIT, False, "reserved"),
    "department_over_its_nominal_is_borrowing": (
        {"a": ("d", spec(8)), "b": ("d", spec(8))}, {"d": spec(8)}, {"b": 4}, "a", 6, Verdict.OK, True, ""),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check(name: str) -> None:
    projects, departments, usage, who, request, verdict, borrowing, level = CHECKS[name]
    t = tree(projects, departments, usage)
    got = t.check(who, K, A(request))
    assert (got.verdict, got.borrowing, got.level) == (verdict, borrowing, level)
    # headroom agrees with the check at its boundary
    room = headroom(t, who, K)
    if verdict is Verdict.OK:
        assert A(request) <= room
    else:
        assert A(request) > room


def test_reclaim_verdict_when_borrowers_hold_the_capacity() -> None:
    t = tree({"owner": ("d", spec(8)), "b": ("e", None)}, usage={"b": 16})
    assert t.check("owner", K, A(8)).verdict is Verdict.LIMIT
    assert t.check("owner", K, A(8), reclaimable=A(16)).verdict is Verdict.RECLAIM


def test_usage_bubbles_up_and_undo_restores() -> None:
    t = tree({"a": ("d", spec(8, 4)), "b": ("d", spec(8, 4)), "c": ("e", spec(4, 2))}, usage={"c": 1})
    before = (t.used("a", K), t.used("d", K), t.region_usage[K], t.protected_from("c", K))
    undo = t.add_usage("a", {K: A(6)})
    assert (t.used("a", K), t.used("d", K), t.region_usage[K]) == (A(6), A(6), A(7))
    assert t.protected_from("c", K) == A(4)  # b's unused 4; a used its guarantee
    undo()
    assert (t.used("a", K), t.used("d", K), t.region_usage[K], t.protected_from("c", K)) == before


@pytest.mark.parametrize("usage", [{}, {"a": 3}, {"a": 9, "b": 1}, {"s": 2, "x": 5}],
                         ids=["empty", "under_guarantee", "over_guarantee", "mixed"])
def test_incremental_protection_matches_recount(usage: dict) -> None:
    """The O(1) bookkeeping equals a from-scratch count of others' unused guarantees."""
    projects = {"a": ("d", spec(8, 4)), "b": ("d", spec(8, 2)), "s": ("e", spec(4, 3)), "x": ("f", None)}
    departments = {"e": spec(8, 6)}
    incremental = tree(projects, departments)
    for p, u in usage.items():
        incremental.add_usage(p, {K: A(u)})
    fresh = tree(projects, departments, usage)
    for p in projects:
        assert incremental.protected_from(p, K) == fresh.protected_from(p, K)
        dept = projects[p][0]
        own = (fresh.project_spec(p, K).guaranteed - fresh.used(p, K)).clamp0()
        assert fresh.lendable_to(p, K) == (fresh.department_lendable(dept, K) + own).clamp0()


@pytest.mark.parametrize("removed", [{"b": 2}, {"b": 4, "x": 3}, {"x": 5}],
                         ids=["own_department", "two_departments", "department_with_guarantee"])
def test_lendable_if_removed_matches_what_if(removed: dict) -> None:
    """The closed form equals a real what-if (usage removed from projects above guarantee)."""
    projects = {"a": ("d", spec(4, 2)), "b": ("d", spec(2, 0)), "x": ("e", spec(4, 1)), "y": ("e", None)}
    t = tree(projects, {"e": spec(8, 6)}, usage={"b": 6, "x": 7, "y": 1})
    by_dept: dict[str, Amount] = {}
    for p, u in removed.items():
        by_dept[projects[p][0]] = by_dept.get(projects[p][0], A(0)) + A(u)
    closed = t.lendable_if_removed("a", K, by_dept)
    undos = [t.add_usage(p, {K: A(-u)}) for p, u in removed.items()]
    assert closed == t.lendable_to("a", K)
    for u in undos:
        u()
