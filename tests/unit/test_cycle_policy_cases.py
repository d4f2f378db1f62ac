"""Named cases for the default policy's work-aware rules (one rule per case).

Minimum runtime, hysteresis, lost work bounded by the preemptor's wait, checkpointable victims
preferred, operation reclaim by work at risk, per-resource borrowing, aging with a
reservation, the binding resource in reasons and victim messages, estimated starts that count
the queue ahead, the runtime ratio in backfill, lending only to cheap victims, operation bursts
overflowing into idle innovation capacity.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from scheduler import run_cycle
from scheduler.model import POLICIES, Flavor, ReasonCode as RC, Resources
from tests.unit.schedkit import OP, job, node, project, q, running, snapshot

DEFAULT = POLICIES["fair-backfill-preempt"]
AGING = replace(DEFAULT, aging_after_s=6 * 3600.0, reserve_after_s=6 * 3600.0)  # aging on (off in the default)
A100 = Flavor("innovation", "A100")
OPF = Flavor("operation", "A100")
DAY = 86400.0
WAITED = DEFAULT.reclaim_after_s + 600.0  # a preemptor that has waited past the hysteresis


def borrower(n: str, jid: str, start: float, gpus: int = 8, project_id: str = "b", **kw):
    """A borrowing job of project b that started as soon as it was submitted, asking for a day
    (its GPUs do not free by themselves before a reclaim would gain anything)."""
    kw.setdefault("runtime", DAY)
    return running(job(jid, gpus=gpus, project=project_id, submit=start, **kw), (n, tuple(range(gpus))), start=start,
                   borrowing=True)


def owner_snap(runs, nodes=("n1",), **kw):
    """`mine` (8 GPUs, project owner within its nominal of 8) behind borrowers of project b."""
    return snapshot([node(n) for n in nodes], [job("mine", gpus=8, project="owner", **kw)], runs,
                    projects=[project("owner", nominal=8), project("b")])


# -- hysteresis ---------------------------------------------------------------------------------
def test_hysteresis_a_fresh_demand_waits_instead_of_preempting():
    now = 10_000.0
    snap = owner_snap([borrower("n1", "lent", start=now - 2_000.0)], submit=now - 60.0)
    r = run_cycle(snap, now)
    assert not r.preemptions and r.pending["mine"].code is RC.NO_CAPACITY


def test_hysteresis_a_demand_that_persists_reclaims():
    now = 10_000.0
    snap = owner_snap([borrower("n1", "lent", start=now - 2_000.0)], submit=now - WAITED)
    r = run_cycle(snap, now)
    assert [p.job_id for p in r.preemptions] == ["lent"] and r.pending["mine"].code is RC.PREEMPTING


# -- minimum runtime and lost work ----------------------------------------------------------------
def test_min_runtime_protects_a_young_victim():
    now = 10_000.0
    young = borrower("n1", "young", start=now - DEFAULT.min_runtime_s / 2)
    r = run_cycle(owner_snap([young], submit=now - WAITED), now)
    assert not r.preemptions


def test_min_runtime_never_holds_back_operation_reclaim():
    now = 10_000.0
    lent = running(job("lent", gpus=8, project="res"), ("o1", tuple(range(8))), start=now - 60.0, flavor=OPF,
                   borrowing=True)
    snap = snapshot([node("o1", pool="operation")], [job("clinical", gpus=4, cls=OP, project="ops", submit=now)],
                    [lent], projects=[project("ops", nominal=8, flavor=("operation", "A100")), project("res")])
    r = run_cycle(snap, now)
    assert [(p.job_id, p.code) for p in r.preemptions] == [("lent", "RECLAIM_OPERATION")]


def test_a_victim_never_loses_more_work_than_the_preemptor_waited():
    now = 100_000.0
    old = borrower("n1", "old", start=now - 50_000.0, runtime=7 * DAY)  # would lose 50,000 s for a 5,000 s wait
    r = run_cycle(owner_snap([old], submit=now - 5_000.0), now)
    assert not r.preemptions
    r = run_cycle(owner_snap([old], submit=now - 60_000.0), now)
    assert [p.job_id for p in r.preemptions] == ["old"]


def test_no_victim_loses_more_work_than_the_preemption_saves():
    """The victim's GPUs free by themselves (at its expected end) in 1,000 s: stopping it would
    throw away 2,000 s of work to save the preemptor 1,000 s. Due in 3,000 s it is a victim."""
    now = 100_000.0
    for left, stopped in ((1_000.0, False), (3_000.0, True)):
        soon = borrower("n1", "soon", start=now - 2_000.0, runtime=2_000.0 + left)
        r = run_cycle(owner_snap([soon], submit=now - WAITED), now)
        assert bool(r.preemptions) is stopped, left
        if not stopped:
            assert r.pending["mine"].code is RC.NO_CAPACITY
    off = replace(DEFAULT, loss_bounded_by_release=False)
    soon = borrower("n1", "soon", start=now - 2_000.0, runtime=3_000.0)
    assert run_cycle(owner_snap([soon], submit=now - WAITED), now, off).preemptions


def test_the_release_bound_says_nothing_when_gpus_are_free_but_cpus_bind():
    """7 of n1's 8 GPUs are free, but a borrower holds 60 of its 64 CPUs: GPU releases cannot
    tell when the preemptor fits, so only the wait bounds the loss and the borrower is a victim."""
    now = 100_000.0
    hog = borrower("n1", "cpu-hog", start=now - 2_000.0, gpus=1, cpus=60.0)
    snap = snapshot([node("n1")], [job("mine", gpus=1, cpus=32.0, project="owner", submit=now - WAITED)], [hog],
                    projects=[project("owner", nominal=8), project("b")])
    r = run_cycle(snap, now)
    assert [p.job_id for p in r.preemptions] == ["cpu-hog"]


def test_lost_work_is_also_bounded_in_gpu_seconds():
    """A 1-GPU job that waited 5 h may not throw away 4 h of an 8-GPU job (32 GPU-hours for a
    5 GPU-hour wait), though 4 h < 5 h; an 8-GPU preemptor that waited as long may."""
    now = 100_000.0
    big = borrower("n1", "big", start=now - 4 * 3600.0)
    small = snapshot([node("n1")], [job("mine", gpus=1, project="owner", submit=now - 5 * 3600.0)], [big],
                     projects=[project("owner", nominal=8), project("b")])
    assert not run_cycle(small, now).preemptions
    r = run_cycle(owner_snap([big], submit=now - 5 * 3600.0), now)
    assert [p.job_id for p in r.preemptions] == ["big"]


def test_a_job_preempted_often_is_spared_by_innovation_reclaim_not_by_operation():
    """After `reclaim_exempt_after` preemptions a job is no victim between innovation projects
    (it would restart again and again); another borrower is taken instead, or none."""
    now = 100_000.0
    n = DEFAULT.reclaim_exempt_after
    tossed = borrower("n1", "tossed", start=now - 2_000.0)
    tossed = replace(tossed, job=replace(tossed.job, preemptions=n))
    fresh = borrower("n2", "fresh", start=now - 9_000.0)
    r = run_cycle(owner_snap([tossed, fresh], nodes=("n1", "n2"), submit=now - 20_000.0), now)
    assert [p.job_id for p in r.preemptions] == ["fresh"]  # though tossed would lose less
    r = run_cycle(owner_snap([tossed], submit=now - 20_000.0), now)
    assert not r.preemptions
    less = replace(tossed, job=replace(tossed.job, preemptions=n - 1))
    r = run_cycle(owner_snap([less, fresh], nodes=("n1", "n2"), submit=now - 20_000.0), now)
    assert [p.job_id for p in r.preemptions] == ["tossed"]  # below the count: the cheaper victim
    lent = running(replace(job("lent", gpus=8, project="res"), preemptions=n + 3), ("o1", tuple(range(8))),
                   start=now - 60.0, flavor=OPF, borrowing=True)
    snap = snapshot([node("o1", pool="operation")], [job("clinical", gpus=4, cls=OP, project="ops", submit=now)],
                    [lent], projects=[project("ops", nominal=8, flavor=("operation", "A100")), project("res")])
    assert [p.job_id for p in run_cycle(snap, now).preemptions] == ["lent"]


# -- victim choice --------------------------------------------------------------------------------
def test_checkpointable_victim_is_cheaper():
    now = 100_000.0
    plain = borrower("n1", "plain", start=now - 2_000.0)
    ck = replace(borrower("n2", "ck", start=now - 9_000.0, ), checkpoint_time=now - 300.0)
    ck = replace(ck, job=replace(ck.job, checkpointable=True))
    r = run_cycle(owner_snap([plain, ck], nodes=("n1", "n2"), submit=now - 20_000.0), now)
    assert [p.job_id for p in r.preemptions] == ["ck"]  # loses 5 min, not 33
    assert "checkpoint" in r.preemptions[0].message


def test_operation_reclaim_stops_the_job_with_least_gpu_seconds_at_risk():
    now = 100_000.0
    gang = running(job("gang", gpus=4, project="res"), ("o1", (0, 1, 2, 3)), start=now - 7200.0, flavor=OPF,
                   borrowing=True)
    small = running(job("small", gpus=4, project="res"), ("o1", (4, 5, 6, 7)), start=now - 3600.0, flavor=OPF,
                    borrowing=True)
    snap = snapshot([node("o1", pool="operation")], [job("clinical", gpus=2, cls=OP, project="ops", submit=now)],
                    [gang, small], projects=[project("ops", nominal=8, flavor=("operation", "A100")), project("res")])
    r = run_cycle(snap, now)
    assert [p.job_id for p in r.preemptions] == ["small"]
    assert "borrowing 4 GPUs of the operation pool (operation/A100)" in r.preemptions[0].message


def test_borrowing_is_judged_on_the_resource_the_preemptor_needs():
    """b is within its GPU nominal but over its CPU nominal (admitted as borrowing): no victim
    for a GPU job; the same job over its GPU nominal is one."""
    now = 100_000.0
    owner = project("owner", quotas={(A100, "gpus"): q(8), (A100, "cpus"): q(64)})

    def case(b_gpu_nominal):
        quotas = {(A100, "gpus"): q(b_gpu_nominal), (A100, "cpus"): q(0)}
        cpu_heavy = running(job("cpu-heavy", gpus=8, project="b", cpus=32.0, submit=now - 7200.0, runtime=DAY),
                            ("n1", tuple(range(8))), start=now - 7200.0, borrowing=True)
        snap = snapshot([node("n1")], [job("mine", gpus=8, project="owner", submit=now - 20_000.0)], [cpu_heavy],
                        projects=[owner, project("b", quotas=quotas)])
        return run_cycle(snap, now)

    assert not case(8).preemptions
    assert [p.job_id for p in case(0).preemptions] == ["cpu-heavy"]


def test_victim_message_names_resource_flavor_and_numbers():
    now = 100_000.0
    r = run_cycle(owner_snap([borrower("n1", "lent", start=now - 7200.0)], submit=now - 20_000.0), now)
    msg = r.preemptions[0].message
    assert "project b was borrowing GPUs on innovation/A100 (8 in use, nominal 0)" in msg
    assert "loses 120 min of work" in msg


# -- no starvation --------------------------------------------------------------------------------
def test_the_longest_waiting_job_goes_first_and_holds_the_reservation():
    """A big gang of a heavy user (huge decayed usage) waited past the aging threshold: it is
    ordered first and reserves the node, so a fresh 1-GPU job of a light user may not start
    on the GPUs it needs (it would delay the gang), although fair share prefers it."""
    now = 200_000.0
    run = running(job("r", gpus=4, project="other", runtime=7200.0), ("n1", (0, 1, 2, 3)), start=now - 3600.0)
    snap = snapshot([node("n1")], [job("gang", gpus=8, project="heavy", submit=now - AGING.aging_after_s - 1.0),
                                   job("fresh", gpus=4, project="light", submit=now - 60.0, runtime=36_000.0)],
                    [run], projects=[project("heavy", decayed=1e9), project("light"), project("other")])
    r = run_cycle(snap, now, AGING)
    assert r.pending["gang"].queue_position == 1
    assert r.pending["fresh"].code is RC.BACKFILL_RESERVATION
    fair = run_cycle(snap, now, POLICIES["fair"])  # the baseline keeps fair-share order
    assert fair.pending["gang"].queue_position == 2


ADAPTIVE = replace(POLICIES["fair-backfill-preempt-bounded"], aging_after_s=3600.0)


def drain_snap(now: float, gang_waited: float):
    """n1 (8 GPUs): r runs 4 GPUs for one more hour; pending: heavy's 8-GPU gang (1 h) and
    light's fresh 4-GPU job (10 h). Backlog drain: (4 x 3,600 + 8 x 3,600 + 4 x 36,000) / 8 =
    23,400 s."""
    run = running(job("r", gpus=4, project="other", runtime=7200.0), ("n1", (0, 1, 2, 3)), start=now - 3600.0)
    return snapshot([node("n1")], [job("gang", gpus=8, project="heavy", submit=now - gang_waited),
                                   job("fresh", gpus=4, project="light", submit=now - 60.0, runtime=36_000.0)],
                    [run], projects=[project("heavy", decayed=1e9), project("light"), project("other")])


@pytest.mark.parametrize("waited,gang_first", [
    pytest.param(7_200.0, False, id="past the floor but within the backlog's drain time: fair-share order"),
    pytest.param(30_000.0, True, id="past the backlog's drain time: aged, first, holds the reservation"),
])
def test_aging_threshold_scales_with_the_backlog(waited, gang_first):
    """The starvation bound is relative to the load: a job is aged once it has waited longer
    than strict arrival order would need to start everything waiting now (and the floor)."""
    now = 200_000.0
    r = run_cycle(drain_snap(now, waited), now, ADAPTIVE)
    if gang_first:
        assert r.pending["gang"].queue_position == 1
        assert r.pending["fresh"].code is RC.BACKFILL_RESERVATION, "the aged gang reserves (reserve_aged)"
    else:
        assert [a.job_id for a in r.admissions] == ["fresh"]
        assert r.pending["gang"].code is not RC.BACKFILL_RESERVATION


def test_backlog_drain_time_counts_queue_and_running_work():
    from scheduler.cycle import _Cycle
    from scheduler.ordering import backlog_drain_s
    now = 200_000.0
    assert backlog_drain_s(_Cycle(drain_snap(now, 10.0), now, ADAPTIVE)) == pytest.approx(23_400.0)


# -- reasons --------------------------------------------------------------------------------------
def test_cpu_binds_not_gpus():
    """One 4-GPU node with 2 CPUs, two 1-GPU jobs of 1 CPU running: CPUs bind."""
    n = replace(node("n1", gpus=4, cpus=2.0))
    runs = [running(job(f"r{i}", gpus=1, project="p", cpus=1.0), ("n1", (i,))) for i in range(2)]
    snap = snapshot([n], [job("a", gpus=1, project="p", cpus=1.0)], runs)
    r = run_cycle(snap, 10.0)
    reason = r.pending["a"]
    assert reason.code is RC.NO_CAPACITY
    assert reason.details["resource"] == "CPUs" and reason.details["binding_free"] == 0
    assert "CPUs" in reason.message and "GPUs are not what it waits for" in reason.message


def test_memory_fragmented_names_memory():
    """Memory is free in total but split: no node with a free GPU has 40 GB free."""
    nodes = [node("n1", gpus=2, mem=64.0), node("n2", gpus=2, mem=64.0)]
    runs = [running(job("r1", gpus=1, project="p", mem=30.0), ("n1", (0,))),
            running(job("r2", gpus=2, project="p", mem=4.0), ("n2", (0, 1)))]
    snap = snapshot(nodes, [job("a", gpus=1, project="p", mem=40.0)], runs)
    reason = run_cycle(snap, 10.0).pending["a"]
    assert reason.code is RC.FRAGMENTED and reason.details["resource"] == "GB of memory"
    assert "at most 34 on one such node" in reason.message


# -- estimates ------------------------------------------------------------------------------------
def test_estimate_counts_the_queue_ahead():
    """Two identical 8-GPU jobs wait for one node busy until t=3600: the first is told 3600,
    the second not before the first is expected to end (3600 + its runtime)."""
    run = running(job("r", gpus=8, project="other", runtime=3600.0), ("n1", tuple(range(8))), start=0.0)
    snap = snapshot([node("n1")], [job("a", gpus=8, project="p", submit=1.0, runtime=1800.0),
                                   job("b", gpus=8, project="p", submit=2.0, runtime=1800.0)], [run])
    r = run_cycle(snap, 10.0, POLICIES["fair"])
    assert r.pending["a"].estimated_start == 3600.0
    assert r.pending["b"].estimated_start == 3600.0 + 1800.0


def greedy_snap(now: float):
    """n1 (8 GPUs) fully used: r1 (4 GPUs) ends at now + 1,000, r2 (4 GPUs) at now + 5,000.
    Waiting, in cycle order: gang (8 GPUs, 1 h), then small (4 GPUs, 10,000 s)."""
    runs = [running(job("r1", gpus=4, project="other", runtime=2000.0), ("n1", (0, 1, 2, 3)), start=now - 1000.0),
            running(job("r2", gpus=4, project="other", runtime=6000.0), ("n1", (4, 5, 6, 7)), start=now - 1000.0)]
    return snapshot([node("n1")], [job("gang", gpus=8, project="p", submit=now - 20.0),
                                   job("small", gpus=4, project="p", submit=now - 10.0, runtime=10_000.0)], runs)


@pytest.mark.parametrize("policy,gang,small", [
    pytest.param("fair-backfill-preempt", 11_000.0, 1_000.0,
                 id="holds nothing: small takes the first 4 GPUs freed, the gang waits for it (greedy play)"),
    pytest.param("fair", 11_000.0, 1_000.0, id="fair holds nothing either"),
    pytest.param("fair-backfill", 5_000.0, 5_000.0 + 3_600.0,
                 id="EASY reservation: the gang keeps its place, small follows it (conservative lanes)"),
])
def test_estimates_play_the_queue_as_the_policy_admits(policy, gang, small):
    now = 100_000.0
    r = run_cycle(greedy_snap(now), now, POLICIES[policy])
    assert r.pending["gang"].estimated_start == now + gang
    assert r.pending["small"].estimated_start == now + small


def test_runtime_ratio_shortens_plans_not_budgets():
    """A project whose jobs use half their request: the estimate counts half the runtime."""
    run = running(job("r", gpus=8, project="other", runtime=3600.0), ("n1", tuple(range(8))), start=0.0)
    snap = snapshot([node("n1")], [job("a", gpus=8, project="p", submit=1.0)], [run],
                    projects=[project("p"), replace(project("other"), runtime_ratio=0.5)])
    r = run_cycle(snap, 10.0, POLICIES["fair"])
    assert r.pending["a"].estimated_start == 1800.0


# -- lending --------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpointable,runtime,lent", [(False, 3600.0, True), (False, 7 * 24 * 3600.0, False),
                                                          (True, 7 * 24 * 3600.0, True)])
def test_lending_only_to_cheap_victims(checkpointable, runtime, lent):
    policy = replace(DEFAULT, lend_max_gpu_hours=8.0)
    j = replace(job("a", gpus=2, project="res", runtime=runtime), checkpointable=checkpointable)
    snap = snapshot([node("o1", pool="operation")], [j], projects=[project("res")])
    r = run_cycle(snap, 10.0, policy)
    assert bool(r.admissions) is lent


@pytest.mark.parametrize("gpus,hours,lent", [(8, 3.0, True), (8, 3.5, False), (1, 24.0, True), (1, 30.0, False)])
def test_the_default_lends_up_to_a_day_of_one_gpu(gpus, hours, lent):
    """Default limit: 24 expected GPU-hours (a day of one GPU, three hours of a whole node)."""
    j = job("a", gpus=gpus, project="res", runtime=hours * 3600.0)
    r = run_cycle(snapshot([node("o1", pool="operation")], [j], projects=[project("res")]), 10.0)
    assert bool(r.admissions) is lent
    assert not run_cycle(snapshot([node("o1", pool="operation")], [j], projects=[project("res")]), 10.0,
                         POLICIES["fair"]).pending  # the baselines lend to any job


# -- operation overflow ---------------------------------------------------------------------------
def op_snap(now: float, lent_ran_s: float | None, clinical_gpus: int = 2, **kw):
    """Operation node o1: 6 GPUs held by operation work, 2 by a lent innovation job that has run
    `lent_ran_s` (None: operation work holds all 8); innovation node n1 idle; one pending
    clinical job of `clinical_gpus` GPUs and one hour."""
    runs = [running(job("busy", gpus=6, cls=OP, project="ops", submit=now - 600.0, pool="operation"),
                    ("o1", tuple(range(6))), start=now - 600.0, flavor=OPF)]
    if lent_ran_s is None:
        runs.append(running(job("busy2", gpus=2, cls=OP, project="ops", submit=now - 600.0, pool="operation"),
                            ("o1", (6, 7)), start=now - 600.0, flavor=OPF))
    else:
        runs.append(running(job("lent", gpus=2, project="res", submit=now - lent_ran_s, runtime=DAY),
                            ("o1", (6, 7)), start=now - lent_ran_s, flavor=OPF, borrowing=True))
    clinical = replace(job("clinical", gpus=clinical_gpus, cls=OP, project="ops", submit=now - 30.0, **kw))
    return snapshot([node("o1", pool="operation"), node("n1")], [clinical], runs,
                    projects=[project("ops", nominal=8, flavor=("operation", "A100")), project("res")])


def test_an_operation_burst_beyond_its_pool_starts_on_idle_innovation_capacity():
    now = 100_000.0
    r = run_cycle(op_snap(now, None), now)
    assert [(a.job_id, a.flavor.pool) for a in r.admissions] == [("clinical", "innovation")]
    assert not r.preemptions
    # the baselines keep operation in its pool: it waits for operation work to end
    assert run_cycle(op_snap(now, None), now, POLICIES["fair"]).pending["clinical"].code is RC.NO_CAPACITY


def test_operation_reclaims_lent_capacity_when_that_loses_little():
    now = 100_000.0
    r = run_cycle(op_snap(now, lent_ran_s=300.0), now)  # 2 GPUs x 5 min at risk < 2 GPUs x 1 h
    assert [p.job_id for p in r.preemptions] == ["lent"] and not r.admissions
    assert r.pending["clinical"].code is RC.PREEMPTING


def test_operation_overflows_instead_of_throwing_hours_of_lent_work_away():
    now = 100_000.0
    r = run_cycle(op_snap(now, lent_ran_s=5 * 3600.0), now)  # 2 GPUs x 5 h at risk > 2 GPUs x 1 h
    assert not r.preemptions
    assert [(a.job_id, a.flavor.pool) for a in r.admissions] == [("clinical", "innovation")]


@pytest.mark.parametrize("kw", [{"pool": "operation"}, {"preemptible": False, "service": True}, {"service": True},
                                {"max_runtime_s": 13 * 3600.0}],
                         ids=["pinned", "service-min-replica", "service-extra-replica", "long-job"])
def test_no_overflow_for_a_pinned_job_a_replica_or_long_work(kw):
    """Innovation lends to operation as operation lends to innovation: short work only (2 GPUs x
    13 h is over the 24 GPU-hours), never a service replica (it stays for months)."""
    now = 100_000.0
    extra = {"pool": "operation"} if "pool" in kw else {}
    snap = op_snap(now, None, **extra)
    if "pool" not in kw:
        snap = replace(snap, pending=tuple(replace(j, **kw) for j in snap.pending))
    r = run_cycle(snap, now)
    assert not r.admissions and r.pending["clinical"].code is RC.NO_CAPACITY


def test_innovation_reclaim_never_stops_an_overflowed_operation_job():
    now = 100_000.0
    overflowed = running(job("clin", gpus=8, cls=OP, project="ops", submit=now - 4000.0, runtime=DAY),
                         ("n1", tuple(range(8))), start=now - 4000.0, borrowing=True)
    r = run_cycle(owner_snap([overflowed], submit=now - WAITED), now)
    assert not r.preemptions and r.pending["mine"].code is not RC.PREEMPTING


def test_a_job_that_started_aged_is_no_reclaim_victim():
    """It waited past the aging threshold before it started: stopping it for a reclaim would
    undo the starvation bound (the two would take turns on the same capacity)."""
    now = 100_000.0
    aged = running(job("aged", gpus=8, project="b", submit=now - 2_000.0 - AGING.aging_after_s - 1.0, runtime=DAY),
                   ("n1", tuple(range(8))), start=now - 2_000.0, borrowing=True)
    r = run_cycle(owner_snap([aged], submit=now - 10_000.0), now, AGING)
    assert not r.preemptions
    assert run_cycle(owner_snap([aged], submit=now - 10_000.0), now).preemptions  # without aging: a victim
