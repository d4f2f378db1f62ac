"""The scheduling loop: observe the executor, run the core, apply its decisions, launch.

One `tick()` is four steps, each with short transactions and no network call inside one:

1. sync nodes   executor inventory -> Node rows (new nodes join READY; a node the executor
                reports dead or no longer lists becomes UNHEALTHY, and READY again when it
                returns, unless an admin or the health monitor set another state).
2. observe      executor status of every job that holds resources -> state transitions:
                STARTING -> RUNNING when every worker runs; SUCCEEDED when all exit 0; FAILED on
                the first non-zero exit (the rest of the gang is stopped); LOST when a worker
                vanishes; cancel requests and preemptions stop the workers and finish once
                they are gone. The attempt's ledger row is closed when its workers are gone.
3. schedule     DB rows -> `Snapshot` -> `scheduler.run_cycle(snapshot, now, policy)`; admissions
                are applied with compare-and-set (PENDING -> ADMITTED + placements + an open
                ledger row, in one transaction per cycle), preemption victims go to PREEMPTED,
                pending reasons are written where they changed.
4. launch       every ADMITTED job is launched (idempotent per attempt) and moves to STARTING.

Choices where the issues are silent: a preempted job goes back to PENDING without using up a
retry (preemption is the platform's decision, not the job's failure); a lost job uses one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker import failpoints, jobstate
from broker.db import one_of
from broker.errors import BrokerError, Forbidden, Invalid, NotFound
from broker.models import Attempt, Job, JobStatus, Ledger, Node, Placement
from broker.ports import IMAGE_LABEL, SPENT_REASON, AttemptStatus, Clock, Executor, LaunchSpec, WorkerLaunch, WorkerState
from broker.services import scheduling_queries as repo
from broker.services.checkpoints import last_checkpoint
from broker.services import jobdata
from broker.services.leadership import Leadership
from broker.services.secrets import SecretService
from broker.services.ledger_usage import LedgerUsage
from broker.services.pending_cache import PendingCache
from broker.services.snapshot import RATIO_WINDOW, build_snapshot, runtime_ratio
from broker.settings import Settings
from scheduler import run_cycle
from scheduler.model import CycleResult, NodeState, Policy

log = logging.getLogger("broker.scheduling")
S = JobStatus

EXECUTOR_REASON = "executor: "  # prefix of node states this loop sets (and may clear)
DEAD_REASON = EXECUTOR_REASON + "the executor reports the node dead"
# A worker lost on a node is often the first sign of the node dying, seconds before the executor
# declares it dead (Ray's health checks): hold the node out for `lost_node_hold_s` so the
# requeued job does not land on it again and get lost twice.
RATIO_REFRESH_S = 60.0  # projects' runtime ratios are re-learned this often
RATIO_LOOKBACK_S = 30 * 86400.0  # ... from attempts that ended within this window
LAST_SEEN_EVERY_S = 15.0  # how often a running attempt's last_seen_at is written (at most)
REASON_REFRESH_S = 5.0  # a pending job's numbers (position, estimate, message) are rewritten at most this often
# ... and at most this many such rewrites per tick, the longest unwritten first: on a queue of
# 10,000 jobs every position moves at every tick, and rewriting all of them cost more than the
# cycle (a new code or note is always written at once; it is news, not a moving number)
REASON_REFRESH_PER_TICK = 1000
FENCE_FRESH_S = 1.0  # a launch trusts the fenced "still ADMITTED" read for this long
LOST_REASON = EXECUTOR_REASON + "a running worker was lost on this node"


@dataclass
class TickReport:
    admitted: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    pending: int = 0
    cycle_ms: float = 0.0
    tick_s: float = 0.0  # the whole tick, all four steps


class SchedulingLoop:
    def __init__(self, settings: Settings, engine: Engine, executor: Executor, *,
                 clock: Clock = time.time, policy: Policy | None = None,
                 on_nodes_changed: Callable[[], None] | None = None, leader: Leadership | None = None,
                 on_tick: Callable[[TickReport], None] | None = None,
                 pending_note: Callable[[str], str | None] | None = None,
                 secrets: SecretService | None = None) -> None:
        """`leader`: every transaction of the loop is fenced by it (`Leadership.guard`), so a
        broker that lost the leadership mid-tick commits nothing more; None: unfenced.
        `on_tick`: told each finished tick's report (metrics; must not block).
        `pending_note(job_id)`: what else is being done for a waiting job (cluster mode: "scaling
        up: 2 nodes requested at 10:02 UTC"), appended to its pending message."""
        self.on_tick = on_tick
        self.settings, self.engine, self.executor, self.clock = settings, engine, executor, clock
        self.leader = leader
        self.secrets = secrets  # reads a job's secrets at launch (services.jobdata)
        self.on_nodes_changed = on_nodes_changed  # e.g. drop the submit path's inventory cache
        self.pending_note = pending_note
        self.policy = policy or settings.policy()
        self._stopping: set[tuple[str, int]] = set()  # stop() already sent for these attempts
        self._cause: dict[tuple[str, int], object] = {}  # the worker whose failure stopped its gang
        self._started: dict[tuple[str, int], float] = {}  # start seen only once the gang was gone
        self._seen: dict[tuple[str, int], float] = {}  # last observation of a running worker
        self._seen_written: dict[tuple[str, int], float] = {}  # ... and when it was last stored
        self._ratios: tuple[float, dict[str, float]] | None = None  # (learned at, per project)
        # newest checkpoint per running checkpointable job, read by `observe` outside any
        # transaction (the checkpoint root may be a network filesystem) and used by `schedule`
        self._checkpoint_times: dict[str, float] = {}
        self._deferred: list | None = None  # the observe pass's moves, applied together (`_move`)
        self._seen_due: list[tuple[tuple[str, int], float]] = []  # the pass's last-seen times to store
        self._reason_written: dict[str, float] = {}  # job id -> when its pending reason was last written
        self._queue = PendingCache()  # the PENDING rows between ticks, re-read when their version moves
        self._images = settings.image_keys()  # approved image reference -> key (pods per image)
        self._usage = LedgerUsage()  # budget and fair-share usage, closed ledger rows folded once
        self._scheduled_at = float("-inf")  # monotonic time of the last schedule step
        self._lock = threading.Lock()  # one tick at a time, whoever calls it
        self.last_cycle: CycleResult | None = None
        self.last_report: TickReport | None = None
        self.last_tick_at: float | None = None

    # ------------------------------------------------------------------ the tick
    def tick(self) -> TickReport:
        with self._lock:
            rep, t0 = TickReport(), time.perf_counter()
            self.sync_nodes()
            self.observe(rep)
            self.schedule(rep)
            self.launch_admitted(rep)
            rep.tick_s = time.perf_counter() - t0
            self.last_report, self.last_tick_at = rep, self.clock()
            if self.on_tick is not None:
                self.on_tick(rep)
            return rep

    def _session(self) -> Session:
        s = Session(self.engine)
        if self.leader is not None:
            self.leader.guard(s)
        return s

    # ------------------------------------------------------------------ 1. nodes
    def sync_nodes(self) -> None:
        observed = {o.id: o for o in self.executor.nodes()}
        now = self.clock()
        dirty = False
        with self._session() as s:
            rows = {n.id: n for n in repo.nodes(s)}
            for nid, o in observed.items():
                row = rows.get(nid)
                if row is None:
                    row = Node(id=nid, pool=o.pool, state=NodeState.READY.value)
                pool = row.pool_override or o.pool  # an admin's move wins over the executor's label
                changed = _assign(row, hostname=o.hostname, address=o.address, pool=pool, observed_pool=o.pool,
                                  gpu_model=o.gpu_model,
                                  gpus=o.capacity.gpus, cpus=o.capacity.cpus, memory_gb=o.capacity.memory_gb,
                                  labels=dict(o.labels))
                held = row.held_until is not None and now < row.held_until
                if not o.alive and (row.state == NodeState.READY.value or row.state_reason == LOST_REASON):
                    changed |= _assign(row, state=NodeState.UNHEALTHY.value, state_reason=DEAD_REASON, held_until=None)
                elif o.alive and row.state == NodeState.UNHEALTHY.value and row.state_reason.startswith(EXECUTOR_REASON) \
                        and not held:
                    changed |= _assign(row, state=NodeState.READY.value, state_reason="", held_until=None)
                if changed or nid not in rows:
                    row.updated_at = now
                    s.add(row)
                    dirty = True
            # a pod per image that is gone holds nothing any more: its row goes (each attempt
            # has a pod of its own, so they would pile up in every snapshot); its placements and
            # telemetry keep its name. One that still holds an attempt waits until that has ended.
            gone = [nid for nid, row in rows.items() if (row.labels or {}).get(IMAGE_LABEL)
                    and (nid not in observed or not observed[nid].alive)]
            if gone:
                held_now = repo.holding_nodes(s, gone)
                for nid in gone:
                    if nid not in held_now:
                        s.delete(rows.pop(nid))
                        dirty = True
            for nid, row in rows.items():
                if nid not in observed and row.state == NodeState.READY.value:
                    _assign(row, state=NodeState.UNHEALTHY.value,
                            state_reason=EXECUTOR_REASON + "the node left the executor's inventory", updated_at=now)
                    s.add(row)
                    dirty = True
            s.commit()
        if dirty and self.on_nodes_changed is not None:
            self.on_nodes_changed()

    # ------------------------------------------------------------------ 2. observe
    def observe(self, rep: TickReport) -> None:
        """Ask the executor about every attempt that holds resources and write what changed
        (starts, ends, requeues, last-seen times) in one transaction for the whole pass: one
        commit per tick instead of one per job and state change (each commit is a round trip
        and a WAL flush on PostgreSQL; measured in BENCHMARKS.md, "Scale"). What must follow
        the commit (releasing the executor's attempt, telling that nodes changed) runs after it."""
        with self._session() as s:
            jobs = [j for j in repo.holding_jobs(s) if j.status != S.ADMITTED.value]
            s.expunge_all()
        self._checkpoint_times = self._checkpoints(jobs)
        seen: list[tuple[Job, AttemptStatus]] = []
        for job in jobs:  # the executor first, outside the transaction: no row lock waits on it
            try:
                seen.append((job, self.executor.status(job.id, job.attempt)))
            except Exception as e:  # an executor hiccup must not stop the loop
                log.warning("status of %s/%s failed: %s", job.id, job.attempt, e)
        after: list[Callable[[], None]] = []
        with self._session() as s:
            # Every row the pass reads, in a few SELECTs; and no autoflush: what the pass changes
            # (attempts, ledger rows, events) goes out batched at the commit, not row by row
            # before each compare-and-set UPDATE.
            s.autoflush = False
            # (an attempt that runs on, all workers up, reads nothing: only the others are loaded)
            repo.preload(s, [(job.id, job.attempt) for job, st in seen if not _runs_on(job, st)])
            self._seen_due = seen_due = []
            # The common moves (STARTING -> RUNNING, an attempt that ended) are applied together
            # after the pass (`jobstate.transition_many`: a few statements, not one round trip
            # each); each job is looked at once per pass, so none depends on another's move.
            self._deferred = deferred = []
            try:
                for job, st in seen:
                    self._observe_one(s, job, st, rep, after)
            finally:
                self._deferred = None
            for (_, on_ok), ok in zip(deferred, jobstate.transition_many(s, [m for m, _ in deferred])):
                if ok and on_ok is not None:
                    on_ok()
            if seen_due:  # one statement; the earliest time seen counts for all (never later than true)
                at = min(t for _, t in seen_due)
                repo.mark_attempts_seen(s, [k for k, _ in seen_due], at)
                after.append(partial(self._seen_written.update, {k: at for k, _ in seen_due}))
            s.commit()
        for fn in after:
            fn()

    def _observe_one(self, s: Session, job: Job, st: AttemptStatus, rep: TickReport,
                     after: list[Callable[[], None]]) -> None:
        """One attempt's status, written in the pass's transaction `s`; what must wait for its
        commit, and every call to the executor (stops), goes to `after`: no network call while
        the transaction holds row locks."""
        key = (job.id, job.attempt)
        now = self.clock()
        status = S(job.status)
        workers = st.workers
        exited = [w for w in workers if w.state is WorkerState.EXITED]
        lost = [w for w in workers if w.state is WorkerState.LOST]
        gone = st.exists is False or (workers and len(exited) + len(lost) == len(workers))
        if any(w.state is WorkerState.RUNNING for w in workers):
            self._note_seen(key, now)

        if status in (S.PREEMPTED, S.LOST):
            if not gone:
                if status is S.PREEMPTED:
                    after.append(partial(self._stop, job, job.message or "preempted", reason="preempted"))
                else:
                    after.append(partial(self._stop, job, "lost", reason="lost"))
                return
            self._finish(s, job, None, now, rep, after, release=True)
            return

        if job.cancel_requested_at is not None and not gone:
            after.append(partial(self._stop, job, "cancelled", reason="cancelled"))
            return

        if not st.exists:
            if status is S.STARTING and now - (job.admitted_at or now) < self.settings.starting_timeout_s:
                return  # launch may still be settling
            self._finish(s, job, S.LOST, now, rep, after, message="the executor no longer knows this attempt")
            return
        if lost and not gone:
            after.append(partial(self._stop, job, "a gang member was lost", reason="lost"))
            return
        failed = [w for w in exited if w.exit_code not in (0, None)]
        first = self._cause.get(key)
        if failed and first is None:
            first = self._cause[key] = min(failed, key=lambda w: (w.ended_at or now, w.rank))
        if failed and not gone:
            after.append(partial(self._stop, job, f"worker {first.rank} exited with code {first.exit_code}",
                                 reason="failed"))
            return
        if gone:
            # A worker that started and exited between two ticks never showed RUNNING: keep
            # its real start time all the same.
            started = min((w.started_at for w in workers if w.started_at), default=None)
            if started is not None and job.started_at is None:
                self._started[key] = started
                self._record_devices(s, job, st)  # ... and the GPUs it ran on
            if job.cancel_requested_at is not None:
                self._finish(s, job, S.CANCELLED, now, rep, after, message="cancelled", exit_code=_first_bad(workers))
            elif lost and not failed:
                self._finish(s, job, S.LOST, now, rep, after,
                             message=f"worker {lost[0].rank} was lost: {lost[0].message}".rstrip(": "),
                             lost_ranks=[w.rank for w in lost])
            elif failed:
                w = first
                why = f"worker {w.rank} exited with code {w.exit_code}" + (f" ({w.message})" if w.message else "")
                self._finish(s, job, S.FAILED, now, rep, after, message=why, exit_code=w.exit_code)
            else:
                self._finish(s, job, S.SUCCEEDED, now, rep, after, message="all workers exited 0", exit_code=0)
            return
        if status is S.STARTING and workers and all(w.state in (WorkerState.RUNNING, WorkerState.EXITED) for w in workers):
            started = min((w.started_at for w in workers if w.started_at), default=now)
            row = s.get(Job, job.id)
            if row is not None and row.status == S.STARTING.value and row.attempt == job.attempt:
                self._move(s, jobstate.Move(row, S.RUNNING, row.version, fields={"started_at": started}), now)
                self._record_devices(s, job, st)

    def grace_s(self, job: Job) -> float:
        """The grace of the pool the attempt was admitted to (its flavor) and the job's class."""
        return self.settings.grace_for(job.flavor_pool or job.pool, job.workload_class)

    def checkpoint_dir(self, job: Job) -> str:
        return str(self.settings.checkpoint_dir(job.project_id, job.id)) if job.checkpointable else ""

    def _hold_out(self, s: Session, job_id: str, attempt: int, ranks: Sequence[int], now: float) -> bool:
        """Nodes where these workers were lost get no new work for a while (LOST_REASON), in
        the caller's transaction; True when a node changed (the caller tells after commit)."""
        if not ranks:
            return False
        nodes = {p.node_id for p in s.execute(select(Placement).where(
            Placement.job_id == job_id, Placement.attempt == attempt, Placement.rank.in_(list(ranks)))).scalars()}
        for nid in sorted(nodes):
            node = s.get(Node, nid)
            if node is not None and node.state == NodeState.READY.value:
                _assign(node, state=NodeState.UNHEALTHY.value, state_reason=LOST_REASON, updated_at=now,
                        held_until=now + self.settings.lost_node_hold_s)
                s.add(node)
                log.warning("node %s held out for %.0f s: a worker of %s/%s was lost there", nid,
                            self.settings.lost_node_hold_s, job_id, attempt)
        return bool(nodes)

    def _stop(self, job: Job, why: str, *, reason: str) -> None:
        """Stop the job's current attempt once: notice (why, reason), SIGTERM, SIGKILL after the
        grace of the pool and class it runs in."""
        self._stop_attempt((job.id, job.attempt), why, reason=reason, grace_s=self.grace_s(job))

    def _stop_attempt(self, key: tuple[str, int], why: str, *, reason: str, grace_s: float) -> None:
        if key in self._stopping:
            return
        self._stopping.add(key)
        try:
            self.executor.stop(key[0], key[1], grace_s, why, reason)
        except Exception as e:
            self._stopping.discard(key)
            log.warning("stop of %s/%s failed: %s", key[0], key[1], e)

    def _finish(self, s: Session, job: Job, to: JobStatus | None, now: float, rep: TickReport,
                after: list[Callable[[], None]], *, message: str = "", exit_code: int | None = None,
                release: bool = True, lost_ranks: Sequence[int] = ()) -> None:
        """End the current attempt in the caller's transaction `s`: close its ledger row, move
        the job on; releasing the executor's attempt waits for the commit (`after`).

        `to=None` means the job was PREEMPTED/LOST and its workers are now gone: requeue it."""
        key = (job.id, job.attempt)
        held = False
        row = s.get(Job, job.id)
        if row is None or row.attempt != job.attempt or S(row.status) not in (S.STARTING, S.RUNNING, S.PREEMPTED, S.LOST):
            return
        lost_now = to is S.LOST or (to is None and row.status == S.LOST.value)
        _close_ledger(s, row, self._last_seen(s, row, now) if lost_now else now)
        if to is None:
            if row.status == S.PREEMPTED.value and row.cancel_requested_at is None:
                jobstate.transition(s, row, S.PENDING, expected_version=row.version, now=now,
                                    message="requeued after preemption")
            elif row.cancel_requested_at is not None:
                jobstate.transition(s, row, S.CANCELLED, expected_version=row.version, now=now, message="cancelled")
            else:
                jobstate.requeue_or_fail(s, row, expected_version=row.version, now=now)
        elif to is S.LOST:
            if jobstate.transition(s, row, S.LOST, expected_version=row.version, now=now, message=message):
                jobstate.requeue_or_fail(s, row, expected_version=row.version, now=now)
                held = self._hold_out(s, job.id, job.attempt, lost_ranks, now)
        else:
            fields = {"exit_code": exit_code} if exit_code is not None else {}
            if row.started_at is None and key in self._started:
                fields["started_at"] = self._started[key]
            def started_at() -> None:
                att = s.get(Attempt, (row.id, row.attempt))
                if att is not None and att.started_at is None:
                    att.started_at = fields["started_at"]
                    s.add(att)
            self._move(s, jobstate.Move(row, to, row.version, message=message, fields=fields), now,
                       started_at if "started_at" in fields else None)
        rep.finished.append(job.id)
        after.append(lambda: self._finished(key, held, release))

    def _move(self, s: Session, move: jobstate.Move, now: float, on_ok: Callable[[], None] | None = None) -> None:
        """`move` now, or with the others of the observe pass when it collects them."""
        if self._deferred is not None:
            self._deferred.append((dataclasses.replace(move, now=now), on_ok))
            return
        if jobstate.transition(s, move.job, move.to, expected_version=move.expected_version, now=now,
                               message=move.message, event_details=move.event_details, **move.fields) \
                and on_ok is not None:
            on_ok()

    def _finished(self, key: tuple[str, int], held: bool, release: bool) -> None:
        """After the commit that ended an attempt: a reload sees a node hold, the executor lets
        the attempt go, and the loop forgets it."""
        if held and self.on_nodes_changed is not None:
            self.on_nodes_changed()
        if release:
            try:
                self.executor.release(*key)
            except Exception as e:
                log.warning("release of %s/%s failed (the reconciler retries): %s", key[0], key[1], e)
        self._stopping.discard(key)
        self._cause.pop(key, None)
        self._started.pop(key, None)
        self._seen.pop(key, None)
        self._seen_written.pop(key, None)

    def _note_seen(self, key: tuple[str, int], now: float) -> None:
        """Remember that the attempt's workers run; store it at most every LAST_SEEN_EVERY_S
        (the pass writes every attempt due in one UPDATE, in its transaction), so a broker that
        restarts still knows when it was last alive."""
        self._seen[key] = now
        if now - self._seen_written.get(key, float("-inf")) < LAST_SEEN_EVERY_S:
            return
        self._seen_due.append((key, now))

    def _last_seen(self, s: Session, job: Job, now: float) -> float:
        """Until when a LOST attempt is charged: the last time a worker was seen running (this
        loop's observation, the stored one, or an agent's GPU sample attributed to the job),
        never later than now; with no sign of life at all, its start (nothing is charged)."""
        att = s.get(Attempt, (job.id, job.attempt))
        since = (att.started_at if att is not None and att.started_at else None) or job.started_at or now
        seen = [t for t in (self._seen.get((job.id, job.attempt)), att.last_seen_at if att is not None else None,
                            repo.last_sample_of(s, job.id, since)) if t is not None]
        return min(now, max(seen)) if seen else min(now, since)

    def _runtime_ratios(self, s: Session, now: float) -> dict[str, float]:
        """Each project's real / requested runtime, re-learned every RATIO_REFRESH_S."""
        if self._ratios is None or now - self._ratios[0] >= RATIO_REFRESH_S:
            samples = repo.recent_runtimes(s, now - RATIO_LOOKBACK_S, RATIO_WINDOW)
            self._ratios = (now, {p: runtime_ratio(v) for p, v in samples.items()})
        return self._ratios[1]

    def _checkpoints(self, holding: Sequence[Job]) -> dict[str, float]:
        """Newest checkpoint of each running checkpointable job this broker can see."""
        out = {}
        for j in holding:
            if j.checkpointable and (t := last_checkpoint(self.settings.checkpoint_dir(j.project_id, j.id))):
                out[j.id] = t
        return out

    @staticmethod
    def _record_devices(s: Session, job: Job, st: AttemptStatus) -> None:
        for w in st.workers:
            p = s.get(Placement, (job.id, job.attempt, w.rank))
            if p is not None and w.cuda_visible_devices and p.cuda_visible_devices != w.cuda_visible_devices:
                p.cuda_visible_devices = w.cuda_visible_devices
                s.add(p)

    # ------------------------------------------------------------------ 3. schedule
    def schedule(self, rep: TickReport) -> CycleResult | None:
        if time.monotonic() - self._scheduled_at > self._queue.max_age_s:
            self._queue.clear()  # not scheduling for a while (a follower): another leader wrote
            self._usage.clear()
        self._scheduled_at = time.monotonic()
        try:
            return self._schedule(rep)
        except BaseException:
            self._queue.clear()  # what it holds may not be what the database has now
            self._usage.clear()
            raise

    def _schedule(self, rep: TickReport) -> CycleResult | None:
        now = self.clock()
        with self._session() as s:
            holding = repo.holding_jobs(s)
            pending = self._queue.load(s)
            if not pending:
                return None
            projects = repo.projects(s)
            pending, capped = concurrency_cap(projects, holding, pending)
            snap = build_snapshot(
                now=now, half_life_s=self.policy.fair_share_half_life_s, departments=repo.departments(s),
                projects=projects, pools=repo.pools(s), nodes=repo.nodes(s), quotas=repo.quota_rows(s),
                holding=holding, placements=repo.placements_of(s, [(j.id, j.attempt) for j in holding]),
                pending=pending, ledger=(), usage=self._usage.usage(s, now, self.policy.fair_share_half_life_s),
                runtime_ratios=self._runtime_ratios(s, now), checkpoints=self._checkpoint_times,
                preemptions=repo.preemption_counts(s, [j.id for j in holding if j.attempt > 1]),
                cached=self._queue.converted, images=self._images,
            )
            t0 = time.perf_counter()
            result = run_cycle(snap, now, self.policy)
            rep.cycle_ms = (time.perf_counter() - t0) * 1000.0
            by_id = {j.id: j for j in pending}
            held = {j.id: j for j in holding}
            # A node an admin moved to another pool since the snapshot takes no admission this
            # tick (the next one decides with the new pool); the share lock makes a move that
            # comes after this point wait for our commit, and then see our placements (NODE_BUSY).
            seen_pool = {n.id: n.pool for n in snap.nodes}
            now_pool = repo.node_pools_locked(s, (p.node for adm in result.admissions for p in adm.placements))
            moved = {nid for nid, pool in now_pool.items() if pool != seen_pool.get(nid)}
            # No autoflush while the decisions are applied: each compare-and-set UPDATE would
            # first flush what the admissions before it added (attempt, placements, ledger row,
            # event), a few round trips per admission; it all goes out batched at the commit.
            s.autoflush = False
            admissions = []
            for adm in result.admissions:
                if moved and any(p.node in moved for p in adm.placements):
                    log.info("admission of %s skipped: a node of its placement changed pool", adm.job_id)
                    continue
                admissions.append(adm)
            # every compare-and-set of the admissions in a few statements (`transition_many`)
            applied = jobstate.transition_many(s, [jobstate.Move(
                by_id[adm.job_id], S.ADMITTED, by_id[adm.job_id].version,
                event_details={"placements": [{"rank": p.rank, "node": p.node, "gpus": list(p.gpu_indices)}
                                              for p in adm.placements], "borrowing": adm.borrowing},
                fields={"borrowing": adm.borrowing, "flavor_pool": adm.flavor.pool,
                        "flavor_gpu_model": adm.flavor.gpu_model}) for adm in admissions], now=now)
            pods = {n.id for n in snap.nodes if n.image}  # nodes dedicated to an image: one attempt each
            for adm, ok in zip(admissions, applied):
                if not ok:
                    continue
                job = by_id[adm.job_id]
                self._queue.left_queue(job.id)
                for p in adm.placements:
                    s.add(Placement(job_id=job.id, attempt=job.attempt, rank=p.rank, node_id=p.node,
                                    gpu_indices=list(p.gpu_indices)))
                s.add(Ledger(job_id=job.id, attempt=job.attempt, project_id=job.project_id,
                             department_id=snap_department(snap, job.project_id), pool=adm.flavor.pool,
                             gpu_model=adm.flavor.gpu_model, gpus=job.gpus * job.workers, started_at=now))
                rep.admitted.append(job.id)
                if pods:
                    spend_pods(s, pods, job, adm.placements, now)
            victims = []
            for pre in result.preemptions:
                job = held.get(pre.job_id)
                if job is None or job.status not in (S.ADMITTED.value, S.STARTING.value, S.RUNNING.value):
                    continue
                if jobstate.transition(s, job, S.PREEMPTED, expected_version=job.version, now=now,
                                       message=pre.message,
                                       event_details={"code": pre.code, "for_job": pre.for_job_id}):
                    victims.append(((job.id, job.attempt), pre.message, self.grace_s(job)))
                    rep.preempted.append(job.id)
            s.autoflush = True
            # Reasons are written only when they change, in one statement; a change of the code
            # or a new note at once, of the numbers (message, details, position, estimate) at most
            # every REASON_REFRESH_S per job and for at most REASON_REFRESH_PER_TICK jobs a tick,
            # those written longest ago first: on a deep queue every position moves at every
            # tick, and rewriting thousands of rows a tick cost more than the cycle itself.
            changed, due = [], []
            refreshed = self._reason_written
            for jid, why in result.pending.items():
                job = by_id.get(jid)
                if job is None:
                    continue
                note = self.pending_note(jid) if self.pending_note is not None else None
                # (a ReasonCode is a str: it compares with the stored code as it is)
                news = job.pending_code != why.code or bool(note and f"({note})" not in (job.pending_message or ""))
                last = refreshed.get(jid, float("-inf"))
                if news:  # (a new note, e.g. "scaling up", is news too: written at once)
                    changed.append(self._reason_row(job, why, note))
                elif now - last >= REASON_REFRESH_S:
                    due.append((last, jid, job, why, note))
            due.sort()  # (when written, job id): ids are unique, so nothing after them is compared
            for _, jid, job, why, note in due[:REASON_REFRESH_PER_TICK]:
                changed.append(self._reason_row(job, why, note))
                refreshed[jid] = now  # looked at: unchanged rows wait their turn too
            changed = [r for r in changed if r is not None]
            for r in changed:
                refreshed[r["job_id"]] = now
            if len(refreshed) > 2 * len(result.pending) + 1000:  # forget jobs that left the queue
                self._reason_written = {j: t for j, t in refreshed.items() if j in result.pending}
            for job, code, message, details in capped.values():
                if (job.pending_code, job.pending_message) != (code, message):
                    changed.append({"job_id": job.id, "code": code, "message": message, "details": details})
            jobstate.set_pending_reasons(s, changed)
            rep.pending = len(result.pending) + len(capped)
            if rep.admitted:
                failpoints.hit("before_admit_commit")
            s.commit()
        self._queue.reasons_written(changed)
        self._usage.watch((jid, by_id[jid].attempt) for jid in rep.admitted)
        if rep.admitted:
            failpoints.hit("after_admit_commit")
        if victims:
            failpoints.hit("after_preempt_commit")
        for key, why, grace_s in victims:
            self._stop_attempt(key, why or "preempted", reason="preempted", grace_s=grace_s)
        self.last_cycle = result
        return result

    @staticmethod
    def _reason_row(job: Job, why, note: str | None) -> dict | None:
        """The pending reason to write for `job`, or None when the row already says it."""
        details = _plain(why.details)
        message = f"{why.message} ({note})" if note else why.message
        if (job.pending_code, job.pending_message, job.queue_position, job.estimated_start, job.pending_details) == \
                (why.code.value, message, why.queue_position, why.estimated_start, details):
            return None
        return {"job_id": job.id, "code": why.code.value, "message": message, "details": details,
                "queue_position": why.queue_position, "estimated_start": why.estimated_start}

    # ------------------------------------------------------------------ 4. launch
    def _launch_failed(self, job: Job, e: Exception) -> None:
        """A launch that may work on another try (executor, node or key trouble): LOST, then
        requeued within the job's retries, and whatever the executor started is released."""
        log.warning("launch of %s/%s failed: %s", job.id, job.attempt, e)
        with self._session() as s:
            row = s.get(Job, job.id)
            if row is not None and row.status == S.ADMITTED.value and row.attempt == job.attempt:
                _close_ledger(s, row, self.clock())
                if jobstate.transition(s, row, S.LOST, expected_version=row.version,
                                       message=f"launch failed: {_short(e)}"):
                    jobstate.requeue_or_fail(s, row, expected_version=row.version)
                s.commit()
        try:
            self.executor.release(job.id, job.attempt)
        except Exception as e2:  # the reconciler removes what is left of a failed launch
            log.warning("release after the failed launch of %s/%s: %s", job.id, job.attempt, e2)

    def _fail_unlaunchable(self, job: Job, e: BrokerError) -> None:
        """A launch refused for the job's own reasons (nothing was started): FAILED at once,
        with the refusal's code and message, and no retry."""
        log.info("job %s cannot start: %s", job.id, e)
        with self._session() as s:
            row = s.get(Job, job.id)
            if row is not None and row.status == S.ADMITTED.value and row.attempt == job.attempt:
                _close_ledger(s, row, self.clock())
                jobstate.transition(s, row, S.FAILED, expected_version=row.version,
                                    message=f"cannot start ({e.code}): {e}")
                s.commit()

    def launch_admitted(self, rep: TickReport) -> None:
        """Launch every ADMITTED attempt, then move the launched ones to STARTING in one
        transaction. Before each launch the attempt must still be ADMITTED in a fenced read (a
        broker that lost the leadership since the admission raises `NotLeader` there and launches
        nothing; the new leader launches it); one read covers every attempt of the tick and is
        taken again once it is FENCE_FRESH_S old, so a long batch never launches on a stale view."""
        with self._session() as s:
            admitted = list(repo.admitted_jobs(s))
            places = repo.placements_of(s, [(j.id, j.attempt) for j in admitted])
            s.expunge_all()
        launched: list[Job] = []
        measured: set[str] = set()  # projects whose results were measured in this batch
        live: set[tuple[str, int]] = set()
        fresh_until = float("-inf")
        for n, job in enumerate(admitted):
            spec = launch_spec(job, places.get((job.id, job.attempt), []), self.grace_s(job),
                               checkpoint_dir=self.checkpoint_dir(job),
                               log_max_bytes=self.settings.log_max_bytes_per_worker)
            if time.monotonic() >= fresh_until:
                live = self._still_admitted(admitted[n:])
                fresh_until = time.monotonic() + FENCE_FRESH_S
            if (job.id, job.attempt) not in live:
                continue  # another tick or broker moved it on; or this broker is no longer leader
            try:
                # secrets, datasets, scratch and results (measured once per project and batch)
                spec = jobdata.complete(self, job, spec, measure=job.project_id not in measured)
                measured.add(job.project_id)
            except (Invalid, NotFound, Forbidden) as e:
                # The job itself can never start as submitted (a secret deleted or a dataset grant
                # revoked while it waited): fail it now, saying why, instead of retrying in vain.
                self._fail_unlaunchable(job, e)
                continue
            except Exception as e:
                self._launch_failed(job, e)
                continue
            try:
                self.executor.launch(spec)
            except Exception as e:
                self._launch_failed(job, e)
                continue
            failpoints.hit("after_launch")
            launched.append(job)
            rep.launched.append(job.id)
        if launched:
            now = self.clock()
            with self._session() as s:
                s.autoflush = False
                repo.preload(s, [(j.id, j.attempt) for j in launched], models=(Attempt,))
                moves = []
                for job in launched:
                    row = s.get(Job, job.id)
                    if row is not None and row.status == S.ADMITTED.value and row.attempt == job.attempt:
                        moves.append(jobstate.Move(row, S.STARTING, row.version))
                jobstate.transition_many(s, moves, now=now)
                s.commit()

    def _still_admitted(self, jobs: Sequence[Job]) -> set[tuple[str, int]]:
        """(job id, attempt) of `jobs` still ADMITTED, read in one fenced transaction."""
        out: set[tuple[str, int]] = set()
        ids = [j.id for j in jobs]
        with self._session() as s:
            for k in range(0, len(ids), 500):
                out.update(s.execute(select(Job.id, Job.attempt).where(
                    one_of(s, Job.id, ids[k:k + 500]), Job.status == S.ADMITTED.value)).tuples())
        return out


def _runs_on(job: Job, st: AttemptStatus) -> bool:
    """A RUNNING attempt whose every worker still runs and that nobody cancels: the observe
    pass notes it seen and changes nothing else (it reads no row for it)."""
    return (job.status == S.RUNNING.value and job.cancel_requested_at is None and bool(st.exists)
            and bool(st.workers) and all(w.state is WorkerState.RUNNING for w in st.workers))


def concurrency_cap(projects, holding, pending):
    """Apply each project's `max_running`: at most (max_running - jobs it holds) of its pending
    jobs go to the cycle, in queue order (priority, then submit time); the others wait with a
    QUOTA_LIMIT reason. Returns (pending for the cycle, {job id: (job, code, message, details)})."""
    limits = {p.id: p.max_running for p in projects if p.max_running is not None}
    if not limits:
        return pending, {}
    held: dict[str, int] = {}
    for j in holding:
        held[j.project_id] = held.get(j.project_id, 0) + 1
    room = {pid: max(0, m - held.get(pid, 0)) for pid, m in limits.items()}
    keep, capped = [], {}
    for j in sorted(pending, key=lambda j: (-j.priority, j.submit_time, j.id)):
        left = room.get(j.project_id)
        if left is None:
            keep.append(j)
        elif left > 0:
            room[j.project_id] = left - 1
            keep.append(j)
        else:
            m = limits[j.project_id]
            busy = max(m, held.get(j.project_id, 0))  # held now, or taken by jobs ahead in this cycle
            capped[j.id] = (j, "QUOTA_LIMIT",
                         f"Project {j.project_id} may run {m} job{'s' if m != 1 else ''} at a time and already "
                         f"has {busy}; this job starts when one of them ends.",
                         {"level": "concurrency", "project": j.project_id, "max_running": m,
                          "running": busy})
    keep.sort(key=lambda j: (j.submit_time, j.id))
    return keep, capped


def spend_pods(s: Session, pods: set[str], job: Job, placements, now: float) -> None:
    """Drain the nodes dedicated to an image (pods) that this admission places a worker on: a
    pod runs one attempt in its life, so no tenant ever starts where another ran (files, /tmp,
    GPU memory); its running worker is untouched, and the scaler replaces the pod once idle.
    In the admission's transaction: the next snapshot already sees the pod taken."""
    for nid in sorted({p.node for p in placements} & pods):
        row = s.get(Node, nid)
        if row is not None:
            row.state, row.updated_at = NodeState.DRAINING.value, now
            row.state_reason = f"{SPENT_REASON}runs job {job.id} attempt {job.attempt}; the pod is replaced after it"
            s.add(row)


def launch_spec(job: Job, placements: Sequence[Placement], grace_s: float, checkpoint_dir: str = "",
                log_max_bytes: int = 0) -> LaunchSpec:
    return LaunchSpec(
        job_id=job.id, attempt=job.attempt, image=job.image, command=tuple(job.command), env=dict(job.env or {}),
        runtime=job.runtime, max_runtime_s=job.max_runtime_s, grace_s=grace_s, project=job.project_id,
        checkpoint_dir=checkpoint_dir, log_max_bytes=log_max_bytes, publish=_published(job),
        workers=tuple(WorkerLaunch(rank=p.rank, node=p.node_id, gpus=job.gpus, cpus=job.cpus, memory_gb=job.memory_gb,
                                   gpu_indices=tuple(p.gpu_indices or ())) for p in placements),
    )


def _published(job: Job) -> tuple[tuple[int, int], ...]:
    """A container service replica's (host port, container port): the container listens on its
    `PORT`, the broker reaches it on the node at `job.port` (`broker.services.service_controller`)."""
    if not (getattr(job, "service_id", None) and job.port and job.runtime == "container"):
        return ()
    try:
        return ((int(job.port), int((job.env or {}).get("PORT", job.port))),)
    except ValueError:
        return ()


def snap_department(snap, project_id: str) -> str:
    for p in snap.projects:
        if p.id == project_id:
            return p.department
    return ""


def _close_ledger(s: Session, job: Job, now: float) -> None:
    led = repo.open_ledger(s, job.id, job.attempt)
    if led is not None and led.ended_at is None:
        led.ended_at = now
        led.allocated_gpu_s = max(0.0, now - led.started_at) * led.gpus
        s.add(led)


def _assign(row, **values) -> bool:
    changed = False
    for k, v in values.items():
        if getattr(row, k) != v:
            setattr(row, k, v)
            changed = True
    return changed


def _first_bad(workers) -> int | None:
    codes = [w.exit_code for w in workers if w.exit_code not in (None, 0)]
    return codes[0] if codes else None


def _plain(d) -> dict:
    """Details as JSON-safe plain values (Amounts and enums become numbers and strings)."""
    out = {}
    for k, v in dict(d).items():
        if hasattr(v, "to_json"):
            v = v.to_json()
        elif hasattr(v, "value") and not isinstance(v, (int, float, str)):
            v = v.value
        elif isinstance(v, (tuple, list)):
            v = [x.to_json() if hasattr(x, "to_json") else x for x in v]
        out[str(k)] = v
    return out


def _short(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]
