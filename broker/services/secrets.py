"""Project secrets: write-only, versioned, Fernet-encrypted at rest, audited when read.

Why Fernet (`cryptography`): authenticated encryption with a maintained implementation; we
write no crypto. The key comes from settings (`secrets_key`) or a key file (`secrets_key_file`,
default `<data_dir>/secrets.key`, one key a line). Several keys make a `MultiFernet`: the first
encrypts, every one decrypts, so an operator rotates the key by putting a new one first and
re-saving the secrets (each PUT re-encrypts with the first key).

What the API shows of a secret: its name, versions, who wrote each and when. Never a value:
there is no read route. The only reader is the scheduling loop, which decrypts the current
version of each secret a job names right before the launch and records one `secret.read`
audit entry per secret (actor "system", the job and attempt, the version) in the same
transaction; the value then travels to the runner, which writes it to a tmpfs file.

Invariant: no value (plaintext) is stored, logged, put in an audit record or returned.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import func, select
from sqlmodel import Session

from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz
from broker.auth.policy import Action
from broker.errors import BrokerError, Invalid, NotFound
from broker.models import Job, ProjectSecret
from broker.ports import Clock
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.settings import Settings

SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SECRET_BYTES = 64 * 1024
MIN_SECRET_BYTES = 4  # = the runner's sandbox.MIN_MASKED
SYSTEM = Caller(token_id="", subject="system", kind="system")


class SecretsUnavailable(BrokerError):
    status, code = 503, "SECRETS_KEY_UNAVAILABLE"


def secret_not_found(project: str, name: str) -> NotFound:
    return NotFound(f"secret {name!r} not found in project {project!r}", code="SECRET_NOT_FOUND")


def check_name(name: str) -> None:
    if not SECRET_NAME.match(name or ""):
        raise Invalid("a secret name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                      code="SECRET_NAME_INVALID", details={"name": (name or "")[:64]})


def ensure_key_file(path: Path) -> Path:
    """Create a Fernet key file (mode 0600) when there is none; never overwrite one."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key() + b"\n")
    return path


def cipher_from(settings: Settings) -> MultiFernet | None:
    """The configured keys as a MultiFernet; None when no key is configured or readable."""
    raw = settings.secrets_key
    if not raw:
        try:
            raw = settings.secrets_key_path.read_text()
        except OSError:
            return None
    keys = [k.strip() for k in re.split(r"[,\s]+", raw) if k.strip()]
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys]) if keys else None
    except ValueError:
        return None


