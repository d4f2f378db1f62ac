"""FastAPI dependencies: the caller, the audit `Caller` of a request, and the services.

Every route takes what it needs as a typed parameter (`User`, `Jobs`, `Audit`, ...): the
services come from the one `Services` object `create_app()` built, so a route can neither
reach a service that was not built nor one built without its authorization.

The audit source address is the TCP peer unless the peer is one of the trusted proxies named
in the settings (`security_trusted_proxies`, default none), in which case the rightmost
untrusted ``X-Forwarded-For`` entry is taken. The request id is the client's ``X-Request-ID``
when it is short and printable, else a fresh one.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from broker.auth.audit import client_address
from broker.auth.authn import Principal
from broker.services.admin.audit import AuditLog, Caller
from broker.services.admin.quotas import QuotaAdmin
from broker.services.admin.settings import SettingsAdmin
from broker.services.admin.tenancy import TenancyAdmin
from broker.services.admin.tokens import TokenAdmin
from broker.services.capacity_runs import CapacityService
from broker.services.catalog import CatalogService
from broker.services.jobs import JobService
from broker.services.logs import LogService
from broker.services.overview import OverviewService
from broker.services.reports import ReportService

from broker.services.datasets import DatasetService
from broker.services.secrets import SecretService
from broker.services.telemetry.reads import TelemetryReads
from broker.services.telemetry.service import TelemetryService
from broker.services.wiring import Services


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


async def principal(request: Request, svc: ServicesDep) -> Principal:
    """Authenticate the bearer token (see `Authenticator` for the order)."""
    return await svc.authn.principal(request.headers.get("authorization"))


async def user(request: Request, svc: ServicesDep) -> Principal:
    """User routes refuse agent tokens (those may only push telemetry for their node)."""
    return await svc.authn.user(request.headers.get("authorization"))


User = Annotated[Principal, Depends(user)]
AnyPrincipal = Annotated[Principal, Depends(principal)]


def origin(settings, peer: str | None, forwarded_for: str | None, request_id: str | None) -> tuple[str | None, str]:
    """(source address, request id) as the audit log records them: X-Forwarded-For only from a
    trusted proxy; a missing or unprintable X-Request-Id gets a fresh one."""
    proxies = getattr(settings, "security_trusted_proxies", ()) or ()
    source = client_address(peer, forwarded_for, proxies)
    if not request_id or len(request_id) > 64 or not request_id.isprintable():
        request_id = secrets.token_hex(8)
    return source, request_id


def request_origin(request: Request, svc: ServicesDep) -> tuple[str | None, str]:
    return origin(svc.settings, request.client.host if request.client else None,
                  request.headers.get("x-forwarded-for"), request.headers.get("x-request-id"))


Origin = Annotated[tuple[str | None, str], Depends(request_origin)]


def caller(principal: User, where: Origin, svc: ServicesDep) -> Caller:
    source, rid = where
    pp = svc.authz.principal(principal)
    return Caller(token_id=principal.token_id, subject=pp.subject, kind=principal.kind, name=principal.name,
                  source=source, request_id=rid, policy=pp)


CallerDep = Annotated[Caller, Depends(caller)]



def _service(name: str):
    """A dependency answering one field of `Services` (typed by the alias that uses it)."""
    def dependency(request: Request):
        return getattr(request.app.state.services, name)
    dependency.__name__ = name
    return dependency


Jobs = Annotated[JobService, Depends(_service("jobs"))]
Logs = Annotated[LogService, Depends(_service("logs"))]
Catalog = Annotated[CatalogService, Depends(_service("catalog"))]
Overview = Annotated[OverviewService, Depends(_service("overview"))]
Telemetry = Annotated[TelemetryService, Depends(_service("telemetry"))]
TelemetryRead = Annotated[TelemetryReads, Depends(_service("telemetry_reads"))]
Audit = Annotated[AuditLog, Depends(_service("audit"))]
Tokens = Annotated[TokenAdmin, Depends(_service("tokens"))]
Tenancy = Annotated[TenancyAdmin, Depends(_service("tenancy"))]
Quotas = Annotated[QuotaAdmin, Depends(_service("quotas"))]
AdminSettings = Annotated[SettingsAdmin, Depends(_service("admin_settings"))]
Reports = Annotated[ReportService, Depends(_service("reports"))]
Capacity = Annotated[CapacityService, Depends(_service("capacity"))]

Secrets = Annotated[SecretService, Depends(_service("secrets"))]
Datasets = Annotated[DatasetService, Depends(_service("datasets"))]
