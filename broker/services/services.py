"""Service use cases: deploy, read, list, change (a new revision), scale, delete, and the
reads of revisions, replicas and events. Services own the transactions; the controller
(`broker.services.service_controller`) turns what is stored here into replica jobs.

Why replicas are jobs: the scheduling core then admits them like any job (quotas, budgets,
fair share, pending reasons with numbers and ETA), the runner runs them and the loop observes
them; nothing about admission is written twice. A revision stores the replica's job row as the
submit checks built it (`JobService.prepare`: role in the project, image allow-list, env rules,
runtime permission, never-fits), so every replica is checked exactly as a submitted job is.

Authorization reuses the job actions on a job-like reference (project, owner = the deployer):
JOB_SUBMIT to deploy, JOB_READ to read, JOB_CANCEL to change, scale or delete (a member only
their own service; project, department and platform admins any). A foreign service answers
like a missing one (404 SERVICE_NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from anyio import to_thread

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.auth.policy import Action, Ref, Resource
from broker.errors import Conflict, Invalid, NotFound, Unauthorized
from broker.models import Job, Service, ServiceEvent, ServiceRevision, ServiceStatus
from broker.ports import Clock
from broker.schemas.services import ScaleIn, ServiceCreate, ServicePatch
from broker.services import service_queries as repo
from broker.services.jobs import JobService, project_env
from broker.services.wakeup import Wakeup

TARGET_TTL_S = 2.0  # the proxy's cache of (project, name) -> service
REFRESH_AHEAD_S = 0.5  # a cached service is read again in the background this long before it expires
KEY_PREFIX = "cbsvc_"


@dataclass(frozen=True, slots=True)
class Target:
    """What the proxy needs of a service, cached for TARGET_TTL_S."""

    id: str
    project: str
    name: str
    ref: Ref
    key_hashes: frozenset[str]
    timeout_s: float
    limits: "Limits"


@dataclass(frozen=True, slots=True)
class Limits:
    """The entry point's rate limits of one service (None: unlimited)."""

    per_s: float | None = None
    burst: float = 1.0
    per_caller_per_s: float | None = None
    per_caller_burst: float = 1.0


def _limits(spec: dict, default: tuple[float, float] | None) -> Limits:
    """The spec's `rate_limit` over the broker's per-caller default (rate, burst; None: none)."""
    per_s, caller = spec.get("per_s"), spec.get("per_caller_per_s")
    caller_burst = spec.get("per_caller_burst")
    if caller is None and default is not None:
        caller, caller_burst = default[0], caller_burst or default[1]
    return Limits(per_s=per_s, burst=float(spec.get("burst") or max(1.0, per_s or 1.0)),
                  per_caller_per_s=caller, per_caller_burst=float(caller_burst or max(1.0, 2 * (caller or 1.0))))


# fields of a prepared job row that each replica sets itself
_PER_REPLICA = ("id", "submit_time", "created_at", "status", "version", "attempt")


def _target_or_raise(t: Target | None, project: str, name: str) -> Target:
    if t is None:
        raise not_found(f"{project}/{name}")
    return t


def not_found(service_id: str) -> NotFound:
    return NotFound(f"service {service_id!r} not found", code="SERVICE_NOT_FOUND")


