"""Trace-driven simulator: replay a job trace through `run_cycle` on a simulated clock.

    python -m scheduler.simulate --trace FILE [--format canonical|philly-pollux]
        (--nodes N --gpus-per-node G | --cluster FILE) --policy POLICY [--json] [--explain]
        [--window START:END] [--cycle-interval S] [--checkpoint-interval S] [--jobs-out FILE]

The simulator owns the clock, the cluster state and the jobs' true durations; `run_cycle`
sees only a `Snapshot` (jobs with their max_runtime, never their duration), exactly as in the
broker. Metrics and their definitions live in `scheduler.sim.metrics`, the cluster (nodes,
pools, quota tree, the feasibility check) in `scheduler.sim.cluster`, the command line in
`scheduler.sim.cli`.

Events and the tick rule
------------------------
Three kinds of event: *submit*, *finish* (the true duration has run out) and *preempt-stop* (a
preempted job has released its resources, ``--preempt-grace`` seconds after the decision, 0 by
default). Events are coalesced into scheduling ticks: with ``--cycle-interval S`` (default
300 s) ticks are the multiples of S, and a tick applies every event at or before it, like the
broker's periodic cycle: a job that finished at t frees its GPUs at the next tick, but its
completion time stays t. ``--cycle-interval 0`` makes every distinct event time a tick
(event-exact). Finishes are applied before submits. Why 300 s by default: the Philly trace
has ~150k distinct event times but only ~20k five-minute ticks, each cycle costs milliseconds
(it rebuilds its indexes from the snapshot), and in a congested replay waits are hours, so a
tick adds at most 5 minutes to a wait. At a tick the simulator runs one cycle only when it
could change something:

- something was submitted, finished or stopped since the last cycle, and
- a pending job could start: some pending job needs no more GPUs than are free (for ``fifo``:
  the head of the queue, since fifo blocks behind it), or the policy preempts, some running
  job borrows, and some project with pending work is below its nominal share by at least its
  smallest pending job (reclaim can only happen then).

A cycle that issued preemptions is followed by another cycle as soon as the victims have
stopped (at the same instant with grace 0), so the preemptor starts without waiting for an
unrelated event; at most ``MAX_CYCLES_PER_INSTANT`` cycles run at one instant.

Snapshot: quotas, fair share, queue depth
-----------------------------------------
One pool (``sim``, class innovation) of N identical nodes, plus an ``operation`` pool (the
first ``--operation-nodes``; by default a quarter of the nodes when the trace has operation jobs,
else none) that lends idle capacity to innovation work; GPU models are those named in the
trace (nodes round-robin over them) or one model ``gpu``. ``--cluster FILE`` replays on an
inventory instead (see `scheduler.sim.cluster`). One department ``sim`` holds every
project; its nominal is the whole cluster. Each project gets ``guaranteed`` 0, a ``nominal``
share of every flavor and resource, and an unlimited ``limit`` (anyone may borrow idle
capacity; reclaim-preemption gives a project its nominal back). ``--shares equal`` (default)
splits the cluster equally; ``--shares demand`` splits it in proportion to each project's
GPU-seconds in the replayed trace (the quota an admin would set from last period's usage).
The share is also the project's fair-share weight. Decayed usage (half-life from the policy)
is integrated exactly between ticks and passed in `Project.decayed_usage_gpu_s`.

``--queue-depth D`` (default 32; 0: unlimited) passes at most ``max(D, free GPUs + 1)`` pending jobs
per project, each project's own head first (class, priority, submit time): the same limit as
Slurm's ``bf_max_job_test``. For ``fifo`` the first ``free GPUs + 1`` jobs of the global queue
are passed, which is exact (at most one job per free GPU can start, and fifo stops at the
first that does not).

Preemption and lost work
------------------------
A preempted job goes back to pending with its original submit time. A job the trace does not
mark checkpointable loses the work done since its last start. A checkpointable job writes a
checkpoint every ``--checkpoint-interval S`` seconds of run time after each start and loses
only the work since its last checkpoint (``ran mod S``); S = 0 (the default) means it loses
nothing. The work done during ``--preempt-grace`` counts neither way (the model does not assume
the job checkpoints on the notice).

What the broker feeds the core (the simulator's defaults)
---------------------------------------------------------
The snapshot carries what the broker's snapshot carries (`broker.services.snapshot`):

- ``Job.checkpointable`` from the trace;
- ``Running.checkpoint_time`` = start + floor(ran / S) x S for a running checkpointable job with
  ``--checkpoint-interval S`` (the last checkpoint it wrote; None with S = 0);
- ``Project.runtime_ratio``: the median of (real runtime / max_runtime) over the project's newest
  100 finished attempts, clamped to [0.05, 1], and 1.0 while it has fewer than 5: learned online
  as jobs finish, never from the future. ``--runtime-ratio off`` (`SimConfig.learn_runtime_ratio`)
  keeps it at 1.0, the behaviour before the broker learned it.

Explain and ETAs
----------------
With ``explain`` the cycles compute pending reasons and estimated starts as the broker's do
(``Policy.explain``), and each job's *first* estimate (from the first cycle after its submit) is
recorded, for the ETA figures of `scheduler.sim.metrics`. The broker shows every pending job to
the cycle, so in this mode the jobs submitted since the last cycle are shown to the next one even
past the queue depth, and a cycle runs at every tick with new submits even when nothing could
start (such a cycle admits nothing, so the schedule is not changed by the extra cycles; the
extra visible jobs can let backfill start one of them a little earlier than without explain).

A replay that cannot finish
---------------------------
Before replaying, `scheduler.sim.cluster.check_feasible` rejects a trace with jobs that no node
of their pools could ever hold; if jobs still never complete (the events run out with jobs
pending), `ReplayError` names how many and the reasons one last explained cycle gives for them.
"""