class SecretService:
    """The use cases of `/api/v1/projects/{id}/secrets` and the launch-time read."""

    def __init__(self, settings: Settings, engine, authz: Authz, *, clock: Clock = time.time) -> None:
        self.settings, self.engine, self.authz, self.clock = settings, engine, authz, clock
        self._cipher: MultiFernet | None = None

    def cipher(self) -> MultiFernet:
        if self._cipher is None:
            if not self.settings.secrets_key:  # like `broker up`: a key file in the data dir on first use
                try:
                    ensure_key_file(self.settings.secrets_key_path)
                except OSError:
                    pass
            self._cipher = cipher_from(self.settings)
        if self._cipher is None:
            raise SecretsUnavailable("no secrets key is configured (BROKER_SECRETS_KEY or the key file "
                                     f"{self.settings.secrets_key_path})")
        return self._cipher

    # ------------------------------------------------------------------ API
    def list(self, p: AuthPrincipal, project: str) -> dict:
        self.authz.require_project(p, project, Action.PROJECT_SECRETS_READ)
        with Session(self.engine) as s:
            rows = s.execute(select(ProjectSecret).where(ProjectSecret.project_id == project)
                             .order_by(ProjectSecret.name, ProjectSecret.version)).scalars().all()
        by_name: dict[str, list[ProjectSecret]] = {}
        for r in rows:
            by_name.setdefault(r.name, []).append(r)
        return {"items": [_public(project, name, vs) for name, vs in by_name.items() if not vs[-1].deleted]}

    def get(self, p: AuthPrincipal, project: str, name: str) -> dict:
        self.authz.require_project(p, project, Action.PROJECT_SECRETS_READ)
        with Session(self.engine) as s:
            versions = _versions(s, project, name)
        if not versions or versions[-1].deleted:
            raise secret_not_found(project, name)
        return _public(project, name, versions)

    def put(self, p: AuthPrincipal, caller: Caller, project: str, name: str, value: str) -> tuple[dict, bool]:
        """Create the secret or rotate it (a new version). Returns (metadata, created)."""
        self.authz.require_project(p, project, Action.PROJECT_SECRETS_MANAGE)
        check_name(name)
        data = value.encode()
        if len(data) < MIN_SECRET_BYTES or len(data) > MAX_SECRET_BYTES or "\x00" in value:
            # shorter values could not be masked in logs without masking ordinary output
            raise Invalid(f"a secret value is {MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} bytes without NUL",
                          code="SECRET_VALUE_INVALID")
        token = self.cipher().encrypt(data).decode()
        with Session(self.engine) as s:
            audit._lock_chain(s)  # serializes writers of this secret's versions too
            last = s.execute(select(func.max(ProjectSecret.version)).where(
                ProjectSecret.project_id == project, ProjectSecret.name == name)).scalar_one_or_none() or 0
            live = last and not _versions(s, project, name)[-1].deleted
            row = ProjectSecret(project_id=project, name=name, version=last + 1, ciphertext=token,
                                created_at=self.clock(), created_by=caller.actor)
            s.add(row)
            audit.record(s, caller, action="secret.rotate" if live else "secret.create", target_kind="secret",
                         target_id=f"{project}/{name}", after={"version": last + 1},
                         department=self.authz.project_department(project), project=project, clock=self.clock)
            s.commit()
            versions = _versions(s, project, name)
        return _public(project, name, versions), not live

    def delete(self, p: AuthPrincipal, caller: Caller, project: str, name: str) -> None:
        """Forget every version's value (the metadata stays, marked deleted)."""
        self.authz.require_project(p, project, Action.PROJECT_SECRETS_MANAGE)
        with Session(self.engine) as s:
            audit._lock_chain(s)
            versions = _versions(s, project, name)
            if not versions or versions[-1].deleted:
                raise secret_not_found(project, name)
            for v in versions:
                v.ciphertext, v.deleted = "", True
                s.add(v)
            audit.record(s, caller, action="secret.delete", target_kind="secret", target_id=f"{project}/{name}",
                         before={"version": versions[-1].version}, department=self.authz.project_department(project),
                         project=project, clock=self.clock)
            s.commit()

    # ------------------------------------------------------------------ submit / launch
    def missing(self, project: str, names: Iterable[str]) -> list[str]:
        """The names (of `names`) with no live secret in `project`."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        with Session(self.engine) as s:
            rows = s.execute(select(ProjectSecret.name, ProjectSecret.version, ProjectSecret.deleted)
                             .where(ProjectSecret.project_id == project, ProjectSecret.name.in_(wanted))).all()
        latest: dict[str, tuple[int, bool]] = {}
        for n, v, d in rows:
            if n not in latest or v > latest[n][0]:
                latest[n] = (v, d)
        return [n for n in wanted if n not in latest or latest[n][1]]

    def read_for_launch(self, session: Session, job: Job, department: str | None) -> dict[str, str]:
        """The current value of each secret `job` names, decrypted, with one `secret.read` audit
        entry each in `session`'s transaction (the caller commits before it launches).
        Raises `Invalid` (SECRET_NOT_FOUND) when one was deleted since the submit."""
        out: dict[str, str] = {}
        cipher = self.cipher()
        for name in job.secrets or ():
            versions = _versions(session, job.project_id, name)
            if not versions or versions[-1].deleted:
                raise Invalid(f"secret {name!r} no longer exists in project {job.project_id!r}",
                              code="SECRET_NOT_FOUND", details={"secret": name})
            cur = versions[-1]
            try:
                out[name] = cipher.decrypt(cur.ciphertext.encode()).decode()
            except InvalidToken:
                raise SecretsUnavailable(f"secret {name!r} cannot be decrypted with the configured key(s)") from None
            audit.record(session, SYSTEM, action="secret.read", target_kind="secret",
                         target_id=f"{job.project_id}/{name}",
                         after={"job": job.id, "attempt": job.attempt, "version": cur.version},
                         department=department, project=job.project_id, clock=self.clock)
        return out


def _versions(s: Session, project: str, name: str) -> list[ProjectSecret]:
    return list(s.execute(select(ProjectSecret).where(ProjectSecret.project_id == project,
                                                      ProjectSecret.name == name)
                          .order_by(ProjectSecret.version)).scalars().all())


def _public(project: str, name: str, versions: list[ProjectSecret]) -> dict:
    return {"project": project, "name": name, "version": versions[-1].version,
            "created_at": versions[0].created_at, "updated_at": versions[-1].created_at,
            "versions": [{"version": v.version, "created_at": v.created_at, "created_by": v.created_by}
                         for v in versions]}