class ServiceManager:
    def __init__(self, engine, authz: Authz, jobs: JobService, *, wakeup: Wakeup | None = None,
                 clock: Clock = time.time, caller_limit: tuple[float, float] | None = None) -> None:
        """`caller_limit`: the entry point's default per-caller (rate per s, burst) where a
        service sets none (None: no default limit)."""
        self.engine, self.authz, self.jobs, self.clock = engine, authz, jobs, clock
        self.caller_limit = caller_limit
        self.wakeup = wakeup or Wakeup()
        self._targets: dict[tuple[str, str], tuple[Target | None, float]] = {}  # None: no such service
        self._loading: dict[tuple[str, str], asyncio.Future] = {}
        self._gen = 0  # bumped by every change here: a read that started before it is not stored
        # (authorization, service id) -> (until, token expiry, authn + authz generation, caller)
        self._allowed: dict[tuple[str | None, str], tuple[float, float | None, int, str]] = {}

    # ------------------------------------------------------------------ the proxy's side
    async def resolve(self, project: str, name: str) -> Target:
        """The service behind `/svc/{project}/{name}` (404 SERVICE_NOT_FOUND), cached for
        TARGET_TTL_S (a missing one too: a flood of unknown names costs one read per name).

        One read per name at a time (concurrent callers share it), and a fresh entry is read
        again in the background during its last REFRESH_AHEAD_S, so a busy entry point never
        waits on the database and never sends a herd of reads to it when an entry expires."""
        key = (project, name)
        now = time.monotonic()
        hit = self._targets.get(key)
        if hit is not None and hit[1] > now:
            if hit[1] - now < REFRESH_AHEAD_S and key not in self._loading:
                self._load_async(key)
            return _target_or_raise(hit[0], project, name)
        fut = self._loading.get(key)
        if fut is None or fut.get_loop() is not asyncio.get_running_loop():
            fut = self._load_async(key)
        return _target_or_raise(await asyncio.shield(fut), project, name)

    def _load_async(self, key: tuple[str, str]) -> asyncio.Future:
        fut = asyncio.ensure_future(self._reload(key))
        self._loading[key] = fut
        fut.add_done_callback(lambda f: (self._loading.pop(key, None) if self._loading.get(key) is f else None,
                                         f.cancelled() or f.exception()))  # a background failure is read here
        return fut

    async def _reload(self, key: tuple[str, str]) -> Target | None:
        gen = self._gen
        try:
            t: Target | None = await to_thread.run_sync(self._load_target, *key)
        except NotFound:
            t = None
        if gen == self._gen:  # no change in this process meanwhile (else the next call reads again)
            if len(self._targets) >= 10_000:
                self._targets.clear()
            self._targets[key] = (t, time.monotonic() + TARGET_TTL_S)
        return t

    def _load_target(self, project: str, name: str) -> Target:
        with Session(self.engine) as s:
            svc = repo.by_name(s, project, name) if len(project) <= 64 and len(name) <= 64 else None
            if svc is None or svc.status == ServiceStatus.DELETING.value:
                raise not_found(f"{project}/{name}")
            rev = repo.revision(s, svc.id, svc.revision)
            spec = rev.spec if rev else {}
            timeout = float(spec.get("request_timeout_s", 60.0))
            return Target(svc.id, svc.project_id, svc.name, self.ref(svc), frozenset(svc.api_key_hashes or ()), timeout,
                          _limits(spec.get("rate_limit") or {}, self.caller_limit))

    async def authorize_call(self, target: Target, authorization: str | None, key: str | None, authn) -> str:
        """One of the service's API keys, or a user token with a role in its project (a foreign
        caller gets 404, like a missing service); the caller's name for rate limits ("key:..."
        or "token:<id>"). An allowed (token, service) pair is remembered for TARGET_TTL_S (role
        changes in another process show within that), but never past the token's own expiry
        nor past a revocation or a role change in this process (`generation`)."""
        if key:
            h = _key_hash(key)
            if any(hmac.compare_digest(h, k) for k in target.key_hashes):
                return "key:" + h[:16]
            if not authorization:
                raise Unauthorized("this API key is not valid for this service", code="UNAUTHORIZED")
        now = time.monotonic()
        gen = authn.generation + self.authz.generation
        hit = self._allowed.get((authorization, target.id))
        if hit is not None and hit[0] > now and hit[2] == gen and (hit[1] is None or time.time() < hit[1]):
            return hit[3]
        principal = await authn.user(authorization)
        self.authz.require(principal, Action.JOB_READ, target.ref, hidden=not_found(f"{target.project}/{target.name}"))
        if len(self._allowed) > 10_000:
            self._allowed.clear()
        caller = "token:" + principal.token_id
        self._allowed[(authorization, target.id)] = (now + TARGET_TTL_S, principal.expires_at, gen, caller)
        return caller

    def create_key(self, *, principal: Principal, service_id: str) -> dict:
        """A new per-service API key for clinical systems (shown once; only its hash is kept)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with Session(self.engine) as s:
            svc = self._service(s, principal, service_id, Action.JOB_CANCEL)
            svc.api_key_hashes = [*svc.api_key_hashes, _key_hash(key)][-16:]
            s.add(svc)
            add_event(s, svc.id, "api_key_created", f"API key created by {principal.name or principal.token_id}")
            s.commit()
            n = len(svc.api_key_hashes)
        self._changed()
        return {"key": key, "keys": n}

    def revoke_keys(self, *, principal: Principal, service_id: str) -> dict:
        with Session(self.engine) as s:
            svc = self._service(s, principal, service_id, Action.JOB_CANCEL)
            svc.api_key_hashes = []
            s.add(svc)
            add_event(s, svc.id, "api_keys_revoked", f"API keys revoked by {principal.name or principal.token_id}")
            s.commit()
        self._changed()
        return {"keys": 0}

    # ------------------------------------------------------------------ deploy
    def deploy(self, *, principal: Principal, spec: ServiceCreate) -> dict:
        """Check the spec like a job submit, refuse an operation `min` above the project's
        guarantee, store the service and its revision 1 (the controller starts replicas)."""
        template = self._template(principal, spec)
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as s:
            if spec.workload_class == "operation":
                check_guarantee(s, spec)
            if repo.by_name(s, spec.project, spec.name) is not None:
                raise _exists(spec)
            svc = Service(name=spec.name, project_id=spec.project, workload_class=spec.workload_class,
                          owner_token_id=principal.token_id, min_replicas=spec.replicas.min,
                          max_replicas=spec.replicas.max, desired_replicas=max(spec.replicas.min, 1 if spec.replicas.max else 0),
                          created_at=now, updated_at=now)
            s.add(svc)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                raise _exists(spec) from None
            who = self.authz.principal(principal).subject
            s.add(ServiceRevision(service_id=svc.id, number=1, spec=_spec_json(spec), template=template,
                                  created_at=now, created_by=who))
            add_event(s, svc.id, "created", f"deployed by {principal.name or who}: revision 1, "
                      f"{svc.desired_replicas} replica(s)", {"revision": 1}, now=now)
            s.commit()
            out = self._public(s, svc)
        self._changed()
        return out

    def _template(self, principal: Principal, spec: ServiceCreate) -> dict:
        try:
            jc = spec.job_create()
        except ValueError as e:
            raise Invalid(str(e), code="INVALID_SERVICE") from None
        row, _event = self.jobs.prepare(principal=principal, spec=jc)
        return {k: v for k, v in row.items() if k not in _PER_REPLICA}

    # ------------------------------------------------------------------ reads
    def get(self, *, principal: Principal, service_id: str) -> dict:
        with Session(self.engine) as s:
            svc = self._service(s, principal, service_id, Action.JOB_READ)
            return self._redacted(principal, self._public(s, svc))

    def list(self, *, principal: Principal, projects: list[str] | None = None) -> dict:
        visible = self.authz.visible_projects(principal, projects or ())
        if visible is not None and not visible:
            return {"items": []}
        with Session(self.engine) as s:
            return {"items": [self._redacted(principal, self._public(s, svc)) for svc in repo.page(s, visible)]}

    def revisions(self, *, principal: Principal, service_id: str) -> dict:
        with Session(self.engine) as s:
            svc = self._service(s, principal, service_id, Action.JOB_READ)
            items = [{"number": r.number, "status": r.status, "message": r.message, "created_at": r.created_at,
                      "created_by": r.created_by, "spec": r.spec} for r in repo.revisions(s, svc.id)]
        return {"items": [self._redacted_spec(principal, svc.project_id, it) for it in items]}

    def replicas(self, *, principal: Principal, service_id: str) -> dict:
        with Session(self.engine) as s:
            svc = self._service(s, principal, service_id, Action.JOB_READ)
            jobs = list(repo.replica_jobs(s, svc.id, live_only=True))
            health = repo.replica_rows(s, svc.id)
            places = repo.placements(s, [(j.id, j.attempt) for j in jobs])
            return {"items": [replica_public(j, health.get(j.id), places.get(j.id)) for j in jobs]}

    def events(self, *, principal: Principal, service_id: str, after: int = 0, limit: int = 500) -> dict:
        with Session(self.engine) as s:
            svc = self._service(s, principal, service_id, Action.JOB_READ)
            return {"items": [{"id": e.id, "ts": e.ts, "kind": e.kind, "message": e.message, "details": e.details}
                              for e in repo.events(s, svc.id, after=after, limit=limit)]}

    def replica_job(self, *, principal: Principal, service_id: str, replica: str) -> str:
        """The job id of one replica (by job id or replica index), for its logs."""
        with Session(self.engine) as s:
            svc = self._service(s, principal, service_id, Action.JOB_READ)
            jobs = list(repo.replica_jobs(s, svc.id))
        for j in reversed(jobs):  # newest first: index N is the live one if any
            if j.id == replica or (replica.isdigit() and j.replica_index == int(replica)):
                return j.id
        raise NotFound(f"service {service_id!r} has no replica {replica!r}", code="REPLICA_NOT_FOUND")

    # ------------------------------------------------------------------ changes
    def patch(self, *, principal: Principal, service_id: str, change: ServicePatch) -> dict:
        """New image/command/env/probes -> a new revision (rolled out by the controller);
        replicas alone -> new bounds (no revision)."""
        with Session(self.engine, expire_on_commit=False) as s:
            svc = self._service(s, principal, service_id, Action.JOB_CANCEL)
            _not_deleting(svc)
            cur = repo.revision(s, svc.id, svc.revision)
            spec_json = dict(cur.spec)
            fields = change.model_dump(exclude_none=True, mode="json")
            replicas = fields.pop("replicas", None)
            limits = fields.pop("rate_limit", None)
            new_spec = {**spec_json, **fields}
            if replicas is not None:
                new_spec["replicas"] = replicas
            if limits is not None:
                new_spec["rate_limit"] = limits
            try:
                spec = ServiceCreate.model_validate(new_spec)
            except Exception as e:  # pydantic ValidationError: the combined spec is refused
                raise Invalid(_first_error(e), code="INVALID_SERVICE") from None
            if spec.workload_class == "operation":
                check_guarantee(s, spec)
        now = self.clock()
        new_revision = bool(fields) and {k: spec_json.get(k) for k in fields} != fields
        template = self._template(principal, spec) if new_revision else None
        with Session(self.engine, expire_on_commit=False) as s:
            svc = self._service(s, principal, service_id, Action.JOB_CANCEL)
            if replicas is not None:
                svc.min_replicas, svc.max_replicas = spec.replicas.min, spec.replicas.max
                svc.desired_replicas = min(max(svc.desired_replicas, svc.min_replicas), svc.max_replicas)
                add_event(s, svc.id, "scaled", f"replicas min {svc.min_replicas}, max {svc.max_replicas}",
                          {"min": svc.min_replicas, "max": svc.max_replicas}, now=now)
            if new_revision:
                number = max((r.number for r in repo.revisions(s, svc.id)), default=0) + 1
                s.add(ServiceRevision(service_id=svc.id, number=number, spec=_spec_json(spec), template=template,
                                      created_at=now, created_by=self.authz.principal(principal).subject))
                svc.revision = number
                svc.status = ServiceStatus.ROLLING.value
                svc.failures, svc.next_start_at = 0, None
                add_event(s, svc.id, "revision", f"revision {number}: {', '.join(sorted(fields))} changed; "
                          "rolling out one replica at a time", {"revision": number, "fields": sorted(fields)}, now=now)
            if limits is not None:
                add_event(s, svc.id, "rate_limit", "entry point limits changed",
                          spec.rate_limit.model_dump(mode="json"), now=now)
            if not new_revision and (replicas is not None or limits is not None):
                # keep the stored spec's replica bounds and limits in step without a new revision
                cur = repo.revision(s, svc.id, svc.revision)
                cur.spec = {**cur.spec, "replicas": spec.replicas.model_dump(),
                            "rate_limit": spec.rate_limit.model_dump(mode="json")}
                s.add(cur)
            svc.updated_at, svc.version = now, svc.version + 1
            s.add(svc)
            s.commit()
            out = self._public(s, svc)
        self._changed()
        return out

    def scale(self, *, principal: Principal, service_id: str, body: ScaleIn) -> dict:
        """Set the desired replicas now (clamped to min..max; the autoscaler may move it later)."""
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as s:
            svc = self._service(s, principal, service_id, Action.JOB_CANCEL)
            _not_deleting(svc)
            if not svc.min_replicas <= body.replicas <= svc.max_replicas:
                raise Invalid(f"replicas must be within min {svc.min_replicas} and max {svc.max_replicas}; "
                              "change the bounds with PATCH", code="REPLICAS_OUT_OF_BOUNDS",
                              details={"requested": body.replicas, "min": svc.min_replicas, "max": svc.max_replicas})
            svc.desired_replicas, svc.scaled_at, svc.updated_at = body.replicas, now, now
            svc.version += 1
            s.add(svc)
            add_event(s, svc.id, "scaled", f"scaled to {body.replicas} replica(s)", {"desired": body.replicas}, now=now)
            s.commit()
            out = self._public(s, svc)
        self._changed()
        return out

    def delete(self, *, principal: Principal, service_id: str) -> dict:
        """Mark DELETING: the controller stops every replica, then removes the service."""
        now = self.clock()
        with Session(self.engine, expire_on_commit=False) as s:
            svc = self._service(s, principal, service_id, Action.JOB_CANCEL)
            if svc.status != ServiceStatus.DELETING.value:
                svc.status, svc.deleted_at, svc.updated_at = ServiceStatus.DELETING.value, now, now
                svc.version += 1
                s.add(svc)
                add_event(s, svc.id, "deleting", f"deleted by {principal.name or principal.token_id}", now=now)
                s.commit()
            out = self._public(s, svc)
        self._changed()
        return out

    # ------------------------------------------------------------------ helpers
    def ref(self, svc: Service) -> Ref:
        return Ref(Resource.JOB, department=self.authz.project_department(svc.project_id), project=svc.project_id,
                   owner=self.authz.owner_subject(svc.owner_token_id))

    def authorize(self, principal: Principal, svc: Service, action: Action) -> None:
        self.authz.require(principal, action, self.ref(svc), hidden=not_found(svc.id))

    def _service(self, s: Session, principal: Principal, service_id: str, action: Action) -> Service:
        svc = repo.get(s, service_id)
        if svc is None:
            raise not_found(service_id)
        self.authorize(principal, svc, action)
        return svc

    def _public(self, s: Session, svc: Service) -> dict:
        rev = repo.revision(s, svc.id, svc.revision)
        health = repo.replica_rows(s, svc.id)
        live = repo.count_live(s, svc.id)
        return service_public(svc, rev.spec if rev else {}, ready=sum(1 for h in health.values() if h.ready),
                              running=live)

    def _redacted(self, principal: Principal, out: dict) -> dict:
        spec = project_env(self.authz.principal(principal), self.authz, {"project": out["project"], "env": out["spec"].get("env", {})})
        return {**out, "spec": {**out["spec"], "env": spec["env"]}}

    def _redacted_spec(self, principal: Principal, project: str, item: dict) -> dict:
        spec = project_env(self.authz.principal(principal), self.authz, {"project": project, "env": item["spec"].get("env", {})})
        return {**item, "spec": {**item["spec"], "env": spec["env"]}}

    def _changed(self) -> None:
        """A service changed here: the proxy's caches forget it (other brokers' within TARGET_TTL_S;
        the controller picks the change up at its next tick)."""
        self._gen += 1
        self._targets.clear()
        self._allowed.clear()


def check_guarantee(s: Session, spec: ServiceCreate) -> None:
    """An operation service's `min` replicas must fit within the project's operation guarantee
    (they are never preempted, so they must never need to be): 422 naming the numbers."""
    have = repo.operation_guarantee(s, spec.project, spec.pool)
    per = {"gpus": spec.resources.gpus, "cpus": spec.resources.cpus, "memory_gb": spec.resources.memory_gb}
    for res, amount in per.items():
        need = amount * spec.replicas.min
        g = have.get(res)
        if res != "gpus" and g is None:
            continue  # not managed in the operation pools: nothing is guaranteed or limited
        g = g or 0.0
        if need > g + 1e-9:
            raise Invalid(f"operation service {spec.name!r} needs {need:g} {res} for its min of {spec.replicas.min} "
                          f"replica(s) ({amount:g} each), but project {spec.project} is guaranteed {g:g} {res} "
                          "in the operation pools; lower replicas.min or ask for a larger guarantee",
                          code="GUARANTEE_EXCEEDED",
                          details={"resource": res, "min_replicas": spec.replicas.min, "per_replica": amount,
                                   "requested": need, "guaranteed": g, "project": spec.project})


def add_event(s: Session, service_id: str, kind: str, message: str, details: dict | None = None, *,
              now: float | None = None) -> None:
    s.add(ServiceEvent(service_id=service_id, ts=time.time() if now is None else now, kind=kind, message=message,
                       details=dict(details or {})))


def service_public(svc: Service, spec: dict, *, ready: int, running: int) -> dict:
    return {
        "id": svc.id, "name": svc.name, "project": svc.project_id, "class": svc.workload_class,
        "status": svc.status, "message": svc.message, "revision": svc.revision,
        "stable_revision": svc.stable_revision,
        "replicas": {"min": svc.min_replicas, "max": svc.max_replicas, "desired": svc.desired_replicas,
                     "ready": ready, "running": running},
        "pending_reason": ({"code": svc.pending_code, "message": svc.pending_message,
                            "details": svc.pending_details or {}} if svc.pending_code else None),
        "endpoint": f"/svc/{svc.project_id}/{svc.name}/",
        "spec": spec, "created_at": svc.created_at, "updated_at": svc.updated_at,
    }


def replica_public(j: Job, h: Any, p: Any) -> dict:
    pending = j.status == "PENDING"
    if h is None or j.status != "RUNNING":
        health = "pending" if pending else ("stopping" if j.cancel_requested_at else "starting")
    else:
        health = "ready" if h.ready else ("unhealthy" if h.live_failures or h.ready_failures else "starting")
    return {
        "job_id": j.id, "index": j.replica_index, "revision": j.service_revision, "status": j.status,
        "ready": bool(h.ready) if h is not None else False, "health": health,
        "node": p.node_id if p is not None else None, "gpu_ids": list(p.gpu_indices or []) if p is not None else [],
        "host": h.host if h is not None else "", "port": j.port, "preemptible": bool(j.preemptible),
        "pending_reason": ({"code": j.pending_code, "message": j.pending_message, "details": j.pending_details or {}}
                           if pending and j.pending_code else None),
        "started_at": j.started_at, "message": (h.message if h is not None and h.message else j.message) or "",
    }


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _spec_json(spec: ServiceCreate) -> dict:
    return spec.model_dump(by_alias=True, mode="json")


def _exists(spec: ServiceCreate) -> Conflict:
    return Conflict(f"project {spec.project} already has a service named {spec.name!r}", code="SERVICE_EXISTS",
                    details={"project": spec.project, "name": spec.name})


def _not_deleting(svc: Service) -> None:
    if svc.status == ServiceStatus.DELETING.value:
        raise Conflict(f"service {svc.name!r} is being deleted", code="SERVICE_DELETING")


def _first_error(e: Exception) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        first = errs()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where + ': ' if where else ''}{str(first.get('msg', 'invalid')).removeprefix('Value error, ')}"
    return str(e)[:300]
