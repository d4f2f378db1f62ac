"""Hypothesis state machine over the scheduling cycle.

The model keeps nodes, projects with quotas and budgets, running and pending jobs and a clock.
Rules submit, finish, add/remove/drain nodes, change quotas and tick (run a cycle and apply
it: admissions start, victims stop). After every step the invariants run a fresh cycle on the
current state and check it:

- no node over-allocated (GPUs, cpus, memory) and no GPU index used twice;
- no quota node pushed over its limit by admissions;
- budgets never overrun (spent + remaining reservations of running work + admissions);
- gangs atomic (all workers, each with its GPUs, on one ready node of the job's flavor);
- a job within its project's guarantee, on healthy capacity that could hold it once
  preemptible work is gone, is admitted or has preemptions issued for it in that cycle
  (operation jobs within their guarantee on lent operation capacity included);
- work-aware reclaim: an innovation job without a guarantee reclaims nominal only after
  `reclaim_after_s`, from victims that ran at least `min_runtime_s`, were preempted fewer than
  `reclaim_exempt_after` times and lose no more work than it waited (work since their last
  checkpoint for checkpointable jobs: checkpointed work is never counted as lost, so a job
  that checkpoints often is the cheaper victim), in seconds and in GPU-seconds;
- checkpoints and notices: checkpointable jobs checkpoint every CHECKPOINT_S while they run; a
  victim goes back to the queue (its submit time kept, its preemption count up), and exactly the
  work since its last checkpoint is lost (the core's work at risk, which ranks and bounds victims);
- deterministic (two runs give equal results).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from quotas.amount import UNLIMITED, Amount
from quotas.budget import remaining_reservation
from scheduler import run_cycle
from scheduler.model import (
    POLICIES, CycleResult, Flavor, Job, NodeState, ReasonCode, Running, Snapshot, WorkloadClass,
)
from tests.unit.schedkit import POOLS, dept, job, node, project, q

MODELS = ("A100", "H100")
POOL_NAMES = ("innovation", "operation")
# project id -> (department, class); "g-" projects hold guarantees, "b-" ones only borrow
PROJECTS = {"g-liver": ("ouh", WorkloadClass.INNOVATION), "g-lung": ("slb", WorkloadClass.INNOVATION),
            "b-eye": ("ouh", WorkloadClass.INNOVATION), "b-skin": ("slb", WorkloadClass.INNOVATION),
            "ops-triage": ("ouh", WorkloadClass.OPERATION)}
POLICY_NAMES = ("fair-backfill-preempt", "fair-backfill", "fifo")
CHECKPOINT_S = 600.0


class CycleMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(POLICY_NAMES))
    def setup(self, policy: str) -> None:
        self.policy = POLICIES[policy]
        self.now = 0.0
        self.nodes: dict[str, object] = {}
        self.running: dict[str, Running] = {}
        self.pending: dict[str, Job] = {}
        self.spent: dict[str, float] = dict.fromkeys(PROJECTS, 0.0)
        self.quota: dict[str, dict] = {p: {} for p in PROJECTS}
        self.budget: dict[str, Amount] = {p: UNLIMITED for p in PROJECTS}
        self.budget["b-skin"] = Amount.of(6.0)
        self.seq = 0
        for i, (pool, model) in enumerate([("innovation", "A100"), ("innovation", "A100"), ("innovation", "H100"),
                                           ("operation", "A100")]):
            self.nodes[f"n{i}"] = node(f"n{i}", gpus=4, pool=pool, model=model, cpus=16, mem=64)
        self.set_quota("g-liver", Flavor("innovation", "A100"), guaranteed=4, nominal=4)
        self.set_quota("g-lung", Flavor("innovation", "H100"), guaranteed=2, nominal=4)
        self.set_quota("ops-triage", Flavor("operation", "A100"), guaranteed=2, nominal=4)
        self.last: CycleResult | None = None
        self.lost = 0.0  # GPU-seconds thrown away by preemptions

    # -- helpers ---------------------------------------------------------------------------
    def set_quota(self, pid: str, fl: Flavor, guaranteed: int, nominal: int, limit: int | None = None) -> None:
        self.quota[pid][(fl, "gpus")] = q(nominal, guaranteed, limit)

    def snapshot(self) -> Snapshot:
        projects = [project(p, dept=d, budget=None if self.budget[p].unlimited else self.budget[p].value,
                            spent=self.spent[p], quotas=self.quota[p]) for p, (d, _c) in PROJECTS.items()]
        return Snapshot(tuple(self.nodes.values()), POOLS, (dept("ouh"), dept("slb")), tuple(projects),
                        tuple(self.running.values()), tuple(self.pending.values()))

    def usage(self, pid: str, fl: Flavor) -> int:
        return sum(r.job.total.gpus for r in self.running.values() if r.job.project == pid and r.flavor == fl)

    # -- rules -----------------------------------------------------------------------------
    @rule(pid=st.sampled_from(sorted(PROJECTS)), gpus=st.sampled_from([1, 1, 2, 4]), workers=st.sampled_from([1, 1, 2]),
          model=st.sampled_from([(), ("A100",), ("H100",)]), priority=st.sampled_from([0, 0, 1]),
          runtime=st.sampled_from([60.0, 600.0, 3600.0]), checkpointable=st.booleans())
    def submit(self, pid, gpus, workers, model, priority, runtime, checkpointable=False) -> None:
        if len(self.pending) >= 12:
            return
        self.seq += 1
        cls = PROJECTS[pid][1]
        jid = f"j{self.seq:03d}"
        self.pending[jid] = replace(job(jid, gpus=gpus, project=pid, workers=workers, cls=cls, priority=priority,
                                        submit=self.now, models=model, runtime=runtime, cpus=1, mem=4),
                                    checkpointable=checkpointable)

    @rule(pid=st.sampled_from(["b-eye", "b-skin"]), n=st.integers(1, 4), gpus=st.sampled_from([1, 4]),
          runtime=st.sampled_from([600.0, 3600.0]))
    def borrowers_fill(self, pid, n, gpus, runtime) -> None:
        """Borrowers take idle A100 capacity (so guarantees later have to be reclaimed)."""
        for _ in range(n):
            self.submit(pid, gpus, 1, ("A100",), 0, runtime)
        self.tick(0.0)

    @rule(n=st.integers(1, 4), checkpointable=st.booleans(), ran=st.sampled_from([700.0, 1300.0, 2500.0]),
          waited=st.sampled_from([1000.0, 4000.0]))
    def nominal_reclaim(self, n, checkpointable, ran, waited) -> None:
        """b-eye's long jobs (checkpointing or not) hold the A100s (a third A100 node joins);
        g-liver, now with a nominal of 4 and no guarantee there, asks for its share and keeps
        asking: the work-aware rules decide (checkpointed victims lose little and are taken,
        a job that ran longer than g-liver waited is spared)."""
        self.set_quota("g-liver", Flavor("innovation", "A100"), 0, 4)
        self.nodes.setdefault("nr", node("nr", gpus=4, pool="innovation", model="A100", cpus=16, mem=64))
        for _ in range(n):
            self.submit("b-eye", 4, 1, ("A100",), 0, 6 * 3600.0, checkpointable)
        self.tick(0.0)
        self.tick(ran)
        self.submit("g-liver", 4, 1, ("A100",), 0, 3600.0)
        self.tick(waited)

    @rule(guaranteed=st.sampled_from([4, 8]))
    def guarantee_grows(self, guaranteed) -> None:
        """An admin raises g-liver's guarantee while borrowers hold the capacity."""
        self.set_quota("g-liver", Flavor("innovation", "A100"), guaranteed, guaranteed)

    @rule(gpus=st.sampled_from([1, 2, 4]), workers=st.sampled_from([1, 2]))
    def claim_guarantee(self, gpus, workers) -> None:
        """The guaranteed project asks for (up to) its guarantee."""
        self.submit("g-liver", gpus, workers, ("A100",), 0, 600.0)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data) -> None:
        jid = data.draw(st.sampled_from(sorted(self.running)))
        del self.running[jid]

    @rule(pool=st.sampled_from(POOL_NAMES), model=st.sampled_from(MODELS), gpus=st.sampled_from([2, 4, 8]))
    def node_join(self, pool, model, gpus) -> None:
        if len(self.nodes) >= 7:
            return
        self.seq += 1
        nid = f"x{self.seq:03d}"
        self.nodes[nid] = node(nid, gpus=gpus, pool=pool, model=model, cpus=16, mem=64)

    @precondition(lambda self: len(self.nodes) > 1)
    @rule(data=st.data())
    def node_leave(self, data) -> None:
        nid = data.draw(st.sampled_from(sorted(self.nodes)))
        del self.nodes[nid]
        # work on a lost node is lost (the broker fails those attempts)
        self.running = {k: r for k, r in self.running.items() if all(p.node != nid for p in r.placements)}

    @rule(data=st.data(), state=st.sampled_from(list(NodeState)))
    def node_state(self, data, state) -> None:
        nid = data.draw(st.sampled_from(sorted(self.nodes)))
        self.nodes[nid] = replace(self.nodes[nid], state=state)

    @rule(pid=st.sampled_from(sorted(PROJECTS)), model=st.sampled_from(MODELS), guaranteed=st.integers(0, 4),
          extra=st.integers(0, 4), limit=st.sampled_from([None, 0, 4, 8]))
    def quota_change(self, pid, model, guaranteed, extra, limit) -> None:
        pool = "operation" if PROJECTS[pid][1] is WorkloadClass.OPERATION else "innovation"
        nominal = guaranteed + extra
        if limit is not None:
            limit = max(limit, nominal)
        self.set_quota(pid, Flavor(pool, model), guaranteed, nominal, limit)

    @rule(dt=st.sampled_from([0.0, 30.0, 300.0, 4000.0]))
    def tick(self, dt) -> None:
        # time passes: running jobs accrue spent GPU-hours and end at their max runtime
        later = self.now + dt
        for jid, r in list(self.running.items()):
            end = min(later, r.start_time + r.job.max_runtime_s)
            self.spent[r.job.project] += r.job.total.gpus * max(0.0, end - max(self.now, r.start_time)) / 3600.0
            if r.start_time + r.job.max_runtime_s <= later:
                del self.running[jid]
            elif r.job.checkpointable and later - r.start_time >= CHECKPOINT_S:
                # the job checkpoints every CHECKPOINT_S; the broker learns the newest one
                ckpt = r.start_time + (later - r.start_time) // CHECKPOINT_S * CHECKPOINT_S
                self.running[jid] = replace(r, checkpoint_time=ckpt)
        self.now = later
        result = run_cycle(self.snapshot(), self.now, self.policy)
        for p in result.preemptions:
            victim = self.running.pop(p.job_id, None)
            if victim is None:
                continue
            # the notice: it stops, keeps what it checkpointed, and queues again as it was submitted
            lost = victim.work_at_risk_s(self.now)
            since = victim.checkpoint_time if victim.job.checkpointable and victim.checkpoint_time else victim.start_time
            assert lost == self.now - since, "checkpointed work counted as lost (or unsaved work as kept)"
            self.lost += lost * victim.job.total.gpus
            if len(self.pending) < 12:
                self.pending[p.job_id] = replace(victim.job, preemptions=victim.job.preemptions + 1)
        for a in result.admissions:
            j = self.pending.pop(a.job_id)
            self.running[j.id] = Running(j, a.placements, self.now, a.flavor, a.borrowing)

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def cycle_is_sound(self) -> None:
        snap = self.snapshot()
        r1 = run_cycle(snap, self.now, self.policy)
        r2 = run_cycle(snap, self.now, self.policy)
        assert r1 == r2, "not deterministic"
        self.check_nodes(snap, r1)
        self.check_quota_and_budget(snap, r1)
        self.check_reasons(snap, r1)
        if not self.policy.strict_fifo and self.policy.preemption:
            self.check_guarantees(snap, r1)
            self.check_work_aware_reclaim(snap, r1)

    def check_nodes(self, snap: Snapshot, r: CycleResult) -> None:
        nodes = {n.id: n for n in snap.nodes}
        pend = {j.id: j for j in snap.pending}
        use: dict[str, list[float]] = {n: [0, 0.0, 0.0] for n in nodes}
        ids: set[tuple[str, int]] = set()
        work = [(x.job, x.placements) for x in snap.running] + [(pend[a.job_id], a.placements) for a in r.admissions]
        for j, placements in work:
            for p in placements:
                if p.node not in nodes:
                    continue
                u = use[p.node]
                u[0] += j.per_worker.gpus
                u[1] += j.per_worker.cpus
                u[2] += j.per_worker.memory_gb
                for i in p.gpu_indices:
                    assert 0 <= i < nodes[p.node].capacity.gpus and (p.node, i) not in ids, "GPU index reused"
                    ids.add((p.node, i))
        for nid, (g, c, m) in use.items():
            cap = nodes[nid].capacity
            assert g <= cap.gpus and c <= cap.cpus + 1e-9 and m <= cap.memory_gb + 1e-9, f"{nid} over-allocated"
        for a in r.admissions:  # gangs: all workers, each its GPUs, on ready nodes of the flavor
            j = pend[a.job_id]
            assert len(a.placements) == j.workers and sorted(p.rank for p in a.placements) == list(range(j.workers))
            for p in a.placements:
                n = nodes[p.node]
                assert n.state is NodeState.READY and n.flavor == a.flavor
                assert len(p.gpu_indices) == j.per_worker.gpus
                assert not j.gpu_models or n.gpu_model in j.gpu_models

    def check_quota_and_budget(self, snap: Snapshot, r: CycleResult) -> None:
        if self.policy.strict_fifo:
            return
        pend = {j.id: j for j in snap.pending}
        added: dict[tuple[str, Flavor], int] = {}
        for a in r.admissions:
            j = pend[a.job_id]
            added[(j.project, a.flavor)] = added.get((j.project, a.flavor), 0) + j.total.gpus
        for (pid, fl), g in added.items():
            spec = self.quota[pid].get((fl, "gpus"))
            if spec is not None and not spec.limit.unlimited:
                assert self.usage(pid, fl) + g <= spec.limit.value, f"{pid} over its limit on {fl}"
        for pid, budget in self.budget.items():
            new = [pend[a.job_id] for a in r.admissions if pend[a.job_id].project == pid]
            if budget.unlimited or not new:
                continue
            reserved = sum(remaining_reservation(x.job.total.gpus, x.start_time, x.job.max_runtime_s, self.now).value
                           for x in snap.running if x.job.project == pid)
            reserved += sum(j.total.gpus * j.max_runtime_s / 3600.0 for j in new)
            assert self.spent[pid] + reserved <= budget.value + 1e-6, f"{pid} budget overrun"

    def check_reasons(self, snap: Snapshot, r: CycleResult) -> None:
        admitted = {a.job_id for a in r.admissions}
        assert admitted | set(r.pending) == {j.id for j in snap.pending} and not admitted & set(r.pending)
        victims = [p.job_id for p in r.preemptions]
        assert len(victims) == len(set(victims)) and set(victims) <= {x.job.id for x in snap.running}

    def check_guarantees(self, snap: Snapshot, r: CycleResult) -> None:
        preempting = [j for j, reason in r.pending.items() if reason.code is ReasonCode.PREEMPTING]
        nodes = [n for n in snap.nodes if n.state is NodeState.READY]
        pend = {j.id: j for j in snap.pending}
        admitted = [(pend[a.job_id], a) for a in r.admissions]
        # what this very cycle admitted counts toward the project's use of its guarantee: a job
        # of the same project ordered earlier may have taken it (then j is no longer within it)
        admitted_use: dict[tuple[str, Flavor], int] = {}
        for x, a in admitted:
            admitted_use[(x.project, a.flavor)] = admitted_use.get((x.project, a.flavor), 0) + x.total.gpus
        for j in snap.pending:
            if j.id in {a.job_id for a in r.admissions} or j.id in preempting:
                continue
            if preempting:  # another preemptor may hold what j would need
                return
            if not self.budget[j.project].unlimited:
                continue
            mine = [x for x in snap.pending if x.project == j.project]
            for fl in {n.flavor for n in nodes}:
                spec = self.quota[j.project].get((fl, "gpus"))
                if spec is None or not self._may_use(j, fl):
                    continue
                used = self.usage(j.project, fl) + admitted_use.get((j.project, fl), 0)
                within = [x for x in mine if used + x.total.gpus <= spec.guaranteed.value]
                if within != [j]:
                    continue  # only when j is its project's one job within guarantee
                if self._could_hold(j, fl, nodes, snap, admitted):
                    raise AssertionError(f"{j.id} fits its guarantee on {fl} but got {r.pending[j.id].code}")

    def check_work_aware_reclaim(self, snap: Snapshot, r: CycleResult) -> None:
        """An innovation job without a guarantee on the flavor reclaims nominal only after
        waiting `reclaim_after_s`, never stops a job younger than `min_runtime_s` or one already
        preempted `reclaim_exempt_after` times, and never one that would lose more work (since
        its last checkpoint) than the preemptor has waited, in seconds or in GPU-seconds."""
        pol = self.policy
        pend = {j.id: j for j in snap.pending}
        run = {x.job.id: x for x in snap.running}
        for p in r.preemptions:
            pre, victim = pend[p.for_job_id], run[p.job_id]
            spec = self.quota[pre.project].get((victim.flavor, "gpus"))
            if p.code != "RECLAIM_NOMINAL" or pre.workload_class is not WorkloadClass.INNOVATION or \
                    (spec is not None and spec.guaranteed.value > 0):
                continue
            waited = self.now - pre.submit_time
            assert waited >= pol.reclaim_after_s, f"{pre.id} reclaimed after {waited} s"
            assert self.now - victim.start_time >= pol.min_runtime_s, f"{victim.job.id} stopped too young"
            assert not pol.reclaim_exempt_after or victim.job.preemptions < pol.reclaim_exempt_after, \
                f"{victim.job.id} was preempted {victim.job.preemptions} times already"
            if pol.lost_work_bounded_by_wait:
                lost = victim.work_at_risk_s(self.now)
                assert lost <= waited + 1e-6, f"{victim.job.id} loses more than {pre.id} waited"
                if pol.loss_gpu_weighted:
                    assert lost * victim.job.total.gpus <= waited * pre.total.gpus + 1e-6, \
                        f"{victim.job.id} loses more GPU-seconds than {pre.id} waited"

    @staticmethod
    def _may_use(j: Job, fl: Flavor) -> bool:
        if j.gpu_models and fl.gpu_model not in j.gpu_models:
            return False
        op_pool = fl.pool == "operation"
        return op_pool if j.workload_class is WorkloadClass.OPERATION else True

    def _could_hold(self, j: Job, fl: Flavor, nodes, snap: Snapshot, admitted) -> bool:
        """Could j's gang be placed on fl if all work preemptible for it were gone?"""
        free = {n.id: [n.capacity.gpus, n.capacity.cpus, n.capacity.memory_gb] for n in nodes if n.flavor == fl}
        guaranteed = {p for p in PROJECTS if any(s.guaranteed.value > 0 for s in self.quota[p].values())}

        def protected(x: Job) -> bool:
            return (x.project == j.project or x.project in guaranteed
                    or (j.workload_class is WorkloadClass.INNOVATION and x.workload_class is WorkloadClass.OPERATION))

        held = [(x.job, x.placements) for x in snap.running if protected(x.job)] + \
               [(x, a.placements) for x, a in admitted]
        for x, placements in held:
            for p in placements:
                if p.node in free:
                    f = free[p.node]
                    f[0] -= x.per_worker.gpus
                    f[1] -= x.per_worker.cpus
                    f[2] -= x.per_worker.memory_gb
        pw = j.per_worker
        slots = sum(max(0, min(int(f[0] // pw.gpus) if pw.gpus else 99, int(f[1] // pw.cpus), int(f[2] // pw.memory_gb)))
                    for f in free.values())
        return slots >= j.workers


# CYCLE_EXAMPLES=1000 for a longer hunt than the suite's
CycleMachine.TestCase.settings = settings(max_examples=int(__import__("os").environ.get("CYCLE_EXAMPLES", "100")), stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestCycleMachine = CycleMachine.TestCase
