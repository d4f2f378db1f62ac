"""`install_admin(app)`: wire the security layer into an app built by `create_app()`.

Adds to app.state: `authz` (Authz), `token_admin`, `tenancy_admin`, `quota_admin`, `oidc`
(None unless `oidc_issuer` is set) and `audit_job` (records job actions); hands `authz` and a
`SubmitGuard` to the job service (authorization of every job read/cancel/log/list and of
submit); includes the token, tenancy, quota/usage and audit routers. Kept out of
`create_app()` so the service core and the security layer can be developed apart;
`create_app()` calls it once.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import Session

from broker.api.admin import audit as admin_audit, quotas as admin_quotas, settings as admin_settings
from broker.api.admin import tenancy as admin_tenancy, tokens as admin_tokens
from broker.services.admin import audit as audit_service
from broker.auth import oidc_authn
from broker.services.admin.quotas import QuotaAdmin
from broker.services.admin.settings import SettingsAdmin
from broker.services.admin.tenancy import TenancyAdmin
from broker.services.admin.tokens import TokenAdmin
from broker.auth.authz import Authz
from broker.auth.guard import SubmitGuard


def install_admin(app: FastAPI) -> None:
    state = app.state
    engine = state.engine
    authz = Authz(engine)
    state.authz = authz

    def on_quota_change() -> None:
        jobs_svc = getattr(state, "jobs", None)  # pools and nodes changed: the submit checks' caches too
        if jobs_svc is not None:
            jobs_svc.catalog_changed()
        hook = getattr(state, "on_submit", None)  # wake the scheduler: entitlements changed
        if hook is not None:
            hook()

    settings_admin = SettingsAdmin(engine, authz, state.settings)
    guard = SubmitGuard(state.settings, engine, authz, admin_settings=settings_admin.effective)
    settings_admin.on_change = guard.invalidate
    state.settings_admin = settings_admin
    jobs = getattr(state, "jobs", None)
    if jobs is not None:
        jobs.authz = authz
        jobs.guard = guard
    state.submit_guard = guard
    state.token_admin = TokenAdmin(engine, authz, getattr(state, "auth", None))
    state.tenancy_admin = TenancyAdmin(engine, authz, on_change=guard.invalidate)
    state.quota_admin = QuotaAdmin(engine, authz, on_change=on_quota_change)
    state.oidc = oidc_authn.from_settings(state.settings, authz, engine)
    state.audit_job = _audit_job
    for r in (admin_tokens.router, admin_tenancy.router, admin_quotas.router, admin_audit.router,
              admin_settings.router):
        app.include_router(r)


def _audit_job(request, principal, action: str, job: dict) -> None:
    """Record a job action (cancel) in the audit log, in its own short transaction."""
    from broker.api.admin_deps import caller

    c = caller(request, principal)
    authz = request.app.state.authz
    project = job.get("project")
    with Session(request.app.state.engine) as s:
        audit_service.record(s, c, action=action, target_kind="job", target_id=job.get("id", ""),
                             after={"status": job.get("status"), "cancel_requested_at": job.get("cancel_requested_at")},
                             department=authz.project_department(project) if project else None, project=project)
        s.commit()
