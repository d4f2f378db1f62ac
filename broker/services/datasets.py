"""Datasets: registration by admins, grants to projects, the submit check, mounts at launch.

Who: platform-admins and the owning department's admins (`DATASET_ADMIN` on the dataset's
department) register datasets, grant and revoke them and read who used them. Letting
`runtime: process` jobs mount a dataset (they get its host path in an env variable: nothing on
the host enforces read-only or the grant) is a platform-admin decision per grant.

Submit (`check_mounts`): a dataset the project has no grant for answers exactly like one that
does not exist (404 DATASET_NOT_FOUND): a tenant learns nothing of other departments' data.
Asking `rw` on a read-only grant or a read-only dataset is 403 DATASET_READ_ONLY.

Launch (`mounts_for_launch`, in the scheduling loop's transaction before the launch): the
grant is checked again (a revoke while the job waited stops it), one `dataset_access` row and
one `dataset.mount` audit entry (actor "system": the job, attempt, project, mode, path) per
mount commit before the container starts.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from sqlalchemy import or_, select
from sqlmodel import Session

from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz
from broker.auth.policy import Action, Decision, Ref, Resource
from broker.errors import Conflict, Forbidden, Invalid, NotFound
from broker.models import Dataset, DatasetAccess, DatasetGrant, Department, Job
from broker.ports import Clock
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.services.secrets import SYSTEM


def dataset_not_found(ref: str) -> NotFound:
    return NotFound(f"dataset {ref!r} not found", code="DATASET_NOT_FOUND")


def dataset_public(d: Dataset) -> dict:
    return {"id": d.id, "name": d.name, "description": d.description, "department": d.department_id,
            "path": d.path, "shared": d.shared, "nodes": list(d.nodes or ()), "pools": list(d.pools or ()),
            "writable": d.writable, "retention": d.retention, "created_at": d.created_at,
            "created_by": d.created_by}


def grant_public(g: DatasetGrant) -> dict:
    return {"dataset": g.dataset_id, "project": g.project_id, "mode": g.mode, "allow_process": g.allow_process,
            "created_at": g.created_at}


def dataset_env_name(name: str) -> str:
    """BROKER_DATASET_<NAME>: where a process job finds a dataset (letters, digits, _)."""
    return "BROKER_DATASET_" + "".join(ch if ch.isalnum() else "_" for ch in name).upper()


class DatasetService:
    def __init__(self, engine, authz: Authz, *, clock: Clock = time.time) -> None:
        self.engine, self.authz, self.clock = engine, authz, clock

    def _require_admin(self, p: AuthPrincipal, department: str, hidden: Exception | None = None) -> None:
        self.authz.require(p, Action.DATASET_ADMIN, Ref(Resource.DEPARTMENT, department=department), hidden=hidden)

    def _load(self, s: Session, ref: str) -> Dataset | None:
        return s.execute(select(Dataset).where(or_(Dataset.id == ref, Dataset.name == ref))).scalars().first()

    def _admin_load(self, s: Session, p: AuthPrincipal, ref: str) -> Dataset:
        d = self._load(s, ref)
        if d is None:
            raise dataset_not_found(ref)
        self._require_admin(p, d.department_id, hidden=dataset_not_found(ref))
        return d

    # ------------------------------------------------------------------ admin
    def create(self, p: AuthPrincipal, caller: Caller, **fields: Any) -> dict:
        dept = fields.pop("department")
        self._require_admin(p, dept, hidden=Invalid(f"unknown department {dept!r}", code="UNKNOWN_DEPARTMENT"))
        with Session(self.engine) as s:
            if s.get(Department, dept) is None:
                raise Invalid(f"unknown department {dept!r}", code="UNKNOWN_DEPARTMENT")
            if self._load(s, fields["name"]) is not None:
                raise Conflict(f"a dataset named {fields['name']!r} exists", code="DATASET_EXISTS")
            d = Dataset(department_id=dept, created_at=self.clock(), created_by=caller.actor, **fields)
            s.add(d)
            s.flush()
            audit.record(s, caller, action="dataset.create", target_kind="dataset", target_id=d.id,
                         after=dataset_public(d), department=dept, clock=self.clock)
            s.commit()
            return dataset_public(d)

    def list(self, p: AuthPrincipal) -> dict:
        """Datasets the caller administers or that a project of theirs may use."""
        with Session(self.engine) as s:
            rows = s.execute(select(Dataset).order_by(Dataset.name)).scalars().all()
            grants = s.execute(select(DatasetGrant)).scalars().all()
        usable: dict[str, set[str]] = {}
        for g in grants:
            usable.setdefault(g.dataset_id, set()).add(g.project_id)
        out = []
        for d in rows:
            admin = self.authz.decide(p, Action.DATASET_ADMIN, Ref(Resource.DEPARTMENT, department=d.department_id))
            if admin is Decision.ALLOW or any(self._may_read(p, pid) for pid in usable.get(d.id, ())):
                out.append(dataset_public(d))
        return {"items": out}

    def _may_read(self, p: AuthPrincipal, project: str) -> bool:
        ref = self.authz.project_ref(project)
        return ref is not None and self.authz.decide(p, Action.JOB_SUBMIT, ref) is Decision.ALLOW

    def grant(self, p: AuthPrincipal, caller: Caller, ref: str, project: str, *, mode: str,
              allow_process: bool) -> dict:
        with Session(self.engine) as s:
            d = self._admin_load(s, p, ref)
            pref = self.authz.project_ref(project)
            if pref is None:
                raise NotFound(f"project {project!r} not found", code="PROJECT_NOT_FOUND")
            if allow_process:  # host paths for host processes: the platform decides
                self.authz.require(p, Action.PROJECT_RUNTIME_ADMIN, pref)
            if mode == "rw" and not d.writable:
                raise Invalid(f"dataset {d.name!r} is read-only: it cannot be granted read-write",
                              code="DATASET_READ_ONLY")
            g = s.get(DatasetGrant, (d.id, project))
            before = grant_public(g) if g is not None else None
            if g is None:
                g = DatasetGrant(dataset_id=d.id, project_id=project, created_at=self.clock(), created_by=caller.actor)
            g.mode, g.allow_process = mode, allow_process
            s.add(g)
            audit.record(s, caller, action="dataset.grant", target_kind="dataset", target_id=d.id, before=before,
                         after=grant_public(g), department=d.department_id, project=project, clock=self.clock)
            s.commit()
            return grant_public(g)

    def revoke(self, p: AuthPrincipal, caller: Caller, ref: str, project: str) -> None:
        with Session(self.engine) as s:
            d = self._admin_load(s, p, ref)
            g = s.get(DatasetGrant, (d.id, project))
            if g is None:
                raise NotFound(f"project {project!r} has no grant on dataset {d.name!r}", code="GRANT_NOT_FOUND")
            before = grant_public(g)
            s.delete(g)
            audit.record(s, caller, action="dataset.revoke", target_kind="dataset", target_id=d.id, before=before,
                         department=d.department_id, project=project, clock=self.clock)
            s.commit()

    def access(self, p: AuthPrincipal, ref: str, *, limit: int = 500) -> dict:
        """The jobs that mounted the dataset, newest first."""
        with Session(self.engine) as s:
            d = self._admin_load(s, p, ref)
            rows = s.execute(select(DatasetAccess).where(DatasetAccess.dataset_id == d.id)
                             .order_by(DatasetAccess.id.desc()).limit(limit)).scalars().all()
        return {"items": [{"job": r.job_id, "attempt": r.attempt, "project": r.project_id, "mode": r.mode,
                           "path": r.path, "at": r.at} for r in rows]}

    # ------------------------------------------------------------------ submit
    def check_mounts(self, project: str, mounts: Sequence[Any], runtime: str) -> list[dict]:
        """The job's mounts, checked against its project's grants; returns what the job row
        stores ({dataset id, name, path, mode}). See the module doc for the refusals."""
        paths = [m.path for m in mounts]
        if len(set(paths)) != len(paths):
            raise Invalid("two mounts at one path", code="MOUNT_PATH_TAKEN")
        out = []
        with Session(self.engine) as s:
            for m in mounts:
                d = self._load(s, m.dataset)
                g = s.get(DatasetGrant, (d.id, project)) if d is not None else None
                if g is None:
                    raise dataset_not_found(m.dataset)
                if m.mode == "rw" and (g.mode != "rw" or not d.writable):
                    raise Forbidden(f"project {project!r} may only read dataset {d.name!r}", code="DATASET_READ_ONLY")
                if runtime == "process" and not g.allow_process:
                    raise Forbidden(f"runtime 'process' jobs of {project!r} may not mount dataset {d.name!r}: a host "
                                    "process cannot be held to read-only access (a platform-admin may allow it)",
                                    code="DATASET_PROCESS_NOT_ALLOWED")
                out.append({"dataset": d.id, "name": d.name, "path": m.path, "mode": m.mode,
                            "nodes": [] if d.shared else list(d.nodes or ()),
                            "pools": [] if d.shared else list(d.pools or ())})
        return out


def mounts_for_launch(s: Session, job: Job, department: str | None, *, clock: Clock = time.time
                      ) -> tuple[tuple[str, str, str, str], ...]:
    """(host path, path in the job, mode, dataset name) per mount, each recorded and audited in
    `s`'s transaction; a grant revoked since the submit raises (the launch does not happen)."""
    out = []
    now = clock()
    for m in job.mounts or ():
        d = s.get(Dataset, m["dataset"])
        g = s.get(DatasetGrant, (m["dataset"], job.project_id)) if d is not None else None
        if g is None or (m["mode"] == "rw" and g.mode != "rw"):
            raise Forbidden(f"the grant on dataset {m.get('name')!r} was revoked", code="DATASET_GRANT_REVOKED")
        s.add(DatasetAccess(dataset_id=d.id, job_id=job.id, attempt=job.attempt, project_id=job.project_id,
                            mode=m["mode"], path=m["path"], at=now))
        audit.record(s, SYSTEM, action="dataset.mount", target_kind="dataset", target_id=d.id,
                     after={"job": job.id, "attempt": job.attempt, "project": job.project_id, "mode": m["mode"],
                            "path": m["path"], "runtime": job.runtime},
                     department=department, project=job.project_id, clock=clock)
        out.append((d.path, m["path"], m["mode"], d.name))
    return tuple(out)
