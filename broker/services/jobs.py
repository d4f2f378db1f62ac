"""Job use cases: submit, get, list, cancel, events. Services own the transactions.

`submit()` is the one submit path: the FastAPI route and the ASGI fast path both call it with
an authenticated principal and a validated spec. It is the hot path (see `broker bench submit`):
it validates against cached catalog data (projects, pools, nodes), builds the row as a plain
dict and hands it to the group-commit writer, which acknowledges after COMMIT. Nothing slow
runs inside the request: the scheduler is woken through `Wakeup` after the commit. Requests
carrying an `Idempotency-Key` take a separate transactional path (key row and job row in one
transaction; the unique (token, key) constraint makes concurrent duplicates collapse to one job).

Invariant: every read, list, cancel and submit is authorized by the `Authz` and `SubmitGuard`
given at construction (required arguments: there is no unauthorized mode); a foreign job
answers exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import partial
from typing import Sequence

import orjson
from anyio import to_thread
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from broker import failpoints, jobstate
from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.auth.guard import SubmitGuard
from broker.auth.audit import REDACTED
from broker.auth.policy import PROJECT_ROLES, Action, Ref, Resource, roles_on
from broker.errors import Conflict, Invalid, NotFound
from broker.models import TERMINAL, IdempotencyKey, Job, JobStatus, new_id
from broker.ports import Clock, Executor
from broker.schemas import JobCreate
from broker.services import job_queries as repo
from broker.services import submit_checks as checks
from broker.services.admin import audit
from broker.services import storage
from broker.services.group_commit import GroupCommitWriter
from broker.services.datasets import DatasetService
from broker.services.secrets import SecretService
from broker.services.telemetry.queries import job_usage
from broker.services.views import event_public, job_public
from broker.services.wakeup import Wakeup
from broker.settings import Settings

log = logging.getLogger("broker.jobs")

_STATUSES = {s.value for s in JobStatus}
_USAGE_KEYS = ("samples", "gpus", "gpu_util_avg", "gpu_util_peak", "memory_used_mb_avg", "memory_used_mb_peak",
               "tensor_active_avg", "energy_j", "used_gpu_s")
RECHECK_S = 1.0  # an unknown project re-reads the project list at most this often


class JobService:
    def __init__(self, settings: Settings, engine: Engine, *, authz: Authz, guard: SubmitGuard,
                 executor: Executor | None = None, wakeup: Wakeup | None = None,
                 clock: Clock = time.time, secrets: SecretService | None = None,
                 datasets: DatasetService | None = None) -> None:
        """`executor` None: jobs are stored and scheduled nowhere (API-only apps, tests)."""
        self.settings, self.engine, self.executor, self.clock = settings, engine, executor, clock
        self.authz, self.guard = authz, guard
        self.secrets, self.datasets = secrets, datasets
        self.wakeup = wakeup or Wakeup()
        self.projects = checks.TTLCache(lambda: checks.load_projects(engine), ttl_s=5.0)
        self.inventory = checks.TTLCache(lambda: checks.load_inventory(engine), ttl_s=2.0)
        cap = settings.default_max_pending
        self.writer = GroupCommitWriter(engine, partial(repo.store_jobs, default_cap=cap),
                                        batch_max=settings.submit_batch_max,
                                        wait_s=settings.submit_batch_wait_s, writers=settings.submit_writers,
                                        write_async=partial(repo.store_jobs_async, default_cap=cap),
                                        connect_timeout_s=settings.db_connect_timeout_s, lock=repo.store_lock)

    # ------------------------------------------------------------------ submit
    async def submit(self, *, principal: Principal, spec: JobCreate, source: str | None,
                     request_id: str | None, idempotency_key: str | None = None) -> tuple[dict, bool]:
        """Authorize, check and store one job; returns (job, replayed).

        Without an Idempotency-Key the row goes through the group-commit writer; with one, the
        key and the job are stored in one transaction, and a repeat of the same body returns
        the job stored first (replayed=True, the scheduler is not woken again)."""
        if self.cache_ready(spec):
            row, event = self.prepare(principal=principal, spec=spec, source=source, request_id=request_id)
        else:
            row, event = await to_thread.run_sync(partial(self.prepare, principal=principal, spec=spec,
                                                          source=source, request_id=request_id))
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            body, replayed = await to_thread.run_sync(partial(self.submit_idempotent, principal=principal, row=row,
                                                              event=event, key=idempotency_key,
                                                              body_hash=body_hash(spec)))
            if replayed:
                return body, True
        else:
            body = await self.submit_rows(row, event)
        self.wakeup.submitted()
        return body, False

    def prepare(self, *, principal: Principal, spec: JobCreate, source: str | None = None,
                request_id: str | None = None) -> tuple[dict, dict]:
        """Check the spec against the catalog and build the job and event rows (no writes).

        May read the DB on a cache miss: async callers run it in a thread unless `cache_ready()`.
        """
        self.guard.check(principal, spec)  # may submit here? env / image / runtime (the pending cap: at store)
        if spec.project not in self.projects.get():
            # a project created a moment ago? look once more (at most once a second)
            if spec.project not in self.projects.get(max_age=RECHECK_S):
                raise checks.unknown_project(spec.project)
        if spec.runtime == "process":
            checks.require_process_runtime(self.engine, spec.project,
                                           deployment_allows=self.settings.allow_process_runtime)
        elif spec.image in self.settings.k8s_images.values():
            checks.fits_image_pods(spec)
        elif not self.settings.container_runtime_available:
            raise checks.no_container_runtime(sorted(self.settings.k8s_images.values()))
        if spec.secrets:
            self._check_secrets(spec)
        storage.check_room(self.settings, spec.project)  # the last measured results size (no I/O)
        mounts = self.datasets.check_mounts(spec.project, spec.mounts, spec.runtime) if spec.mounts and \
            self.datasets else []
        if spec.mounts and not self.datasets:
            raise Invalid("this broker has no dataset service", code="DATASETS_UNAVAILABLE")
        shape = checks.WorkerShape(spec.resources.gpus, spec.resources.cpus, spec.resources.memory_gb,
                                   tuple(spec.resources.models()))
        why = checks.never_fits_cached(self.inventory.get(), workload_class=spec.workload_class,
                                       pool=spec.pool, shape=shape, workers=spec.workers)
        if why is not None:
            raise Invalid(why[0], code="NEVER_FITS", details=why[1])
        now = self.clock()
        row = {
            "id": new_id(), "name": spec.name, "project_id": spec.project, "workload_class": spec.workload_class,
            "image": spec.image, "command": spec.command, "env": spec.env, "runtime": spec.runtime,
            "gpus": spec.resources.gpus, "cpus": spec.resources.cpus, "memory_gb": spec.resources.memory_gb,
            "gpu_models": list(shape.gpu_models), "pool": spec.pool, "workers": spec.workers,
            "max_runtime_s": spec.max_runtime_s, "priority": spec.priority, "max_retries": spec.max_retries,
            "checkpointable": spec.checkpointable, "secrets": list(spec.secrets), "mounts": mounts,
            "status": JobStatus.PENDING.value, "version": 1, "attempt": 1, "submit_time": now, "created_at": now,
            "admitted_at": None, "started_at": None, "finished_at": None, "cancel_requested_at": None,
            "exit_code": None, "message": "", "pending_code": None, "pending_message": "", "pending_details": {},
            "queue_position": None, "estimated_start": None, "borrowing": False, "flavor_pool": None,
            "flavor_gpu_model": None, "owner_token_id": principal.token_id,
        }
        audit = {"actor": self.authz.principal(principal).subject, "actor_kind": principal.kind, "token_id": principal.token_id, "source": source,
                 "request_id": request_id}  # sealed into the audit log (services.admin.audit.seal_job_submits)
        event = {"job_id": row["id"], "ts": now, "kind": "submitted", "from_status": None,
                 "to_status": JobStatus.PENDING.value, "attempt": 1, "message": f"submitted by {principal.name or principal.token_id}",
                 "details": {"audit": audit}}
        return row, event

    def _env_for(self, principal: Principal, out: dict) -> dict:
        return project_env(self.authz.principal(principal), self.authz, out)

    def _check_secrets(self, spec: JobCreate) -> None:
        """Every secret a job names must exist in its project now (422 SECRET_NOT_FOUND)."""
        missing = self.secrets.missing(spec.project, spec.secrets) if self.secrets else list(spec.secrets)
        if missing:
            raise Invalid(f"project {spec.project!r} has no secret named {', '.join(missing)}",
                          code="SECRET_NOT_FOUND", details={"secrets": missing})

    def catalog_changed(self) -> None:
        """Forget the cached projects, pools and nodes: call after writing them in this process
        (admin changes, node sync). Other processes' writes show within the caches' TTLs."""
        self.projects.invalidate()
        self.inventory.invalidate()

    def cache_ready(self, spec: JobCreate | None = None) -> bool:
        """True when `prepare(spec)` reads no database (async callers may then run it inline).
        A process job always reads its project's permission fresh."""
        if spec is not None and (spec.runtime == "process" or spec.secrets or spec.mounts):
            return False
        return self.projects.fresh() is not None and self.inventory.fresh() is not None

    async def submit_rows(self, row: dict, event: dict) -> dict:
        """Store through the group-commit writer; returns once committed (or raises
        PENDING_CAP, 429, when the project's pending cap is reached: counted in the storing
        transaction, so brokers sharing the database cannot overshoot it together).

        An IntegrityError means the project vanished after the cache saw it (-> 422) or, with
        odds of ~1e-8, an id collision (-> one retry under a fresh id)."""
        for attempt in range(2):
            try:
                await self.writer.submit(row, event)
                return job_public(row)
            except IntegrityError:
                fresh = await to_thread.run_sync(lambda: self.projects.get(max_age=RECHECK_S))
                if attempt or row["project_id"] not in fresh:
                    raise checks.unknown_project(row["project_id"]) from None
                row["id"] = event["job_id"] = new_id()
        raise checks.unknown_project(row["project_id"])  # not reached: the loop returns or raises

    def submit_idempotent(self, *, principal: Principal, row: dict, event: dict, key: str,
                          body_hash: str) -> tuple[dict, bool]:
        """Store the job under (token, key) or return the job stored earlier with the same body.

        Returns (job, replayed). Same key with another body -> 422 IDEMPOTENCY_KEY_REUSED.
        """
        for _ in range(3):
            with repo.store_lock(self.engine), Session(self.engine, expire_on_commit=False) as s:
                existing = repo.idempotency_key(s, principal.token_id, key)
                now = self.clock()
                if existing is not None and existing.created_at < now - self.settings.idempotency_ttl_s:
                    s.delete(existing)
                    s.flush()
                    existing = None
                if existing is not None:
                    return self._replay(s, existing, body_hash), True
                try:
                    s.add(IdempotencyKey(token_id=principal.token_id, key=key, body_hash=body_hash,
                                         job_id=row["id"], created_at=now))
                    s.flush()
                    refused = repo.store_jobs(s.connection(), [row], [event],
                                              default_cap=self.settings.default_max_pending)
                    if refused:
                        s.rollback()  # the key too: a retry after the queue drained may succeed
                        raise refused[0]
                    s.commit()
                    failpoints.hit("submit_after_commit")  # stored, the client not answered yet
                    return job_public(row), False
                except IntegrityError:
                    s.rollback()  # a concurrent request with this key won: read its job
                    continue
        raise Conflict("the idempotency key is being used concurrently; retry", code="IDEMPOTENCY_BUSY")

    def _replay(self, s: Session, key: IdempotencyKey, body_hash: str) -> dict:
        if key.body_hash != body_hash:
            raise Invalid("this Idempotency-Key was used with a different body; use a new key",
                          code="IDEMPOTENCY_KEY_REUSED", details={"job_id": key.job_id})
        job = repo.get(s, key.job_id)
        if job is None:
            raise NotFound("the job of this Idempotency-Key no longer exists", code="JOB_NOT_FOUND")
        return job_public(job)

    # ------------------------------------------------------------------ reads
    def get(self, *, principal: Principal, job_id: str) -> dict:
        with Session(self.engine) as s:
            job = self._job(s, job_id)
            self.authorize(principal, job, "job.read")
            out = job_public(job, attempts=repo.attempts(s, job_id), placements=repo.placements(s, job_id))
        out = self._env_for(principal, out)
        if job.admitted_at is not None or job.attempt > 1:
            u = job_usage(self.engine, job_id)
            out["usage"] = {k: u[k] for k in _USAGE_KEYS}
        return out

    def list(self, *, principal: Principal, projects: Sequence[str] = (), statuses: Sequence[str] = (),
             cursor: str | None = None, limit: int = 100) -> dict:
        if not 1 <= limit <= self.settings.page_size_max:
            raise Invalid(f"limit must be between 1 and {self.settings.page_size_max}", code="BAD_LIMIT")
        statuses = [st.upper() for st in statuses]  # `pending` is PENDING: statuses are not case-sensitive
        bad = [st for st in statuses if st not in _STATUSES]
        if bad:
            raise Invalid(f"unknown status {bad[0]!r}; one of {', '.join(sorted(_STATUSES))}", code="BAD_STATUS")
        visible = self.authz.visible_projects(principal, projects)
        if visible is not None and not visible:
            return {"items": [], "next_cursor": None}  # nothing visible: never an unfiltered list
        projects = visible or ()
        with Session(self.engine) as s:
            rows, nxt = repo.page(s, projects=projects, statuses=statuses, cursor=cursor, limit=limit)
            items = [job_public(j) for j in rows]
        pp = self.authz.principal(principal)
        return {"items": [project_env(pp, self.authz, it) for it in items], "next_cursor": nxt}

    def events(self, *, principal: Principal, job_id: str, after: int = 0, limit: int = 500) -> dict:
        with Session(self.engine) as s:
            self.authorize(principal, self._job(s, job_id), "job.read")
            return {"items": [event_public(e) for e in repo.events(s, job_id, after=after, limit=limit)]}

    def job_row(self, job_id: str) -> Job:
        with Session(self.engine, expire_on_commit=False) as s:
            job = self._job(s, job_id)
            s.expunge(job)
            return job

    # ------------------------------------------------------------------ cancel
    def cancel(self, *, principal: Principal, caller: audit.Caller, job_id: str) -> dict:
        """Cancel a job: PENDING -> CANCELLED at once; a job holding resources gets
        `cancel_requested_at`, its workers are told to stop (after the transaction) and the
        scheduling loop moves it to CANCELLED once they have exited. Every accepted cancel is
        in the audit log. Terminal jobs -> 409 JOB_TERMINAL. Cancelling twice is harmless."""
        body, stop = self._cancel(principal=principal, job_id=job_id)
        self._audit_cancel(caller, body)
        if stop is not None:
            if self.executor is not None:
                self.executor.stop(stop[0], stop[1], self.settings.grace_period_s, "stopped by cancel", "cancelled")
            self.wakeup.cancelled()
        return body

    def _audit_cancel(self, caller: audit.Caller, job: dict) -> None:
        """The cancel in the audit log, in its own short transaction."""
        project = job.get("project")
        with Session(self.engine) as s:
            audit.record(s, caller, action="job.cancel", target_kind="job", target_id=job.get("id", ""),
                         after={"status": job.get("status"), "cancel_requested_at": job.get("cancel_requested_at")},
                         department=self.authz.project_department(project) if project else None, project=project)
            s.commit()

    def _cancel(self, *, principal: Principal, job_id: str, reason: str = "") -> tuple[dict, tuple[str, int] | None]:
        """The state change; returns the job and, when its workers must stop, (job_id, attempt)."""
        who = principal.name or principal.token_id
        msg = f"cancelled by {who}" + (f": {reason}" if reason else "")
        for _ in range(5):
            with Session(self.engine, expire_on_commit=False) as s:
                job = self._job(s, job_id)
                self.authorize(principal, job, "job.cancel")
                st = JobStatus(job.status)
                if st in TERMINAL:
                    raise Conflict(f"job {job_id} is {st.value}; a finished job cannot be cancelled",
                                   code="JOB_TERMINAL", details={"status": st.value})
                if st is JobStatus.PENDING:
                    ok = jobstate.transition(s, job, JobStatus.CANCELLED, expected_version=job.version,
                                             now=self.clock(), message=msg)
                    stop = None
                elif job.cancel_requested_at is not None:
                    return job_public(job), None
                else:
                    ok = jobstate.update_fields(s, job, expected_version=job.version, event_kind="cancel_requested",
                                                message=msg, now=self.clock(), cancel_requested_at=self.clock())
                    stop = (job.id, job.attempt)
                if not ok:
                    s.rollback()
                    continue  # lost a race with the scheduler: read again
                s.commit()
                return job_public(job, attempts=repo.attempts(s, job_id), placements=repo.placements(s, job_id)), stop
        raise Conflict("the job is changing too fast to cancel; retry", code="CANCEL_RACE")

    # ------------------------------------------------------------------ helpers
    def authorize(self, principal: Principal, job: Job, action: str) -> None:
        """Raise unless `principal` may do `action` ("job.read", "job.cancel", "job.logs") to
        `job`: a foreign job answers like a missing one (404 JOB_NOT_FOUND)."""
        self.authz.check_job(principal, job, Action(action))

    @staticmethod
    def _job(s: Session, job_id: str) -> Job:
        job = repo.get(s, job_id) if len(job_id) <= 32 else None
        if job is None:
            raise NotFound(f"job {job_id!r} not found", code="JOB_NOT_FOUND")
        return job


def project_env(pp, authz: Authz, out: dict) -> dict:
    """Env values are the job's project's: a caller without a member or project-admin role in
    it (a department- or platform-admin) sees the names with their values redacted."""
    ref = Ref(Resource.PROJECT, department=authz.project_department(out["project"]), project=out["project"])
    if roles_on(pp, ref) & PROJECT_ROLES or not out.get("env"):
        return out
    return {**out, "env": {k: REDACTED for k in out["env"]}}


def body_hash(spec: JobCreate) -> str:
    """Canonical hash of a submit body: same fields and values -> same hash, key order ignored."""
    data = spec.model_dump(by_alias=True, mode="json")
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_idempotency_key(key: str) -> None:
    if len(key) > 255 or not key.strip() or not key.isprintable():
        raise Invalid("Idempotency-Key must be 1..255 printable characters", code="BAD_IDEMPOTENCY_KEY")


def logs_attempt(job: Job, attempt: int | None) -> int:
    if attempt is None:
        return job.attempt
    if not 1 <= attempt <= job.attempt:
        raise Invalid(f"attempt must be between 1 and {job.attempt}", code="BAD_ATTEMPT")
    return attempt
