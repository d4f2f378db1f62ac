"""The service controller: makes each service's replica jobs match what the service wants.

One `tick()` (a leader-only periodic task, `broker.tasks`, every `service_tick_s`) per service:

1. ended replicas: a replica job that ended without the controller stopping it is a failure
   (restart backoff: `backoff_initial_s` x 2^(failures-1), at most `backoff_max_s`);
2. probes: every RUNNING replica's readiness (and liveness) probe when due, HTTP GET of the
   path (2xx/3xx) or a TCP connect; `failure_threshold` failures in a row take it out of
   rotation (readiness) or restart it (liveness); the first pass puts it in rotation;
3. rollout: replicas of an older revision are replaced one at a time: a new one is started
   beside them (surge 1; where quota keeps it pending, one old one stops first), and one old
   one is drained and stopped only once every new one is ready. A new revision that is not
   ready within `progress_deadline_s`, or whose replicas fail `ROLLBACK_FAILURES` times in a
   row, is rolled back to the last stable revision and the service keeps serving;
4. count: start replicas up to `desired_replicas`, stop extras (not ready first, newest first);
5. autoscale (max > min): desired = ceil(requests in flight / target per replica), up at once,
   down only after `cooldown_s` without a higher need;
6. protection: an operation service's first `min` live replicas (ready first, oldest first) are
   not preemptible, the others are (`jobs.preemptible`, read by the scheduling core).

A stop drains first: the replica leaves the proxy's rotation, and SIGTERM comes once its
requests in flight are done (or after `DRAIN_MAX_S`), so a rollout loses no request.

No network call inside a transaction: probes and executor stops run between short ones.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx
from sqlalchemy import select, update
from sqlmodel import Session

from broker import jobstate
from broker.models import TERMINAL, Job, JobStatus, Service, ServiceReplica, ServiceStatus, new_id
from broker.ports import Executor
from broker.services import job_queries as job_repo
from broker.services import service_policy as policy
from broker.services import service_queries as repo
from broker.services.service_router import Endpoint, ServiceRouter
from broker.services.services import add_event
from broker.services.wakeup import Wakeup

log = logging.getLogger("broker.services.controller")

ROLLBACK_FAILURES = 3  # new-revision replicas failing in a row before a rollback
DRAIN_MAX_S = 10.0  # a draining replica is stopped after this even with requests in flight
SURGE_PENDING_S = 10.0
BUDGET_CHECK_S = 30.0  # how often an innovation GPU service's next budget period is checked  # a surge replica pending this long: stop one old replica to make room


@dataclass
class _Probe:
    """What the controller remembers of one replica between ticks (not stored)."""

    ready: bool = False
    ready_fail: int = 0
    live_fail: int = 0
    next_ready: float = 0.0
    next_live: float = 0.0
    draining_since: float | None = None
    stop_reason: str = ""


@dataclass
class TickStats:
    services: int = 0
    started: int = 0
    stopped: int = 0
    probes: int = 0
    notes: list[str] = field(default_factory=list)


class ServiceController:
    def __init__(self, engine, *, executor: Executor | None, router: ServiceRouter, wakeup: Wakeup | None = None,
                 clock: Callable[[], float] = time.time, grace_s: Callable[[Job], float] | None = None,
                 default_cap: int = 1000, host_ip: str = "127.0.0.1",
                 remote_load: Callable[[float], dict[str, float]] | None = None) -> None:
        """`remote_load(now)`: requests in flight per service on the other brokers
        (`broker.services.service_load.RemoteLoad`), added to this broker's own for autoscaling."""
        self.engine, self.executor, self.router, self.clock = engine, executor, router, clock
        self.remote_load = remote_load
        self._remote: dict[str, float] = {}
        self.wakeup = wakeup or Wakeup()
        self.grace_s = grace_s or (lambda job: 10.0)
        self.default_cap, self.host_ip = default_cap, host_ip
        self._probes: dict[str, _Probe] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._http = httpx.Client(timeout=2.0, follow_redirects=False, trust_env=False)
        self._lock = threading.Lock()
        self._samples: dict[str, list[tuple[float, int]]] = {}  # autoscaler: (t, want)
        self._budget: dict[str, tuple[float, dict | None]] = {}  # service -> (checked at, shortfall)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # ------------------------------------------------------------------ tick
    def tick(self) -> TickStats:
        st = TickStats()
        with self._lock:
            with Session(self.engine) as s:
                ids = [svc.id for svc in repo.all_services(s)]
            st.services = len(ids)
            self._remote = self._read_remote() if ids else {}
            for sid in ids:
                try:
                    self._service(sid, st)
                except Exception:
                    log.exception("service %s: reconcile failed", sid)
            self.router.refreshed()
        if st.started:
            self.wakeup.submitted()
        return st

    def _service(self, sid: str, st: TickStats) -> None:
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as s:
            svc = repo.get(s, sid)
            if svc is None:
                return
            live = list(repo.replica_jobs(s, sid, live_only=True))
            rows = repo.replica_rows(s, sid)
            ended = [j for j in repo.replica_jobs(s, sid) if j.id in rows and j not in live
                     and JobStatus(j.status).terminal]
            places = repo.placements(s, [(j.id, j.attempt) for j in live])
            hosts = repo.node_addresses(s)
            rev = repo.revision(s, sid, svc.revision)
            spec = dict(rev.spec) if rev else {}
            s.expunge_all()
        self._ended(svc, ended, rows, now)
        self._hosts(live, rows, places, hosts)
        self._probe_all(svc, spec, live, rows, now, st)
        active = [j for j in live if j.cancel_requested_at is None and self._p(j.id).draining_since is None]
        self._drain(live, now, st)
        if svc.status == ServiceStatus.DELETING.value:
            for j in active:
                self._begin_stop(j, "the service is being deleted", now)
            if not live:
                with Session(self.engine) as s:
                    repo.remove_service(s, sid)
                    s.commit()
                for j in rows:
                    self._probes.pop(j, None)
                self.router.set_endpoints(sid, ())
            return
        if self._budget_hold(svc, spec, active, now):
            return
        if self._rolled_back(svc, spec, active, now):
            return
        self._autoscale(svc, spec, active, now)
        self._reconcile(svc, spec, active, now, st)
        self._protect(svc, active)
        self._publish(svc, live, rows)
        self._status(svc, active, now)

    # ------------------------------------------------------------------ 1. ended replicas
    def _ended(self, svc: Service, ended: Sequence[Job], rows: dict, now: float) -> None:
        for j in ended:
            p = self._probes.pop(j.id, None)
            self.router.remove(j.id)
            stopped = j.cancel_requested_at is not None
            failed = not stopped or bool(p and p.stop_reason.startswith("liveness"))
            with Session(self.engine) as s:
                row = s.get(ServiceReplica, j.id)
                if row is not None:
                    s.delete(row)
                cur = s.get(Service, svc.id)
                if failed and cur is not None:
                    cur.failures += 1
                    sp = _spec_of(s, cur)
                    back = policy.backoff(sp.get("restart", {}), cur.failures)
                    cur.next_start_at = now + back
                    svc.failures, svc.next_start_at = cur.failures, cur.next_start_at
                    s.add(cur)
                    why = (p.stop_reason if p and p.stop_reason else j.message) or j.status
                    add_event(s, svc.id, "replica_failed", f"replica {j.replica_index} ({j.id}) {j.status}: {why}; "
                              f"restart in {back:g} s (failure {cur.failures} in a row)",
                              {"job_id": j.id, "status": j.status, "exit_code": j.exit_code, "backoff_s": back,
                               "failures": cur.failures}, now=now)
                s.commit()

    # ------------------------------------------------------------------ 2. probes
    def _hosts(self, live: Sequence[Job], rows: dict, places: dict, hosts: dict) -> None:
        for j in live:
            p = places.get(j.id)
            row = rows.get(j.id)
            if p is None or row is None:
                continue
            host = hosts.get(p.node_id, "")
            if host and row.host != host:
                with Session(self.engine) as s:
                    s.execute(update(ServiceReplica).where(ServiceReplica.job_id == j.id).values(host=host))
                    s.commit()
                row.host = host

    def _probe_all(self, svc: Service, spec: dict, live: Sequence[Job], rows: dict, now: float,
                   st: TickStats) -> None:
        readiness, liveness = spec.get("readiness") or {}, spec.get("liveness")
        due: list[tuple[Job, ServiceReplica, str, dict]] = []
        for j in live:
            row = rows.get(j.id)
            p = self._p(j.id)
            if row is None or j.status != JobStatus.RUNNING.value or not row.host or not j.port:
                if p.ready:  # left RUNNING (preempted, lost): out of rotation now
                    self._set_ready(j, row, False, now, "not running: " + j.status)
                continue
            if j.cancel_requested_at is not None:
                continue
            if now - (j.started_at or now) < float(readiness.get("initial_delay_s", 0.0)):
                continue
            if now >= p.next_ready:
                due.append((j, row, "ready", readiness))
            if liveness and now >= p.next_live and now - (j.started_at or now) >= float(liveness.get("initial_delay_s", 0)):
                due.append((j, row, "live", liveness))
        if not due:
            return
        results = list(self._pool.map(lambda d: policy.probe(self._http, d[1].host, d[0].port, d[3]), due))
        st.probes += len(due)
        for (j, row, kind, probe), (ok, why) in zip(due, results):
            p = self._p(j.id)
            period = float(probe.get("period_s", 1.0))
            threshold = int(probe.get("failure_threshold", 2))
            if kind == "ready":
                p.next_ready = now + period
                if ok:
                    p.ready_fail = 0
                    if not p.ready:
                        self._set_ready(j, row, True, now, "")
                else:
                    p.ready_fail += 1
                    if p.ready and p.ready_fail >= threshold:
                        self._set_ready(j, row, False, now, f"readiness failed {p.ready_fail}x: {why}")
            else:
                p.next_live = now + period
                p.live_fail = 0 if ok else p.live_fail + 1
                if p.live_fail >= threshold:
                    self._set_ready(j, row, False, now, f"liveness failed {p.live_fail}x: {why}")
                    p.stop_reason = f"liveness failed {p.live_fail} times: {why}"
                    self._stop_now(j, p.stop_reason, now)
                    with Session(self.engine) as s:
                        add_event(s, svc.id, "replica_unhealthy", f"replica {j.replica_index} ({j.id}) restarted: "
                                  f"{p.stop_reason}", {"job_id": j.id}, now=now)
                        s.commit()

    def _set_ready(self, j: Job, row: ServiceReplica | None, ready: bool, now: float, message: str) -> None:
        p = self._p(j.id)
        p.ready = ready
        if not ready:
            self.router.remove(j.id)
        values: dict[str, Any] = {"ready": ready, "message": message, "last_probe_at": now}
        if ready:
            values["ready_since"] = now
        with Session(self.engine) as s:
            s.execute(update(ServiceReplica).where(ServiceReplica.job_id == j.id).values(**values))
            if ready and j.service_revision is not None:
                cur = s.get(Service, j.service_id)
                if cur is not None and cur.revision == j.service_revision and cur.failures:
                    cur.failures, cur.next_start_at = 0, None
                    s.add(cur)
            add_event(s, j.service_id, "replica_ready" if ready else "replica_not_ready",
                      f"replica {j.replica_index} ({j.id}) " + ("in rotation" if ready else f"out of rotation: {message}"),
                      {"job_id": j.id}, now=now)
            s.commit()
        if row is not None:
            row.ready = ready

    # ------------------------------------------------------------------ budget
    def _budget_hold(self, svc: Service, spec: dict, active: list[Job], now: float) -> bool:
        """An innovation service reserves its budget one accrual period ahead: when the project's
        (or department's) budget cannot cover its GPUs for the next period, it scales to zero
        with notice and says why. Operation services are never stopped for budget (an overrun is
        recorded in the ledger and alerted like any other)."""
        gpus = float((spec.get("resources") or {}).get("gpus") or 0)
        if svc.workload_class != "innovation" or gpus <= 0:
            return False
        got = self._budget.get(svc.id)
        if got is None or now - got[0] >= BUDGET_CHECK_S:
            from broker.services.snapshot import SERVICE_BUDGET_HORIZON_S
            with Session(self.engine) as s:
                short = repo.budget_shortfall(s, svc.project_id, gpus * max(len(active), min(svc.desired_replicas, 1)),
                                              now, SERVICE_BUDGET_HORIZON_S)
            got = self._budget[svc.id] = (now, short)
        short = got[1]
        if short is None:
            return False
        why = (f"budget: the next hour needs {short['next_period_gpu_hours']:g} GPU-hours, but {short['kind']} "
               f"{short['owner']} has spent {short['spent_gpu_hours']:g} of {short['budget_gpu_hours']:g} this month")
        if active:
            for j in active:
                self._begin_stop(j, why, now)
            with Session(self.engine) as s:
                add_event(s, svc.id, "scaled_to_zero", f"scaled to zero: {why}", short, now=now)
                s.commit()
        self._pending(svc, "BUDGET_EXHAUSTED", why, short)
        return True

    # ------------------------------------------------------------------ 3. rollout / rollback
    def _rolled_back(self, svc: Service, spec: dict, active: Sequence[Job], now: float) -> bool:
        """Roll a revision back that never became ready; True when it did (next tick goes on)."""
        if not svc.stable_revision or svc.stable_revision == svc.revision:
            return False
        new = [j for j in active if j.service_revision == svc.revision]
        if any(self._p(j.id).ready for j in new):
            return False
        with Session(self.engine) as s:
            rev = repo.revision(s, svc.id, svc.revision)
            started = rev.created_at if rev else now
        deadline = float((spec.get("restart") or {}).get("progress_deadline_s", 120.0))
        why = ""
        if svc.failures >= ROLLBACK_FAILURES:
            why = f"its replicas failed {svc.failures} times in a row"
        elif now - started > deadline:
            why = f"no replica became ready within {deadline:g} s"
        if not why:
            return False
        for j in new:
            self._begin_stop(j, f"revision {svc.revision} rolled back", now)
        with Session(self.engine) as s:
            cur = s.get(Service, svc.id)
            bad = repo.revision(s, svc.id, svc.revision)
            if bad is not None:
                bad.status, bad.message = "rolled_back", why
                s.add(bad)
            cur.revision, cur.failures, cur.next_start_at = cur.stable_revision, 0, None
            cur.message = f"revision {svc.revision} rolled back to {cur.stable_revision}: {why}"
            cur.version += 1
            s.add(cur)
            add_event(s, svc.id, "rolled_back", cur.message, {"from": svc.revision, "to": cur.stable_revision}, now=now)
            s.commit()
        return True

    # ------------------------------------------------------------------ 4. count
    def _reconcile(self, svc: Service, spec: dict, active: list[Job], now: float, st: TickStats) -> None:
        desired = svc.desired_replicas
        new = [j for j in active if j.service_revision == svc.revision]
        old = [j for j in active if j.service_revision != svc.revision]
        backoff = svc.next_start_at is not None and now < svc.next_start_at
        if old:
            not_ready_new = [j for j in new if not self._p(j.id).ready]
            if not not_ready_new and len(active) <= desired and not backoff:
                self._start(svc, spec, active, now, st)
                return
            stale = [j for j in not_ready_new if j.status == JobStatus.PENDING.value
                     and now - j.submit_time > SURGE_PENDING_S]
            if (not not_ready_new and len(active) > desired) or (stale and len(active) > desired):
                victim = sorted(old, key=lambda j: (self._p(j.id).ready, -(j.replica_index or 0)))[0]
                self._begin_stop(victim, f"replaced by revision {svc.revision}", now)
                st.stopped += 1
            return
        if len(active) < desired:
            if backoff:
                self._pending(svc, "RESTART_BACKOFF", f"restarting after {svc.failures} failure(s) in a row; next "
                              f"replica at {svc.next_start_at:.0f} ({svc.next_start_at - now:.1f} s)")
                return
            for _ in range(desired - len(active)):
                self._start(svc, spec, active, now, st)
        elif len(active) > desired:
            extra = sorted(active, key=lambda j: (self._p(j.id).ready, -(j.replica_index or 0)))[:len(active) - desired]
            for j in extra:
                self._begin_stop(j, f"scaled down to {desired}", now)
                st.stopped += 1
        if svc.stable_revision != svc.revision and new and len(new) >= desired and all(self._p(j.id).ready for j in new):
            with Session(self.engine) as s:
                cur = s.get(Service, svc.id)
                prev = cur.stable_revision
                cur.stable_revision = svc.revision
                if prev:
                    old_rev = repo.revision(s, svc.id, prev)
                    if old_rev is not None and old_rev.status == "active":
                        old_rev.status = "superseded"
                        s.add(old_rev)
                s.add(cur)
                add_event(s, svc.id, "rolled_out", f"revision {svc.revision} ready on {len(new)} replica(s)",
                          {"revision": svc.revision}, now=now)
                s.commit()
            svc.stable_revision = svc.revision

    def _start(self, svc: Service, spec: dict, active: list[Job], now: float, st: TickStats) -> None:
        """One more replica job of the service's current revision (PENDING: the core admits it)."""
        with Session(self.engine, expire_on_commit=False) as s:
            rev = repo.revision(s, svc.id, svc.revision)
            used_idx = {j.replica_index for j in active}
            idx = next(i for i in range(len(used_idx) + 1) if i not in used_idx)
            port = self._free_port(s)
            container = rev.template.get("runtime") == "container"
            env = {**rev.template.get("env", {}), "PORT": str(spec.get("port", 8080) if container else port),
                   "BROKER_SERVICE": f"{svc.project_id}/{svc.name}"}  # also: the runner checks a process's PORT
            row = {**rev.template, "id": new_id(),
                   "name": f"{svc.name}-{idx}", "env": env, "status": JobStatus.PENDING.value, "version": 1,
                   "attempt": 1, "submit_time": now, "created_at": now, "service_id": svc.id, "replica_index": idx,
                   "service_revision": svc.revision, "port": port, "preemptible": True}
            event = {"job_id": row["id"], "ts": now, "kind": "submitted", "from_status": None,
                     "to_status": JobStatus.PENDING.value, "attempt": 1,
                     "message": f"replica {idx} of service {svc.name} (revision {svc.revision})",
                     "details": {"service": svc.id}}
            with job_repo.store_lock(self.engine):
                refused = job_repo.store_jobs(s.connection(), [row], [event], default_cap=self.default_cap)
                if refused:
                    s.rollback()
                    err = next(iter(refused.values()))
                    self._pending(svc, err.code, err.message)
                    return
                s.add(ServiceReplica(job_id=row["id"], service_id=svc.id, index=idx, revision=svc.revision, port=port))
                add_event(s, svc.id, "replica_started", f"replica {idx} ({row['id']}) of revision {svc.revision} "
                          "submitted", {"job_id": row["id"], "revision": svc.revision}, now=now)
                s.commit()
        job = Job(**{k: v for k, v in row.items()})
        active.append(job)
        st.started += 1

    @staticmethod
    def _free_port(s: Session) -> int:
        taken = [p for (p,) in s.execute(select(Job.port).where(Job.port.is_not(None),
                 Job.status.not_in([x.value for x in TERMINAL]))).all()]
        return policy.free_port(taken)

    # ------------------------------------------------------------------ stopping
    def _begin_stop(self, j: Job, why: str, now: float) -> None:
        """Drain: out of rotation now, stopped once idle (`_drain`). A pending replica is
        cancelled at once."""
        p = self._p(j.id)
        if p.draining_since is not None or j.cancel_requested_at is not None:
            return
        self.router.remove(j.id)
        p.ready = False
        if j.status == JobStatus.PENDING.value:
            self._stop_now(j, why, now)
            return
        p.draining_since, p.stop_reason = now, p.stop_reason or why
        with Session(self.engine) as s:
            s.execute(update(ServiceReplica).where(ServiceReplica.job_id == j.id).values(ready=False, message="draining: " + why))
            s.commit()

    def _drain(self, live: Sequence[Job], now: float, st: TickStats) -> None:
        for j in live:
            p = self._probes.get(j.id)
            if p is None or p.draining_since is None or j.cancel_requested_at is not None:
                continue
            if self.router.inflight(j.id) == 0 or now - p.draining_since >= DRAIN_MAX_S:
                self._stop_now(j, p.stop_reason or "stopped by the service controller", now)

    def _stop_now(self, j: Job, why: str, now: float) -> None:
        """PENDING -> CANCELLED; holding -> cancel requested and the executor told to stop."""
        stop = False
        with Session(self.engine) as s:
            row = s.get(Job, j.id)
            if row is None or JobStatus(row.status).terminal or row.cancel_requested_at is not None:
                return
            msg = f"stopped by the service controller: {why}"
            if row.status == JobStatus.PENDING.value:
                ok = jobstate.transition(s, row, JobStatus.CANCELLED, expected_version=row.version, now=now, message=msg)
            else:
                ok = jobstate.update_fields(s, row, expected_version=row.version, event_kind="cancel_requested",
                                            message=msg, now=now, cancel_requested_at=now)
                stop = ok
            if not ok:
                return
            s.commit()
            j.cancel_requested_at = now
            attempt = row.attempt
            grace = self.grace_s(row)
        if stop and self.executor is not None:
            try:
                self.executor.stop(j.id, attempt, grace, msg, "cancelled")
            except Exception as e:
                log.warning("stop of replica %s failed: %s", j.id, e)
        self.wakeup.cancelled()

    # ------------------------------------------------------------------ 5. autoscale
    def _read_remote(self) -> dict[str, float]:
        if self.remote_load is None:
            return {}
        try:
            return self.remote_load(self.clock())
        except Exception as e:  # a database hiccup: this tick scales on this broker's load only
            log.warning("other brokers' service loads unreadable: %s", e)
            return {}

    def inflight(self, service_id: str) -> float:
        """Requests in flight to a service: this broker's proxy's plus the other brokers' fresh
        rows (as read at the start of this tick)."""
        return self.router.service_inflight(service_id) + self._remote.get(service_id, 0.0)

    def _autoscale(self, svc: Service, spec: dict, active: Sequence[Job], now: float) -> None:
        if svc.max_replicas <= svc.min_replicas:
            return
        auto = spec.get("autoscale") or {}
        target = float(auto.get("target_inflight", 4.0))
        inflight = self.inflight(svc.id)
        new, self._samples[svc.id] = policy.autoscale(
            inflight=inflight, target=target, lo=svc.min_replicas, hi=svc.max_replicas,
            desired=svc.desired_replicas, samples=self._samples.get(svc.id, []), scaled_at=svc.scaled_at, now=now,
            cooldown_s=float(auto.get("cooldown_s", 60.0)))
        if new == svc.desired_replicas:
            return
        with Session(self.engine) as s:
            cur = s.get(Service, svc.id)
            cur.desired_replicas, cur.scaled_at = new, now
            s.add(cur)
            add_event(s, svc.id, "autoscaled", f"{svc.desired_replicas} -> {new} replicas "
                      f"({inflight:g} requests in flight, target {target:g} per replica)",
                      {"from": svc.desired_replicas, "to": new}, now=now)
            s.commit()
        svc.desired_replicas, svc.scaled_at = new, now

    # ------------------------------------------------------------------ 6. protection, routing, status
    def _protect(self, svc: Service, active: Sequence[Job]) -> None:
        keep = 0 if svc.workload_class != "operation" else svc.min_replicas
        order = sorted(active, key=lambda j: (not self._p(j.id).ready, j.created_at, j.id))
        want = {j.id: i >= keep for i, j in enumerate(order)}
        change = {jid: v for jid, v in want.items() if next(j for j in active if j.id == jid).preemptible != v}
        if not change:
            return
        with Session(self.engine) as s:
            for jid, v in change.items():
                s.execute(update(Job).where(Job.id == jid).values(preemptible=v))
            s.commit()
        for j in active:
            if j.id in change:
                j.preemptible = change[j.id]

    def _publish(self, svc: Service, live: Sequence[Job], rows: dict) -> None:
        eps = [Endpoint(j.id, rows[j.id].host, j.port) for j in live
               if j.id in rows and self._p(j.id).ready and self._p(j.id).draining_since is None
               and j.cancel_requested_at is None and rows[j.id].host and j.port]
        self.router.set_endpoints(svc.id, eps)

    def _status(self, svc: Service, active: Sequence[Job], now: float) -> None:
        ready = sum(1 for j in active if self._p(j.id).ready)
        rolling = any(j.service_revision != svc.revision for j in active) or svc.stable_revision != svc.revision
        if rolling and svc.stable_revision:
            status = ServiceStatus.ROLLING
        elif ready >= max(1, svc.min_replicas) or (svc.desired_replicas == 0):
            status = ServiceStatus.READY
        elif svc.stable_revision:
            status = ServiceStatus.DEGRADED
        else:
            status = ServiceStatus.DEPLOYING
        pending = next((j for j in active if j.status == JobStatus.PENDING.value and j.pending_code), None)
        code = pending.pending_code if pending is not None else None
        msg = f"replica {pending.replica_index} waits: {pending.pending_message}" if pending is not None else ""
        details = ({**(pending.pending_details or {}), "replica": pending.replica_index, "job_id": pending.id,
                    "queue_position": pending.queue_position, "estimated_start": pending.estimated_start}
                   if pending is not None else {})
        if svc.next_start_at is not None and now < svc.next_start_at and code is None:
            code, msg = "RESTART_BACKOFF", f"next replica in {svc.next_start_at - now:.1f} s after {svc.failures} failure(s)"
            details = {"failures": svc.failures, "next_start_at": svc.next_start_at}
        if (svc.status, svc.pending_code, svc.pending_message, svc.pending_details or {}) != \
                (status.value, code, msg, details):
            with Session(self.engine) as s:
                cur = s.get(Service, svc.id)
                if cur is not None and cur.status != ServiceStatus.DELETING.value:
                    cur.status, cur.pending_code, cur.pending_message = status.value, code, msg
                    cur.pending_details = details
                    s.add(cur)
                    s.commit()

    def _pending(self, svc: Service, code: str, message: str, details: dict | None = None) -> None:
        with Session(self.engine) as s:
            cur = s.get(Service, svc.id)
            if cur is not None and (cur.pending_code, cur.pending_message) != (code, message):
                cur.pending_code, cur.pending_message, cur.pending_details = code, message, dict(details or {})
                s.add(cur)
                s.commit()

    def _p(self, job_id: str) -> _Probe:
        p = self._probes.get(job_id)
        if p is None:
            p = self._probes[job_id] = _Probe()
        return p

    def ready_jobs(self) -> set[str]:
        return {jid for jid, p in self._probes.items() if p.ready}


def _spec_of(s: Session, svc: Service) -> dict:
    rev = repo.revision(s, svc.id, svc.revision)
    return dict(rev.spec) if rev else {}

