"""The cycle's speed-ups must not change a single decision.

The digests below were computed with the code *before* the performance work (commit cc0712a)
on seeded benchmark scenarios: every admission, preemption and pending reason (code, message,
details, queue position, estimated start) and the result's dict order go into the hash. A
change that alters any decision or reason text fails here with the case's name.

The default policy's digests (fair-backfill-preempt) were re-pinned when its decisions changed
on purpose: work-aware preemption (hysteresis, minimum runtime, lost work bounded by the
preemptor's wait, victims ranked by work at risk, per-resource borrowing), aging with
reservations for aged jobs, lending operation capacity only to cheap victims, and victim
messages that name the resource and flavor; and again when innovation reclaim spared jobs
already preempted twice and bounded lost work in GPU-seconds too (Policy.reclaim_exempt_after,
Policy.loss_gpu_weighted), and bounded it by what the preemption saves (the wait until the
flavor frees the GPUs by itself, Policy.loss_bounded_by_release); and again when operation jobs
could overflow into idle innovation capacity and lent operation capacity went only to jobs of at
most 24 expected GPU-hours (Policy.operation_overflow, Policy.lend_max_gpu_hours; with both set
back to their old values the old digests still come out: test_default_without_the_new_rules). fifo keeps all its digests; fair and fair-backfill
keep their bare ones (decisions and codes identical) and had their explain digests re-pinned
once, when estimated starts became a forward simulation of the queue (scheduler.eta).

The fast paths that replace library calls (round9, make_reason, department_lendable_value)
are also checked against what they replace.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import pytest

from quotas.amount import Amount, round9
from scheduler.sim.bench import NOW, SMALL, Scenario, build_snapshot
from scheduler.cycle import _Cycle, run_cycle
from scheduler.model import POLICIES, CycleResult, PendingReason, ReasonCode
from scheduler.reasons import make_reason

MID7 = Scenario(nodes=150, projects=40, running=300, pending=1500, seed=7)
FULL = Scenario()

# (scenario name, policy, explain) -> digest from the code before the speed-ups (default: re-pinned)
# The explain digests of fair and fair-backfill-preempt were re-pinned when estimated starts of
# policies that hold nothing for a blocked job became a greedy play of the queue
# (scheduler.eta._greedy_estimates): only estimates and the messages quoting them changed; every
# bare digest (admissions, preemptions, reason codes) is unchanged.
PINNED = {
    ("small", "fifo", True): "7def829f04087f3e",
    ("small", "fifo", False): "555f6f688ebfb2cf",
    ("small", "fair", True): "4c4a9d9b5baf97c5",
    ("small", "fair", False): "b49515d2ae7c6cdb",
    ("small", "fair-backfill", True): "34f59e1c34faab18",
    ("small", "fair-backfill", False): "cc8889a4a8141d6a",
    ("small", "fair-backfill-preempt", True): "396403d813948c33",
    ("small", "fair-backfill-preempt", False): "fd3fdc57902f68e7",
    ("mid7", "fifo", True): "84ba6f5fbce267a6",
    ("mid7", "fifo", False): "cebf6067a129771f",
    ("mid7", "fair", True): "a09ef604c45e6644",
    ("mid7", "fair", False): "b1a46e0767489e24",
    ("mid7", "fair-backfill", True): "7692fb7ac88ae4a3",
    ("mid7", "fair-backfill", False): "f55e04f4aedcd070",
    ("mid7", "fair-backfill-preempt", True): "6e4d2fdabe6266da",
    ("mid7", "fair-backfill-preempt", False): "b76775276ec68e7c",
    ("full", "fair-backfill-preempt", True): "f6a3fdbb3868a771",
    ("full", "fair-backfill-preempt", False): "581e28301bbef510",
}
SCENARIOS = {"small": SMALL, "mid7": MID7, "full": FULL}
_SNAPS: dict[str, object] = {}


def digest(res: CycleResult) -> str:
    h = hashlib.sha256()
    for a in res.admissions:
        h.update(repr(a).encode())
    for p in res.preemptions:
        h.update(repr(p).encode())
    for job_id, reason in res.pending.items():  # dict order is part of the output
        h.update(job_id.encode())
        h.update(repr(reason).encode())
    h.update(repr(res.stats).encode())
    return h.hexdigest()[:16]


def snapshot(name: str):
    if name not in _SNAPS:
        _SNAPS[name] = build_snapshot(SCENARIOS[name])
    return _SNAPS[name]


@pytest.mark.parametrize("case", sorted(PINNED), ids=lambda c: f"{c[0]}-{c[1]}-{'explain' if c[2] else 'bare'}")
def test_decisions_identical_to_before_the_speedups(case):
    name, policy, explain = case
    res = run_cycle(snapshot(name), NOW, replace(POLICIES[policy], explain=explain))
    assert digest(res) == PINNED[case]


OLD_DEFAULT = {
    ("small", True): "fadcfd885a3b63b3", ("small", False): "2bb6ae5b2e1cbffc",
    ("mid7", True): "be17f27664ea2ded", ("mid7", False): "9c033efa4ad5921a",
    ("full", True): "b8029a9e8510026f", ("full", False): "5203570e374b4d89",
}


@pytest.mark.parametrize("case", sorted(OLD_DEFAULT), ids=lambda c: f"{c[0]}-{'explain' if c[1] else 'bare'}")
def test_default_without_the_new_rules(case):
    """Operation overflow and the lending limit change decisions only through themselves."""
    name, explain = case
    policy = replace(POLICIES["fair-backfill-preempt"], explain=explain, operation_overflow=False,
                     lend_max_gpu_hours=math.inf)
    assert digest(run_cycle(snapshot(name), NOW, policy)) == OLD_DEFAULT[case]


@pytest.mark.parametrize("x", [0.0, -0.0, 1.0, -3.0, 8.0, 1e15, 2.0**60, 0.1, 1 / 3, -2.5e-10, 1234.5678901234,
                               4.9999999995, math.inf, -math.inf])
def test_round9_equals_round(x):
    got, want = round9(x), round(x, 9)
    assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


def test_amount_arithmetic_matches_plain_rounding():
    a, b = Amount.of(2.5), Amount.of(1 / 3)
    assert (a + b).value == round(2.5 + round(1 / 3, 9), 9)
    assert (a - b).value == round(2.5 - round(1 / 3, 9), 9)
    assert Amount.of(7) == Amount(7.0) and hash(Amount.of(7)) == hash(Amount(7.0))


def test_make_reason_equals_constructor():
    d = {"requested": 4}
    built = make_reason(ReasonCode.NO_CAPACITY, "text", d, 3, 12.0)
    assert built == PendingReason(ReasonCode.NO_CAPACITY, "text", d, 3, 12.0)
    with pytest.raises(AttributeError):
        built.code = ReasonCode.FRAGMENTED  # still frozen


def test_department_lendable_value_matches_tree():
    cyc = _Cycle(snapshot("small"), NOW, POLICIES["fair-backfill-preempt"])
    tree = cyc.tree
    keys = set(tree.capacity) | {k for (_o, k) in tree.usage}
    depts = sorted(set(tree.dept_of.values())) + ["no-such-department"]
    checked = 0
    for dept in depts:
        for key in sorted(keys, key=str):
            assert tree.department_lendable_value(dept, key) == tree.department_lendable(dept, key).value
            checked += 1
    assert checked > 10


def test_lendable_if_removed_value_matches_tree():
    import random

    from quotas.amount import Amount as A

    cyc = _Cycle(snapshot("mid7"), NOW, POLICIES["fair-backfill-preempt"])
    tree = cyc.tree
    rng = random.Random(3)
    depts = sorted(set(tree.dept_of.values()))
    keys = sorted({k for (_o, k) in tree.usage if _o in tree.dept_of}, key=str)
    pids = sorted(tree.dept_of)
    for _ in range(300):
        pid, key = rng.choice(pids), rng.choice(keys)
        removed = {d: rng.choice([1.0, 2.0, 8.0, 0.5, 1 / 3, 64.0]) for d in rng.sample(depts, rng.randint(0, 3))}
        want = tree.lendable_if_removed(pid, key, {d: A.of(v) for d, v in removed.items()}).value
        assert tree.lendable_if_removed_value(pid, key, removed) == want
