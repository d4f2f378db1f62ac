"""Runtime settings admins change through the API: the image registry allow-list and the
maximum runtime per workload class.

Each setting has a default from `Settings` (`image_allow_prefixes`; no runtime cap) and may be
overridden by a row in `admin_settings`. Every setting carries an ETag (``"s-<key>.<version>"``,
version 0 = still the default); a PUT needs If-Match (428 without, 412 stale) and is a
compare-and-set. Values are validated before they are stored (prefixes must name a registry;
runtimes are positive and at most 30 days). `SubmitGuard` reads the effective values through a
short TTL cache that `on_change` clears.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from sqlalchemy import and_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from broker.errors import Invalid, NotFound, PreconditionFailed
from broker.models import AdminSetting
from broker.auth.limits import normalize_prefixes
from broker.auth.policy import Action
from broker.ports import Clock
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.services.admin.tenancy import matches
from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz

MAX_RUNTIME_CAP_S = 30 * 24 * 3600.0
KEYS = ("image_allow_prefixes", "max_runtime_s.operation", "max_runtime_s.innovation")


def _validate(key: str, value: Any) -> dict:
    if key == "image_allow_prefixes":
        prefixes = value.get("prefixes") if isinstance(value, dict) else None
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes) or len(prefixes) > 100:
            raise Invalid("value must be {\"prefixes\": [\"registry.example/team/\", ...]}", code="BAD_SETTING")
        try:
            normalize_prefixes(prefixes)
        except ValueError as e:
            raise Invalid(str(e), code="BAD_SETTING") from None
        return {"prefixes": prefixes}
    if key.startswith("max_runtime_s."):
        seconds = value.get("seconds") if isinstance(value, dict) else None
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 < seconds <= MAX_RUNTIME_CAP_S):
            raise Invalid(f"seconds must be a number in (0, {MAX_RUNTIME_CAP_S:.0f}] or null (no cap)",
                          code="BAD_SETTING")
        return {"seconds": seconds}
    raise NotFound(f"setting {key!r} not found; settings: {', '.join(KEYS)}", code="SETTING_NOT_FOUND")


class SettingsAdmin:
    def __init__(self, engine, authz: Authz, settings: Any, *, clock: Clock = time.time,
                 on_change: Callable[[], None] | None = None) -> None:
        self.engine, self.authz, self.settings, self.clock, self.on_change = engine, authz, settings, clock, on_change

    def defaults(self) -> dict[str, dict]:
        prefixes = getattr(self.settings, "image_allow_prefixes", None)
        return {"image_allow_prefixes": {"prefixes": list(prefixes if prefixes is not None else ["localhost/"])},
                "max_runtime_s.operation": {"seconds": None}, "max_runtime_s.innovation": {"seconds": None}}

    def effective(self) -> dict[str, dict]:
        """Current values (DB overrides over defaults); no authorization (internal use)."""
        out = self.defaults()
        with Session(self.engine) as s:
            for row in s.exec(select(AdminSetting)).all():
                if row.key in out and row.value is not None:
                    out[row.key] = row.value
        return out

    def _public(self, key: str, row: AdminSetting | None) -> dict:
        version = row.version if row is not None else 0
        value = row.value if row is not None and row.value is not None else self.defaults()[key]
        return {"key": key, "value": value, "version": version, "etag": f'"s-{key}.{version}"',
                "default": row is None}

    def list(self, p: AuthPrincipal) -> dict:
        self.authz.require(p, Action.NODE_READ)  # any user may read what is allowed
        with Session(self.engine) as s:
            rows = {r.key: r for r in s.exec(select(AdminSetting)).all()}
        return {"items": [self._public(k, rows.get(k)) for k in KEYS]}

    def put(self, p: AuthPrincipal, caller: Caller, key: str, value: Any, if_match: str | None) -> dict:
        self.authz.require(p, Action.SETTINGS_ADMIN)
        clean = _validate(key, value)
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.get(AdminSetting, key)
            current = self._public(key, row)
            if if_match is None:
                raise Invalid("updates need an If-Match header with the setting's ETag", code="IF_MATCH_REQUIRED",
                              status=428)
            if not matches(if_match, current["etag"]):
                raise PreconditionFailed("the setting changed since you read it; GET it again and retry",
                                         code="STALE_ETAG", details={"current_etag": current["etag"]})
            if row is None:
                s.add(AdminSetting(key=key, value=clean, version=1, updated_at=self.clock()))
                try:
                    s.flush()
                except IntegrityError:
                    s.rollback()
                    raise PreconditionFailed("the setting changed since you read it", code="STALE_ETAG") from None
            else:
                t = AdminSetting.__table__
                res = s.execute(update(t).where(and_(t.c.key == key, t.c.version == row.version))
                                .values(value=clean, version=row.version + 1, updated_at=self.clock()))
                if res.rowcount != 1:
                    s.rollback()
                    raise PreconditionFailed("the setting changed since you read it", code="STALE_ETAG")
                s.expire_all()
            row = s.get(AdminSetting, key)
            body = self._public(key, row)
            audit.record(s, caller, action="setting.update", target_kind="setting", target_id=key,
                         before=current["value"], after=clean, clock=self.clock)
            s.commit()
        if self.on_change is not None:
            self.on_change()
        return body
