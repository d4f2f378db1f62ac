"""The cycle's cached float view of quotas agrees with the Amount-based QuotaTree."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quotas.amount import UNLIMITED, Amount
from quotas.tree import QuotaTree, Verdict
from scheduler.model import Flavor
from scheduler.quota_view import QuotaView

FL = Flavor("innovation", "A100")
K = (FL, "gpus")
PROJECTS = {"a": "d", "b": "d", "c": "e"}

spec_st = st.tuples(st.integers(0, 6), st.integers(0, 6), st.sampled_from([None, 0, 4, 12])).map(
    lambda t: (t[0], t[0] + t[1], None if t[2] is None else max(t[2], t[0] + t[1])))


def _spec(t):
    from scheduler.model import QuotaSpec
    g, n, lim = t
    return QuotaSpec(Amount.of(g), Amount.of(n), UNLIMITED if lim is None else Amount.of(lim))


@settings(max_examples=150, deadline=None)
@given(specs=st.fixed_dictionaries({p: st.one_of(st.none(), spec_st) for p in PROJECTS}),
       dept_spec=st.one_of(st.none(), spec_st),
       adds=st.lists(st.tuples(st.sampled_from(sorted(PROJECTS)), st.integers(1, 4)), max_size=6),
       who=st.sampled_from(sorted(PROJECTS)), request=st.integers(1, 10))
def test_view_matches_tree(specs, dept_spec, adds, who, request) -> None:
    tree = QuotaTree({K: Amount.of(16)}, {"d": {K: _spec(dept_spec)}} if dept_spec else {},
                     {p: (d, {K: _spec(specs[p])} if specs[p] else {}) for p, d in PROJECTS.items()})
    view = QuotaView(tree, [FL], {K})
    view.check(who, 0, (float(request), 0.0, 0.0))  # warm the caches, then change usage through the view
    for p, u in adds:
        view.add(p, 0, (float(u), 0.0, 0.0))
    want = tree.check(who, K, Amount.of(request))
    verdict, borrowing, within_g = view.check(who, 0, (float(request), 0.0, 0.0))
    assert verdict is (Verdict.OK if want.verdict is Verdict.OK else Verdict.LIMIT)
    if verdict is Verdict.OK:
        assert (borrowing, within_g) == (want.borrowing, want.within_guarantee)