from __future__ import annotations

import heapq
import math
import statistics
import sys
import time
from bisect import insort
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from scheduler.model import POLICIES, CycleResult, Job, Policy, Project, Running, Snapshot, WorkloadClass
from scheduler.sim.cluster import (
    NodeGroup, ReplayError, check_feasible, homogeneous_nodes, nodes_of, pools_of, project_shares, quota_tree,
)
from scheduler.sim.metrics import JobOutcome, metrics
from scheduler.sim.traces import TraceJob, to_job

CycleFn = Callable[[Snapshot, float, Policy], CycleResult]
MAX_CYCLES_PER_INSTANT = 16
DEFAULT_CYCLE_INTERVAL_S = 300.0
DEFAULT_QUEUE_DEPTH = 32
# The broker's runtime ratio (broker.services.snapshot.runtime_ratio): the median of real /
# requested runtime over a project's newest RATIO_WINDOW finished attempts, clamped to
# [RATIO_FLOOR, 1], 1.0 until it has RATIO_MIN_SAMPLES of them.
RATIO_WINDOW, RATIO_MIN_SAMPLES, RATIO_FLOOR = 100, 5, 0.05
_FINISH, _STOP, _SUBMIT = 0, 1, 2  # event order at one instant


class SimulationError(RuntimeError):
    """The cycle returned a decision the cluster cannot apply (a bug in the core)."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One replay's settings (the CLI flags). With `cluster`, the nodes come from the inventory
    and `nodes`, `gpus_per_node`, `operation_nodes` and the per-node CPU/memory are not used."""

    nodes: int
    gpus_per_node: int
    policy: Policy = POLICIES["fair-backfill-preempt"]
    cycle_interval: float = DEFAULT_CYCLE_INTERVAL_S  # 0: a tick at every distinct event time
    preempt_grace: float = 0.0
    shares: str = "equal"  # equal | demand
    queue_depth: int = DEFAULT_QUEUE_DEPTH  # 0: unlimited
    operation_nodes: int | None = None  # None: a quarter of the nodes if the trace has operation jobs, else 0
    progress: bool = False  # a line on stderr every 1,000 cycles
    cpus_per_node: float | None = None  # default 8 per GPU
    memory_gb_per_node: float | None = None  # default 64 per GPU
    checkpoint_interval: float = 0.0  # checkpointable jobs lose ran mod S; 0: nothing
    explain: bool = False  # reasons and estimates as the broker computes them; ETA figures
    cluster: tuple[NodeGroup, ...] | None = None  # an inventory instead of nodes x gpus_per_node
    # Project.runtime_ratio learned from finished jobs as the broker does (False: always 1.0)
    learn_runtime_ratio: bool = True


@dataclass(frozen=True, slots=True)
class SimResult:
    metrics: dict
    outcomes: tuple[JobOutcome, ...]


