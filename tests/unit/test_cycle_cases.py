"""Table of named scheduling cases: one snapshot in, the decisions we expect out.

Every case also checks the cycle-wide rules: each pending job is either admitted or has
exactly one reason, admitted gangs have all their workers, and no GPU index is handed out twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable

import pytest

from scheduler import run_cycle
from scheduler.model import (
    POLICIES, CycleResult, Flavor, NodeState, Policy, ReasonCode as RC, Snapshot,
)
from tests.unit.schedkit import INNO as INNO_
from tests.unit.schedkit import OP, dept, job, node, project, q, running, snapshot

DEFAULT = POLICIES["fair-backfill-preempt"]
A100 = Flavor("innovation", "A100")
OPF = Flavor("operation", "A100")


@dataclass
class Case:
    snap: Snapshot
    admitted: set[str] = field(default_factory=set)
    codes: dict[str, RC] = field(default_factory=dict)
    preempted: set[str] = field(default_factory=set)
    policy: Policy = DEFAULT
    now: float = 10.0
    check: Callable[[CycleResult], None] | None = None


def _on(r: CycleResult, jid: str) -> list[tuple[str, tuple[int, ...]]]:
    a = next(a for a in r.admissions if a.job_id == jid)
    return [(p.node, p.gpu_indices) for p in a.placements]


def full(n: str, gpus: int = 8, project_id: str = "other", jid: str | None = None, start: float = 0.0,
         runtime: float = 3600.0, borrowing: bool = False, **kw):
    """A running job that fills `gpus` GPUs of node n (indices 0..gpus-1)."""
    j = job(jid or f"run-{n}", gpus=gpus, project=project_id, runtime=runtime, **kw)
    return running(j, (n, tuple(range(gpus))), start=start, borrowing=borrowing)


# --------------------------------------------------------------------------------------------
# placement
def c_fits_single_node():
    def check(r):
        assert _on(r, "a") == [("n1", (0, 1))]
    return Case(snapshot([node("n1")], [job("a", gpus=2)]), {"a"}, check=check)


def c_best_fit_least_leftover():
    def check(r):
        assert _on(r, "a") == [("n2", (6, 7))]  # n2 has exactly 2 free: least leftover
    return Case(snapshot([node("n1"), node("n2")], [job("a", gpus=2)], [full("n2", 6)]), {"a"}, check=check)


def c_gang_fewest_nodes():
    def check(r):
        assert {n for n, _ in _on(r, "g")} == {"n1"} and len(_on(r, "g")) == 2
    return Case(snapshot([node("n1"), node("n2"), node("n3")], [job("g", gpus=4, workers=2)]), {"g"}, check=check)


def c_gang_spans_nodes_when_needed():
    def check(r):
        assert sorted(n for n, _ in _on(r, "g")) == ["n1", "n2", "n3"]
    return Case(snapshot([node("n1"), node("n2"), node("n3")], [job("g", gpus=8, workers=3)]), {"g"}, check=check)


def c_gang_atomic_all_or_nothing():
    return Case(snapshot([node("n1"), node("n2")], [job("g", gpus=8, workers=3)]), set(), {"g": RC.NO_CAPACITY},
                check=lambda r: not r.admissions or pytest.fail("partial gang"))


def c_gpu_indices_avoid_running():
    def check(r):
        assert _on(r, "a") == [("n1", (0, 3))]
    busy = running(job("busy", gpus=2, project="other"), ("n1", (1, 2)))
    return Case(snapshot([node("n1", gpus=4)], [job("a", gpus=2)], [busy]), {"a"}, check=check)


def c_running_without_gpu_indices_still_counts():
    # a snapshot that lost GPU indices: 3 GPUs are in use somewhere on n1; the job gets the rest
    busy = running(job("busy", gpus=3, project="other"), ("n1", ()))
    snap = snapshot([node("n1", gpus=4)], [job("a", gpus=1, submit=0), job("b", gpus=1, submit=1)], [busy])
    return Case(snap, {"a"}, {"b": RC.NO_CAPACITY}, check=lambda r: _on(r, "a") == [("n1", (3,))] or pytest.fail())


def c_fragmented_vs_no_capacity():
    snap = snapshot([node("n1"), node("n2")], [job("big", gpus=8, submit=0), job("huge", gpus=8, workers=2, submit=1)],
                    [full("n1", 4), full("n2", 4)])
    return Case(snap, set(), {"big": RC.FRAGMENTED, "huge": RC.NO_CAPACITY})


def c_cpu_memory_respected():
    snap = snapshot([node("n1", cpus=4), node("n2", cpus=64)], [job("a", gpus=1, cpus=8)])
    return Case(snap, {"a"}, check=lambda r: _on(r, "a")[0][0] == "n2" or pytest.fail("cpu ignored"))


# --------------------------------------------------------------------------------------------
# node states and GPU models
def _state_case(state: NodeState):
    def make():
        snap = snapshot([node("n1", state=state), node("n2", gpus=2)], [job("a", gpus=4), job("b", gpus=2, submit=1)])
        return Case(snap, {"b"}, {"a": RC.NO_CAPACITY}, check=lambda r: _on(r, "b")[0][0] == "n2" or pytest.fail())
    return make


def c_gpu_model_unavailable():
    return Case(snapshot([node("n1")], [job("a", models=("H100",))]), set(), {"a": RC.GPU_MODEL_UNAVAILABLE})


def c_gpu_model_only_on_drained_node():
    snap = snapshot([node("n1"), node("h1", model="H100", state=NodeState.DRAINING)], [job("a", models=("H100",))])
    return Case(snap, set(), {"a": RC.GPU_MODEL_UNAVAILABLE})


def c_gpu_model_constraint_respected():
    snap = snapshot([node("n1"), node("h1", model="H100")], [job("a", gpus=2, models=("H100",))])
    return Case(snap, {"a"}, check=lambda r: _on(r, "a")[0][0] == "h1" or pytest.fail())


def _with_data(j, *nodes):
    return replace(j, nodes=frozenset(nodes))


def c_data_on_one_node_places_there():
    snap = snapshot([node("n1"), node("n2")], [_with_data(job("a", gpus=2), "n2")])
    return Case(snap, {"a"}, check=lambda r: _on(r, "a")[0][0] == "n2" or pytest.fail())


def c_data_gang_stays_on_the_data_nodes():
    snap = snapshot([node("n1"), node("n2"), node("n3")], [_with_data(job("a", gpus=8, workers=2), "n2", "n3")])
    return Case(snap, {"a"}, check=lambda r: sorted(n for n, _ in _on(r, "a")) == ["n2", "n3"] or pytest.fail())


def c_data_only_on_a_drained_node():
    snap = snapshot([node("n1"), node("n2", state=NodeState.DRAINING)], [_with_data(job("a"), "n2")])
    return Case(snap, set(), {"a": RC.DATA_UNAVAILABLE},
                check=lambda r: r.pending["a"].details["nodes"] == ["n2"] or pytest.fail())


def c_data_node_full_waits_instead_of_going_elsewhere():
    snap = snapshot([node("n1"), node("n2")], [_with_data(job("a", gpus=8), "n2")], [full("n2", 8, "ouh-liver")])
    return Case(snap, set())  # n1 is free, but the data is on n2


def _pod(id: str, image: str, gpus: int = 8, **kw):
    return replace(node(id, gpus=gpus, **kw), image=image)


def _img(j, image: str):
    return replace(j, image=image)


def c_image_job_only_on_its_image_pods():
    # general n1 is free and first by name; the job goes to the pod of its own image
    snap = snapshot([node("a1"), _pod("p-other", "seg"), _pod("p-mine", "llm")], [_img(job("a", gpus=2), "llm")])
    return Case(snap, {"a"}, check=lambda r: _on(r, "a")[0][0] == "p-mine" or pytest.fail())


def c_general_job_never_on_an_image_pod():
    snap = snapshot([node("n1"), _pod("p1", "llm")], [job("a", gpus=8), job("b", gpus=8, submit=1)])
    return Case(snap, {"a"}, {"b": RC.NO_CAPACITY},
                check=lambda r: _on(r, "a")[0][0] == "n1" or pytest.fail())


def c_image_pod_takes_one_worker_only():
    # two 1-GPU jobs of the same image, one 8-GPU pod: one job per pod, the other waits
    snap = snapshot([_pod("p1", "llm")], [_img(job("a"), "llm"), _img(job("b", submit=1), "llm")])
    return Case(snap, {"a"}, {"b": RC.NO_CAPACITY})


def c_image_gang_one_worker_per_pod():
    pods = [_pod(f"p{i}", "llm", gpus=2) for i in range(3)]
    snap = snapshot(pods, [_img(job("a", gpus=1, workers=3), "llm")])
    return Case(snap, {"a"}, check=lambda r: len({n for n, _ in _on(r, "a")}) == 3 or pytest.fail())


def c_image_pod_holding_work_takes_no_more():
    snap = snapshot([_pod("p1", "llm")], [_img(job("a"), "llm")],
                    [running(_img(job("r", project="other"), "llm"), ("p1", (0,)))])
    return Case(snap, set(), {"a": RC.NO_CAPACITY},
                check=lambda r: r.pending["a"].details["free"] == 0 or pytest.fail())


def c_image_without_a_pod_waits_for_capacity():
    # no pod of its image yet (the scaler starts one on NO_CAPACITY); free GPUs elsewhere not counted
    snap = snapshot([node("n1"), _pod("p1", "seg")], [_img(job("a"), "llm")])
    return Case(snap, set(), {"a": RC.NO_CAPACITY},
                check=lambda r: r.pending["a"].details["free"] == 0 or pytest.fail())


def c_never_fits_gpus_per_worker():
    return Case(snapshot([node("n1")], [job("a", gpus=16)]), set(), {"a": RC.NEVER_FITS},
                check=lambda r: r.pending["a"].details["largest_node"] == 8 or pytest.fail())


def c_operation_job_on_innovation_pool_never_fits():
    return Case(snapshot([node("n1")], [job("a", cls=OP, pool="innovation")]), set(), {"a": RC.NEVER_FITS})


# --------------------------------------------------------------------------------------------
# quota: borrow, limits, guarantees
def c_borrow_idle_capacity():
    snap = snapshot([node("n1")], [job("a", gpus=8, project="p")], projects=[project("p", nominal=2)])
    return Case(snap, {"a"}, check=lambda r: r.admissions[0].borrowing or pytest.fail("not flagged borrowing"))


def c_within_nominal_not_borrowing():
    snap = snapshot([node("n1")], [job("a", gpus=2, project="p")], projects=[project("p", nominal=2)])
    return Case(snap, {"a"}, check=lambda r: not r.admissions[0].borrowing or pytest.fail())


def c_project_limit():
    snap = snapshot([node("n1"), node("n2")], [job("a", gpus=8, project="p")], projects=[project("p", nominal=2, limit=4)])

    def check(r):
        d = r.pending["a"].details
        assert (d["level"], d["limit"], d["requested"], d["in_use"]) == ("project", 4, 8, 0)
    return Case(snap, set(), {"a": RC.QUOTA_LIMIT}, check=check)


def c_department_limit():
    snap = snapshot([node("n1")], [job("a", gpus=4, project="p")], projects=[project("p")],
                    departments=[dept("ouh", quotas={(A100, "gpus"): q(4, 0, 2)})])
    return Case(snap, set(), {"a": RC.QUOTA_LIMIT},
                check=lambda r: r.pending["a"].details["level"] == "department" or pytest.fail())


def c_borrowing_cannot_take_unused_guarantee():
    snap = snapshot([node("n1")], [job("b", gpus=4, project="borrower")],
                    projects=[project("owner", nominal=8, guaranteed=6), project("borrower")])
    return Case(snap, set(), {"b": RC.QUOTA_LIMIT})


def c_borrowing_takes_what_guarantees_leave():
    snap = snapshot([node("n1")], [job("b", gpus=2, project="borrower")],
                    projects=[project("owner", nominal=8, guaranteed=6), project("borrower")])
    return Case(snap, {"b"})


# --------------------------------------------------------------------------------------------
# preemption (the reclaim mechanics: the preemptor has waited past the default's hysteresis and
# its victims have run past the minimum runtime, so only the rules under test decide)
# Victims of a nominal reclaim run for a day: a job whose GPUs free by themselves before the
# preemptor would gain anything is spared (Policy.loss_bounded_by_release).
DAY = 86400.0
LATE = DEFAULT.reclaim_after_s + DEFAULT.min_runtime_s + 60.0


def c_reclaim_nominal_from_borrower():
    snap = snapshot([node("n1")], [job("mine", gpus=8, project="owner")],
                    [full("n1", 8, "borrower", jid="lent", borrowing=True, runtime=DAY)],
                    projects=[project("owner", nominal=8), project("borrower")])

    def check(r):
        assert r.preemptions[0].code == "RECLAIM_NOMINAL" and r.preemptions[0].for_job_id == "mine"
    return Case(snap, set(), {"mine": RC.PREEMPTING}, {"lent"}, check=check, now=LATE)


def c_guarantee_protects_victim():
    snap = snapshot([node("n1")], [job("mine", gpus=8, project="owner")],
                    [full("n1", 8, "holder", jid="safe", borrowing=True)],
                    projects=[project("owner", nominal=8), project("holder", nominal=8, guaranteed=8)])
    return Case(snap, set(), {"mine": RC.NO_CAPACITY})


def c_borrower_cannot_reclaim():
    snap = snapshot([node("n1")], [job("more", gpus=8, project="b2")],
                    [full("n1", 8, "b1", jid="lent", borrowing=True)], projects=[project("b1"), project("b2")])
    return Case(snap, set(), {"more": RC.NO_CAPACITY})


def c_minimal_victims_on_the_right_node():
    # n1 holds eight 1-GPU borrowers (oldest first), n2 two 4-GPU borrowers; a 2-GPU job needs
    # victims on ONE node: two 1-GPU jobs of n1 or one 4-GPU job of n2, never one of each
    runs = [running(job(f"v{i}", gpus=1, project="b", runtime=DAY), ("n1", (i,)), start=float(i), borrowing=True)
            for i in range(8)]
    runs += [running(job("w0", gpus=4, project="b", runtime=DAY), ("n2", (0, 1, 2, 3)), borrowing=True),
             running(job("w1", gpus=4, project="c", runtime=DAY), ("n2", (4, 5, 6, 7)), borrowing=True)]
    snap = snapshot([node("n1"), node("n2")], [job("mine", gpus=2, project="owner")], runs,
                    projects=[project("owner", nominal=8), project("b"), project("c")])

    def check(r):
        victims = {p.job_id for p in r.preemptions}
        assert len(victims) in (1, 2)
        nodes = {next(x for x in runs if x.job.id == v).placements[0].node for v in victims}
        assert len(nodes) == 1, "victims spread over two nodes do not help a single-node job"
    return Case(snap, set(), {"mine": RC.PREEMPTING}, None, check=check, now=LATE)


def c_victim_preference_least_work_lost():
    runs = [full("n1", 8, "b", jid="old", start=0.0, borrowing=True, runtime=DAY),
            full("n2", 8, "b", jid="young", start=9.0, borrowing=True, runtime=DAY)]
    snap = snapshot([node("n1"), node("n2")], [job("mine", gpus=8, project="owner")], runs,
                    projects=[project("owner", nominal=8), project("b")])
    return Case(snap, set(), {"mine": RC.PREEMPTING}, {"young"}, now=LATE)


def c_victim_preference_lowest_priority():
    runs = [full("n1", 8, "b", jid="hi", start=9.0, borrowing=True, priority=5, runtime=DAY),
            full("n2", 8, "b", jid="lo", start=0.0, borrowing=True, priority=0, runtime=DAY)]
    snap = snapshot([node("n1"), node("n2")], [job("mine", gpus=8, project="owner")], runs,
                    projects=[project("owner", nominal=8), project("b")])
    return Case(snap, set(), {"mine": RC.PREEMPTING}, {"lo"}, now=LATE)


def c_victims_not_reused_in_same_cycle():
    snap = snapshot([node("n1")], [job("first", gpus=8, project="o1", submit=0), job("second", gpus=8, project="o2", submit=1),
                                   job("tiny", gpus=1, project="o3", submit=2)],
                    [full("n1", 8, "b", jid="lent", borrowing=True, runtime=DAY)],
                    projects=[project("o1", nominal=8), project("o2", nominal=8), project("o3", nominal=8), project("b")])

    def check(r):
        assert r.pending["first"].code is RC.PREEMPTING or r.pending["second"].code is RC.PREEMPTING
        assert len(r.preemptions) == 1
    return Case(snap, set(), {"tiny": RC.NO_CAPACITY}, {"lent"}, check=check, now=LATE)


def c_operation_reclaims_lent_capacity():
    snap = snapshot([node("o1", pool="operation")], [job("clinical", gpus=4, cls=OP, project="ops")],
                    [running(job("lent", gpus=8, project="res"), ("o1", tuple(range(8))), flavor=OPF, borrowing=True)],
                    projects=[project("ops", nominal=8, flavor=("operation", "A100")), project("res")])
    return Case(snap, set(), {"clinical": RC.PREEMPTING}, {"lent"},
                check=lambda r: r.preemptions[0].code == "RECLAIM_OPERATION" or pytest.fail())


def c_innovation_borrows_operation_pool_as_preemptible():
    snap = snapshot([node("o1", pool="operation")], [job("a", gpus=2, project="res")], projects=[project("res")])
    return Case(snap, {"a"}, check=lambda r: (r.admissions[0].borrowing and r.admissions[0].flavor == OPF) or pytest.fail())


def c_innovation_never_preempts_operation():
    snap = snapshot([node("o1", pool="operation")], [job("inno", gpus=8, project="res")],
                    [running(job("clin", gpus=8, project="ops", cls=OP), ("o1", tuple(range(8))), flavor=OPF, borrowing=True)],
                    projects=[project("ops", flavor=("operation", "A100")),
                              project("res", nominal=8, flavor=("operation", "A100"))])
    return Case(snap, set(), {"inno": RC.NO_CAPACITY})


def c_pool_that_does_not_lend():
    from scheduler.model import Pool, WorkloadClass
    pools = (Pool("innovation", WorkloadClass.INNOVATION), Pool("operation", WorkloadClass.OPERATION))
    snap = snapshot([node("o1", pool="operation")], [job("a", project="res"), job("b", project="res", pool="operation", submit=1)],
                    pools=pools)
    return Case(snap, set(), {"a": RC.NEVER_FITS, "b": RC.NEVER_FITS})


def c_operation_ordered_first():
    snap = snapshot([node("o1", pool="operation")], [job("inno", gpus=8, project="res", submit=0),
                                                     job("clin", gpus=8, cls=OP, project="ops", submit=5)])
    return Case(snap, {"clin"}, {"inno": RC.NO_CAPACITY})


def c_priority_preemption_within_project():
    snap = snapshot([node("n1")], [job("urgent", gpus=8, project="p", priority=5)],
                    [full("n1", 8, "p", jid="routine", priority=0)], projects=[project("p", nominal=8)])
    return Case(snap, set(), {"urgent": RC.PREEMPTING}, {"routine"}, policy=replace(DEFAULT, priority_preemption=True),
                check=lambda r: r.preemptions[0].code == "PRIORITY" or pytest.fail())


def c_no_priority_preemption_by_default():
    snap = snapshot([node("n1")], [job("urgent", gpus=8, project="p", priority=5)],
                    [full("n1", 8, "p", jid="routine", priority=0)], projects=[project("p", nominal=8)])
    return Case(snap, set(), {"urgent": RC.NO_CAPACITY})


# --------------------------------------------------------------------------------------------
# ordering and policies
def c_priority_orders_queue():
    snap = snapshot([node("n1")], [job("low", gpus=8, submit=0), job("high", gpus=8, priority=3, submit=5)])
    return Case(snap, {"high"}, {"low": RC.NO_CAPACITY})


def c_fair_share_prefers_lighter_project():
    snap = snapshot([node("n1"), node("n2")], [job("heavy-job", gpus=8, project="heavy", submit=0),
                                               job("light-job", gpus=8, project="light", submit=5)],
                    [full("n2", 8, "heavy", jid="heavy-run")])
    return Case(snap, {"light-job"}, {"heavy-job": RC.NO_CAPACITY})


def c_decayed_usage_counts_in_fair_share():
    snap = snapshot([node("n1")], [job("a", gpus=8, project="past-heavy", submit=0), job("b", gpus=8, project="fresh", submit=5)],
                    projects=[project("past-heavy", decayed=1e9), project("fresh")])
    return Case(snap, {"b"}, {"a": RC.NO_CAPACITY})


def c_fifo_head_of_line_blocking():
    snap = snapshot([node("n1")], [job("big", gpus=8, submit=0, project="p1"), job("small", gpus=1, submit=1, project="p2")],
                    [full("n1", 4)])
    return Case(snap, set(), {"big": RC.NO_CAPACITY, "small": RC.WAITING_FOR_HIGHER_PRIORITY}, policy=POLICIES["fifo"])


def c_fair_lets_small_jobs_through():
    snap = snapshot([node("n1")], [job("big", gpus=8, submit=0, project="p1"), job("small", gpus=1, submit=1, project="p2")],
                    [full("n1", 4)])
    return Case(snap, {"small"}, {"big": RC.NO_CAPACITY}, policy=POLICIES["fair"])


def c_max_admissions_cap():
    snap = snapshot([node("n1")], [job("a", submit=0), job("b", submit=1)])
    return Case(snap, {"a"}, {"b": RC.WAITING_FOR_HIGHER_PRIORITY}, policy=replace(DEFAULT, max_admissions=1))


# --------------------------------------------------------------------------------------------
# backfill
def _backfill_snap():
    # n1: 4 free now, the other 4 free at t=100; n2: full until t=5000. The head needs 8 on one node.
    return snapshot([node("n1"), node("n2")],
                    [job("head", gpus=8, submit=0, project="p1"),
                     job("long", gpus=2, submit=1, project="p2", runtime=10_000),
                     job("short", gpus=2, submit=2, project="p3", runtime=50)],
                    [full("n1", 4, jid="ends-soon", runtime=100), full("n2", 8, jid="ends-late", runtime=5000)])


def c_backfill_reservation_respected():
    def check(r):
        assert r.pending["head"].estimated_start == 100.0
    return Case(_backfill_snap(), {"short"}, {"head": RC.NO_CAPACITY, "long": RC.BACKFILL_RESERVATION},
                policy=POLICIES["fair-backfill"], check=check)


def c_without_backfill_long_job_jumps_ahead():
    return Case(_backfill_snap(), {"long", "short"}, {"head": RC.NO_CAPACITY}, policy=POLICIES["fair"])


def c_backfill_uses_nodes_reservation_does_not_need():
    snap = snapshot([node("n1"), node("n2"), node("n3", gpus=2)],
                    [job("head", gpus=8, submit=0, project="p1"),
                     job("long", gpus=2, submit=1, project="p2", runtime=10_000)],
                    [full("n1", 4, jid="ends-soon", runtime=100), full("n2", 8, jid="ends-late", runtime=5000)])
    return Case(snap, {"long"}, {"head": RC.NO_CAPACITY}, policy=POLICIES["fair-backfill"],
                check=lambda r: _on(r, "long")[0][0] == "n3" or pytest.fail())


# --------------------------------------------------------------------------------------------
# budgets
def c_budget_exhausted():
    snap = snapshot([node("n1")], [job("a", gpus=2, project="p", runtime=3600)], projects=[project("p", budget=10, spent=9)])

    def check(r):
        d = r.pending["a"].details
        assert d["left"] == 1 and d["requested_gpu_hours"] == 2
    return Case(snap, set(), {"a": RC.BUDGET_EXHAUSTED}, check=check)


def c_budget_exempt_operation_replica_starts_over_budget():
    # an operation service's min replica (budget_exempt) starts although the budget is spent;
    # an ordinary job of the same project, ordered after it, still waits for budget
    rep = replace(job("rep", gpus=2, project="p", runtime=3600, submit=0), budget_exempt=True)
    snap = snapshot([node("n1")], [rep, job("a", gpus=2, project="p", runtime=3600, submit=1)],
                    projects=[project("p", budget=10, spent=9)])
    return Case(snap, {"rep"}, {"a": RC.BUDGET_EXHAUSTED})


def c_budget_counts_running_reservation():
    snap = snapshot([node("n1")], [job("a", gpus=2, project="p", runtime=3600)],
                    [full("n1", 4, "p", jid="r", start=0.0, runtime=7200)], projects=[project("p", budget=9)])
    return Case(snap, set(), {"a": RC.BUDGET_EXHAUSTED}, now=0.0)  # 4 x 2h reserved + 2 > 9


def c_budget_no_overrun_within_cycle():
    snap = snapshot([node("n1")], [job("a", gpus=1, project="p", runtime=3 * 3600, submit=0),
                                   job("b", gpus=1, project="p", runtime=3 * 3600, submit=1)],
                    projects=[project("p", budget=4)])
    return Case(snap, {"a"}, {"b": RC.BUDGET_EXHAUSTED})


def c_department_budget():
    snap = snapshot([node("n1")], [job("a", gpus=1, project="p")], projects=[project("p")],
                    departments=[dept("ouh", budget=5, spent=5)])
    return Case(snap, set(), {"a": RC.BUDGET_EXHAUSTED})


def c_budget_never_kills_running():
    snap = snapshot([node("n1")], [job("a", gpus=8, project="p", priority=9)],
                    [full("n1", 8, "p", jid="r", runtime=10 * 3600)], projects=[project("p", budget=1, spent=50)])
    return Case(snap, set(), {"a": RC.BUDGET_EXHAUSTED}, set(), policy=replace(DEFAULT, priority_preemption=True))


# --------------------------------------------------------------------------------------------
# reasons
def c_reason_numbers_and_message():
    snap = snapshot([node("n1")], [job("x", gpus=1, submit=0), job("a", gpus=8, submit=1)], [full("n1", 6)])

    def check(r):
        reason = r.pending["a"]
        d = reason.details
        assert (d["requested"], d["free"], d["in_use"], reason.queue_position) == (8, 1, 7, 2)
        # at 3600 the running job frees 6, but 8 together come only when "x" (started now) ends too
        assert reason.message.endswith(".") and "8 GPUs" in reason.message and reason.estimated_start == 3610.0
    return Case(snap, {"x"}, {"a": RC.NO_CAPACITY}, check=check)


def c_explain_false_only_codes():
    snap = snapshot([node("n1")], [job("a", gpus=16)])
    return Case(snap, set(), {"a": RC.NEVER_FITS}, policy=replace(DEFAULT, explain=False),
                check=lambda r: r.pending["a"].message == "" or pytest.fail())


CASES: dict[str, Callable[[], Case]] = {
    name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_") and callable(fn)
}
CASES.update({f"{s.value}_node_gets_nothing": _state_case(s) for s in (NodeState.DRAINING, NodeState.CORDONED,
                                                                       NodeState.UNHEALTHY)})


def _gpu_ids_unique(snap: Snapshot, r: CycleResult) -> None:
    used: set[tuple[str, int]] = set()
    for run in snap.running:
        for p in run.placements:
            used |= {(p.node, i) for i in p.gpu_indices}
    for a in r.admissions:
        for p in a.placements:
            for i in p.gpu_indices:
                assert (p.node, i) not in used, f"GPU {p.node}:{i} handed out twice"
                used.add((p.node, i))


@pytest.mark.parametrize("name", sorted(CASES))
def test_cycle_case(name: str) -> None:
    c = CASES[name]()
    r = run_cycle(c.snap, c.now, c.policy)
    admitted = {a.job_id for a in r.admissions}
    assert admitted == c.admitted
    for jid, code in c.codes.items():
        assert r.pending[jid].code is code, (jid, r.pending[jid])
    if c.preempted is not None:
        assert {p.job_id for p in r.preemptions} == c.preempted
    pending_ids = {j.id for j in c.snap.pending}
    assert admitted | set(r.pending) == pending_ids and not admitted & set(r.pending)
    jobs = {j.id: j for j in c.snap.pending}
    for a in r.admissions:
        assert len(a.placements) == jobs[a.job_id].workers
        assert all(len(p.gpu_indices) == jobs[a.job_id].per_worker.gpus for p in a.placements)
    _gpu_ids_unique(c.snap, r)
    if c.policy.explain:
        for reason in r.pending.values():
            assert reason.message and reason.message.endswith(".")
    if c.check:
        c.check(r)


def test_determinism_under_input_shuffles() -> None:
    """Same snapshot in any input order gives the same result (no set/dict order leaks)."""
    base = CASES["minimal_victims_on_the_right_node"]().snap
    want = run_cycle(base, 10.0)
    rng = random.Random(7)
    for _ in range(5):
        shuffled = replace(base, nodes=tuple(rng.sample(base.nodes, len(base.nodes))),
                           running=tuple(rng.sample(base.running, len(base.running))),
                           pending=tuple(rng.sample(base.pending, len(base.pending))),
                           projects=tuple(rng.sample(base.projects, len(base.projects))))
        assert run_cycle(shuffled, 10.0) == want


def test_reclaimed_job_starts_next_cycle() -> None:
    """One-cycle reclaim: after the victims stopped, the preemptor is admitted."""
    c = CASES["operation_reclaims_lent_capacity"]()
    first = run_cycle(c.snap, 10.0)
    gone = {p.job_id for p in first.preemptions}
    later = replace(c.snap, running=tuple(r for r in c.snap.running if r.job.id not in gone))
    second = run_cycle(later, 20.0)
    assert [a.job_id for a in second.admissions] == ["clinical"]


def _busy_snapshot(seed: int) -> Snapshot:
    """A crowded random snapshot with many identical job shapes (what the memo feeds on)."""
    rng = random.Random(seed)
    nodes = [node(f"n{i:02d}", pool="operation" if i < 3 else "innovation", model="A100" if i % 2 else "H100")
             for i in range(12)]
    projects = [project(f"p{i}", dept=f"d{i % 3}", nominal=rng.choice([0, 4, 8]), guaranteed=rng.choice([0, 2]),
                        flavor=("innovation", rng.choice(["A100", "H100"])), budget=rng.choice([None, None, 30]))
                for i in range(8)]

    def mk(jid: str, t: float):
        return job(jid, gpus=rng.choice([1, 2, 4, 8]), workers=rng.choice([1, 1, 2]), project=f"p{rng.randrange(8)}",
                   priority=rng.choice([0, 1]), submit=t, models=rng.choice([(), ("A100",)]),
                   runtime=rng.choice([600.0, 3600.0]), cls=OP if rng.random() < 0.1 else INNO_)
    first = snapshot(nodes, [mk(f"r{i}", -i) for i in range(40)], projects=projects)
    r = run_cycle(first, 0.0, replace(DEFAULT, preemption=False))
    pend = {j.id: j for j in first.pending}
    runs = [running(pend[a.job_id], *[(p.node, p.gpu_indices) for p in a.placements], start=-rng.random() * 600,
                    borrowing=a.borrowing, flavor=a.flavor) for a in r.admissions]
    return snapshot(nodes, [mk(f"j{i:03d}", float(i)) for i in range(150)], runs, projects=projects)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("policy", ["fair-backfill-preempt", "fair", "fifo"])
def test_outcome_memo_changes_nothing(seed: int, policy: str, monkeypatch) -> None:
    """Replaying memoised outcomes gives exactly the decisions of evaluating every job."""
    from scheduler import cycle as cycle_mod
    snap = _busy_snapshot(seed)
    for explain in (True, False):
        pol = replace(POLICIES[policy], explain=explain)
        with_memo = run_cycle(snap, 10.0, pol)
        with monkeypatch.context() as m:
            m.setattr(cycle_mod._Cycle, "schedule", lambda self, job, s, pos: (
                self.static_reason(job, s, pos) if s.code is not None else self._schedule(job, s, pos)))
            without = run_cycle(snap, 10.0, pol)
        assert with_memo == without
