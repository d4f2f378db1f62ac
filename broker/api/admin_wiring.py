"""`install_admin(app)`: wire the security layer into an app built by `create_app()`.

Adds to app.state: `authz` (Authz), `token_admin`, `tenancy_admin`, `quota_admin`; includes the
token, tenancy, quota/usage and audit routers. Kept out of `create_app()` so the service core
and the security layer can be developed apart; `create_app()` calls it once.
"""

from __future__ import annotations

from fastapi import FastAPI

from broker.api import admin_audit, admin_quotas, admin_tenancy, admin_tokens
from broker.services.admin_quotas import QuotaAdmin
from broker.services.admin_tenancy import TenancyAdmin
from broker.services.admin_tokens import TokenAdmin
from broker.services.authz import Authz


def install_admin(app: FastAPI) -> None:
    state = app.state
    engine = state.engine
    authz = Authz(engine)
    state.authz = authz

    def on_quota_change() -> None:
        hook = getattr(state, "on_submit", None)  # wake the scheduler: entitlements changed
        if hook is not None:
            hook()

    state.token_admin = TokenAdmin(engine, authz, getattr(state, "auth", None))
    state.tenancy_admin = TenancyAdmin(engine, authz)
    state.quota_admin = QuotaAdmin(engine, authz, on_change=on_quota_change)
    for r in (admin_tokens.router, admin_tenancy.router, admin_quotas.router, admin_audit.router):
        app.include_router(r)