@dataclass(slots=True)
class _Live:
    """Mutable per-job simulation state (the simulator's own, never shown to the core)."""

    tj: TraceJob
    job: Job
    remaining: float
    attempt: int = 0
    first_start: float | None = None
    start: float | None = None
    end: float | None = None
    running: Running | None = None
    stopping: bool = False
    preemptions: int = 0
    lost_gpu_s: float = 0.0
    held_gpu_s: float = 0.0
    first_estimate: float | None = None


def default_cycle() -> CycleFn:
    from scheduler.cycle import run_cycle  # imported late: the simulator is usable without it in tests

    return run_cycle


def simulate(trace: Sequence[TraceJob], cfg: SimConfig, cycle: CycleFn | None = None) -> SimResult:
    """Replay `trace` (any order) and return metrics plus one outcome per job. Deterministic.

    Raises ReplayError when some job can never start on the cluster, or never completed."""
    return _Sim(trace, cfg, cycle or default_cycle()).run()


class _Sim:
    def __init__(self, trace: Sequence[TraceJob], cfg: SimConfig, cycle: CycleFn) -> None:
        self.cfg, self.cycle_fn = cfg, cycle
        self.explain = cfg.explain
        self.policy = replace(cfg.policy, explain=cfg.explain)
        if cfg.cluster:
            nodes = nodes_of(cfg.cluster)
            gpn = max(n.capacity.gpus for n in nodes)
        else:
            nodes, gpn = [], cfg.gpus_per_node
        capacity = sum(n.capacity.gpus for n in nodes) if cfg.cluster else cfg.nodes * cfg.gpus_per_node
        self.skipped = [t for t in trace if t.gpus > capacity or
                        (t.workers is not None and t.gpus // t.workers > gpn)]
        skipped_ids = {t.id for t in self.skipped}
        trace = sorted((t for t in trace if t.id not in skipped_ids), key=lambda t: (t.submit_time, t.line, t.id))
        if cfg.cluster:
            self.pools = pools_of(nodes, {g.pool: g.workload_class for g in cfg.cluster})
        else:
            models = sorted({t.gpu_model for t in trace if t.gpu_model})
            op_nodes = cfg.operation_nodes
            if op_nodes is None:
                has_op = any(t.workload_class is WorkloadClass.OPERATION for t in trace)
                op_nodes = max(1, cfg.nodes // 4) if has_op else 0
            op_nodes = min(op_nodes, cfg.nodes)
            nodes = homogeneous_nodes(cfg.nodes, cfg.gpus_per_node, models, op_nodes, cfg.cpus_per_node,
                                      cfg.memory_gb_per_node)
            self.pools = pools_of(nodes)
        check_feasible(trace, nodes, self.pools, gpn)
        self.nodes = tuple(nodes)
        self.departments, self.projects, self.nominal = quota_tree(self.nodes, project_shares(trace or self.skipped, cfg.shares))
        self.free = {n.id: n.capacity.gpus for n in self.nodes}
        self.free_total = capacity
        self.capacity = capacity
        self.gpus_per_node = gpn
        self.live = {t.id: _Live(t, to_job(t, gpn), t.duration) for t in trace}
        self.unseen: list[str] = []  # submitted since the last cycle (explain: shown to the next one)
        self.events: list[tuple[float, int, int, str, int]] = []
        self.seq = 0
        for t in trace:
            self._push(t.submit_time, _SUBMIT, t.id, 0)
        # pending queue, per project and global, sorted by the core's within-project order
        self.queue: dict[str, list[tuple]] = {p: [] for p in self.projects}
        self.fifo: list[tuple] = []
        self.pend_sizes: dict[str, Counter[int]] = {p: Counter() for p in self.projects}
        self.used = dict.fromkeys(self.projects, 0)  # GPUs held by running jobs, per project
        self.borrowers = 0
        self.running: dict[str, _Live] = {}
        self.running_r: dict[str, Running] = {}  # the core's view, in admission order
        self.project_tuple = tuple(self.projects.values())
        self.usage = dict.fromkeys(self.projects, 0.0)  # decayed GPU-seconds
        self.usage_t = 0.0
        self.cycles = self.idle_cycles = self.preemptions = self.admissions = 0
        self.lost_gpu_s = 0.0
        self.ratio_samples: dict[str, deque[float]] = {p: deque(maxlen=RATIO_WINDOW) for p in self.projects}
        self.ratio = dict.fromkeys(self.projects, 1.0)
        self.ckpt_running: set[str] = set()  # running checkpointable jobs (their view changes with time)

    # -- event loop ---------------------------------------------------------------------------
    def run(self) -> SimResult:
        t0, c0 = time.perf_counter(), time.process_time()
        interval = self.cfg.cycle_interval
        while self.events:
            t = self.events[0][0]
            now = math.ceil(t / interval) * interval if interval > 0 else t
            changed = False
            while self.events and self.events[0][0] <= now:
                et, kind, _, jid, attempt = heapq.heappop(self.events)
                changed |= self._apply_event(et, kind, jid, attempt)
            if not changed:
                continue
            for _ in range(MAX_CYCLES_PER_INSTANT):
                if not self._worth_a_cycle() and not (self.explain and self.unseen):
                    break
                again = self._cycle(now)
                if self.cfg.progress and self.cycles % 1000 == 0:
                    print(f"[{time.perf_counter() - t0:7.1f}s] t={now / 86400:6.2f}d cycles={self.cycles} "
                          f"pending={sum(map(len, self.queue.values()))} running={len(self.running)}",
                          file=sys.stderr, flush=True)
                if not again:
                    break
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self._check_finished()
        outcomes = tuple(
            JobOutcome(id=lv.tj.id, project=lv.tj.project, submit=lv.tj.submit_time, duration=lv.tj.duration,
                       gpus=lv.tj.gpus, first_start=lv.first_start, end=lv.end,
                       preemptions=lv.preemptions, lost_gpu_s=lv.lost_gpu_s,
                       workload_class=lv.tj.workload_class.value, held_gpu_s=lv.held_gpu_s,
                       first_estimate=lv.first_estimate)
            for lv in self.live.values()
        )
        m = metrics(outcomes, self.capacity, explain=self.explain)
        m.update(preemptions=self.preemptions, cycles=self.cycles, idle_cycles=self.idle_cycles, admissions=self.admissions,
                 lost_gpu_s=round(self.lost_gpu_s, 1), skipped_jobs=len(self.skipped),
                 wall_s=round(wall, 3), cpu_s=round(cpu, 3), policy=self.cfg.policy.name, nodes=len(self.nodes),
                 gpus_per_node=self.gpus_per_node, gpus=self.capacity,
                 cycle_interval_s=interval, shares=self.cfg.shares, queue_depth=self.cfg.queue_depth,
                 checkpoint_interval_s=self.cfg.checkpoint_interval, explain=self.explain)
        return SimResult(m, outcomes)

    def _check_finished(self) -> None:
        """Raise ReplayError when the events ran out with jobs never completed, with the reasons
        one explained cycle over all of them gives (grouped by code, one example each)."""
        stuck = [lv for lv in self.live.values() if lv.end is None]
        if not stuck:
            return
        snap = Snapshot(nodes=self.nodes, pools=self.pools, departments=self.departments, projects=self.project_tuple,
                        running=tuple(self.running_r.values()), pending=tuple(lv.job for lv in stuck if lv.running is None))
        reasons = self.cycle_fn(snap, self.usage_t, replace(self.policy, explain=True)).pending
        codes: Counter[str] = Counter()
        example: dict[str, str] = {}
        for lv in stuck:
            why = reasons.get(lv.tj.id)
            code = why.code.value if why else "NO_REASON"
            codes[code] += 1
            example.setdefault(code, f"job {lv.tj.id}: {why.message if why else 'the cycle gave no reason'}")
        parts = "; ".join(f"{n:,} {code} (e.g. {example[code]})" for code, n in codes.most_common())
        raise ReplayError(f"the replay cannot finish: {len(stuck):,} of {len(self.live):,} jobs never completed: {parts}")

    def _push(self, t: float, kind: int, jid: str, attempt: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, jid, attempt))

    def _apply_event(self, t: float, kind: int, jid: str, attempt: int) -> bool:
        lv = self.live[jid]
        if kind == _SUBMIT:
            self._enqueue(lv)
            if self.explain:
                self.unseen.append(jid)
            return True
        if lv.running is None or lv.attempt != attempt:
            return False  # a finish made stale by a preemption
        if kind == _FINISH:
            lv.end = t
            lv.remaining = 0.0
            self._learn_ratio(lv, t)
        self._release(lv, t)
        if kind == _STOP:
            self._enqueue(lv)
        return True

    def _learn_ratio(self, lv: _Live, t: float) -> None:
        """A finished attempt's real / requested runtime feeds its project's runtime ratio."""
        if not self.cfg.learn_runtime_ratio or lv.start is None or lv.job.max_runtime_s <= 0:
            return
        samples = self.ratio_samples[lv.tj.project]
        samples.append(min(1.0, max(0.0, t - lv.start) / lv.job.max_runtime_s))
        if len(samples) >= RATIO_MIN_SAMPLES:
            self.ratio[lv.tj.project] = max(RATIO_FLOOR, min(1.0, statistics.median(samples)))

    # -- queue and cluster bookkeeping ---------------------------------------------------------
    def _key(self, job: Job) -> tuple:
        return (job.workload_class.rank, -job.priority, job.submit_time, job.id)

    def _enqueue(self, lv: _Live) -> None:
        job = lv.job
        insort(self.queue[job.project], self._key(job))
        if self.policy.strict_fifo:
            insort(self.fifo, (job.submit_time, job.id))
        self.pend_sizes[job.project][lv.tj.gpus] += 1

    def _dequeue(self, lv: _Live) -> None:
        job = lv.job
        self.queue[job.project].remove(self._key(job))
        if self.policy.strict_fifo:
            self.fifo.remove((job.submit_time, job.id))
        sizes = self.pend_sizes[job.project]
        sizes[lv.tj.gpus] -= 1
        if not sizes[lv.tj.gpus]:
            del sizes[lv.tj.gpus]

    def _release(self, lv: _Live, t: float) -> None:
        assert lv.running is not None and lv.start is not None
        lv.held_gpu_s += (t - lv.start) * lv.tj.gpus
        self._decay_to(t)
        for p in lv.running.placements:
            self.free[p.node] += lv.job.per_worker.gpus
        self.free_total += lv.tj.gpus
        self.used[lv.tj.project] -= lv.tj.gpus
        self.borrowers -= lv.running.borrowing
        del self.running[lv.tj.id]
        del self.running_r[lv.tj.id]
        self.ckpt_running.discard(lv.tj.id)
        lv.running, lv.stopping = None, False

    def _decay_to(self, t: float) -> None:
        """Integrate decayed usage exactly: U' = U d + r h/ln2 (1 - d), d = 2^(-dt/h)."""
        dt = t - self.usage_t
        if dt <= 0:
            return
        h = self.policy.fair_share_half_life_s
        d = 2.0 ** (-dt / h)
        gain = h / math.log(2) * (1.0 - d)
        for p, u in self.usage.items():
            self.usage[p] = u * d + self.used[p] * gain
        self.usage_t = t

    # -- cycles --------------------------------------------------------------------------------
    def _worth_a_cycle(self) -> bool:
        """Necessary condition for a cycle to admit or preempt anything (see module doc)."""
        if self.policy.strict_fifo:
            if not self.fifo:
                return False
            head = self.live[self.fifo[0][1]]
            return head.tj.gpus <= self.free_total
        smallest = [min(s) for s in self.pend_sizes.values() if s]
        if not smallest:
            return False
        if min(smallest) <= self.free_total:
            return True
        if not (self.policy.preemption and self.borrowers):
            return False
        return any(s and self.used[p] + min(s) <= self.nominal[p] + 1e-9 for p, s in self.pend_sizes.items())

    def _pending_view(self) -> tuple[Job, ...]:
        live = self.live
        if self.policy.strict_fifo:
            head = [live[jid].job for _, jid in self.fifo[: self.free_total + 1]]
            if self.unseen:  # explain: every new job gets its reason at its first cycle
                shown = {j.id for j in head}
                head.extend(live[jid].job for jid in self.unseen if jid not in shown and live[jid].running is None)
            return tuple(head)
        depth = self.cfg.queue_depth
        out: list[Job] = []
        for q in self.queue.values():
            sel = q if depth <= 0 else q[: max(depth, self.free_total + 1)]
            out.extend(live[k[3]].job for k in sel)
        if self.unseen:  # explain: every new job gets its reason at its first cycle
            shown = {j.id for j in out}
            out.extend(live[jid].job for jid in self.unseen if jid not in shown and live[jid].running is None)
        return tuple(out)

    def _running_view(self, now: float) -> tuple[Running, ...]:
        """The running jobs as the broker shows them: a checkpointable job's last checkpoint
        (`Running.checkpoint_time`) is start + floor(ran / S) x S with ``--checkpoint-interval S``,
        None without."""
        every = self.cfg.checkpoint_interval
        if every <= 0 or not self.ckpt_running:
            return tuple(self.running_r.values())
        ck = self.ckpt_running
        return tuple(replace(r, checkpoint_time=r.start_time + math.floor((now - r.start_time) / every) * every)
                     if r.job.id in ck else r for r in self.running_r.values())

    def _cycle(self, now: float) -> bool:
        """Run one cycle at `now` and apply it. True when another cycle at `now` may help."""
        self._decay_to(now)
        if self.policy.fair_share or (self.cfg.learn_runtime_ratio and (self.policy.backfill or self.explain)):
            u, ratio, fs = self.usage, self.ratio, self.policy.fair_share
            projects = tuple(Project(p.id, p.department, p.weight, p.budget_gpu_hours, p.spent_gpu_hours,
                                     u[p.id] if fs else 0.0, p.quotas, ratio[p.id]) for p in self.projects.values())
        else:
            projects = self.project_tuple
        snap = Snapshot(nodes=self.nodes, pools=self.pools, departments=self.departments, projects=projects,
                        running=self._running_view(now), pending=self._pending_view())
        result = self.cycle_fn(snap, now, self.policy)
        self.cycles += 1
        if self.unseen:
            for jid in self.unseen:
                why = result.pending.get(jid)
                self.live[jid].first_estimate = why.estimated_start if why is not None else None
            self.unseen.clear()
        self.idle_cycles += not (result.admissions or result.preemptions)
        stopped_now = False
        for pre in result.preemptions:
            lv = self.live.get(pre.job_id)
            if lv is None or lv.running is None or lv.stopping:
                continue  # already stopping: a repeated decision is a no-op
            self._preempt(lv, now)
            stopped_now |= self.cfg.preempt_grace <= 0
        for adm in result.admissions:
            self._admit(adm, now)
        return stopped_now

    def _preempt(self, lv: _Live, now: float) -> None:
        self.preemptions += 1
        lv.preemptions += 1
        ran = now - lv.start if lv.start is not None else 0.0
        if lv.tj.checkpointable:  # resumes from its last checkpoint
            every = self.cfg.checkpoint_interval
            saved = ran if every <= 0 else math.floor(ran / every) * every
            lv.remaining = max(0.0, lv.remaining - saved)
        else:  # restarts: the work since the last start is lost
            saved = 0.0
            lv.remaining = lv.tj.duration
        lost = (ran - saved) * lv.tj.gpus
        lv.lost_gpu_s += lost
        self.lost_gpu_s += lost
        lv.attempt += 1  # the pending finish event is now stale
        lv.job = replace(lv.job, preemptions=lv.preemptions)  # as the broker counts its preempted attempts
        if self.cfg.preempt_grace <= 0:
            self._release(lv, now)
            self._enqueue(lv)
        else:
            lv.stopping = True
            self._push(now + self.cfg.preempt_grace, _STOP, lv.tj.id, lv.attempt)

    def _admit(self, adm, now: float) -> None:
        lv = self.live.get(adm.job_id)
        if lv is None or lv.running is not None or lv.end is not None:
            raise SimulationError(f"cycle admitted {adm.job_id!r}, which is not pending")
        per = lv.job.per_worker.gpus
        if len(adm.placements) != lv.job.workers:
            raise SimulationError(f"{adm.job_id}: {len(adm.placements)} placements for {lv.job.workers} workers")
        for p in adm.placements:
            if self.free.get(p.node, -1) < per:
                raise SimulationError(f"{adm.job_id}: node {p.node} over-allocated")
            self.free[p.node] -= per
        self._dequeue(lv)
        self._decay_to(now)
        self.free_total -= lv.tj.gpus
        self.used[lv.tj.project] += lv.tj.gpus
        self.borrowers += adm.borrowing
        lv.running = Running(job=lv.job, placements=adm.placements, start_time=now, flavor=adm.flavor,
                             borrowing=adm.borrowing)
        lv.start = now
        if lv.first_start is None:
            lv.first_start = now
        self.running[lv.tj.id] = lv
        self.running_r[lv.tj.id] = lv.running
        if lv.job.checkpointable:
            self.ckpt_running.add(lv.tj.id)
        self.admissions += 1
        self._push(now + lv.remaining, _FINISH, lv.tj.id, lv.attempt)


# -- CLI ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m scheduler.simulate`; the command line lives in `scheduler.sim.cli`."""
    from scheduler.sim.cli import simulate_main

    return simulate_main(argv)


if __name__ == "__main__":
    sys.exit(main())
