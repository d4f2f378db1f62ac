"""`create_app()`: build the FastAPI app around one `Services` object.

The order is the point: settings and the engine, then every service with authorization
first (`broker.services.wiring.build_services`), then the app, its middleware and routers.
Nothing is attached to a service after it is built, and every way of assembling the broker
(`broker up`, the benchmark servers, the tests, a bare `create_app()`) comes through here.

Nothing runs at import time. `start_background=False` gives an app without periodic tasks
(API tests, benchmark servers); the group-commit writer always runs (it is part of the submit
path). `app.state.services` is the only thing on the app's state.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI

from broker.api import catalog as catalog_routes
from broker.api import dashboards as dashboard_routes
from broker.api import data as data_routes
from broker.api import docs as docs_routes
from broker.api import jobs as job_routes
from broker.api import observability as observability_routes
from broker.api import reports as report_routes
from broker.api import services as service_routes
from broker.api.svc_proxy import PREFIX as SVC_PREFIX, ServiceProxy

from broker.api import ops as ops_routes
from broker.api import telemetry as telemetry_routes
from broker.api.admin import audit as audit_routes
from broker.api.admin import quotas as quota_routes
from broker.api.admin import settings as settings_routes
from broker.api.admin import tenancy as tenancy_routes
from broker.api.admin import tokens as token_routes
from broker.api.errors import install_handlers
from broker.api.fastpath import SubmitFastPath
from broker.api.json import JSON
from broker.api.request_shape import RequestShape
from broker.auth.limits import BodySizeLimit
from broker.auth.ratelimit import RateLimitMiddleware, TokenBucketLimiter
from broker import failpoints
from broker.db import make_engine
from broker.ports import Cluster, Executor
from broker.services.wiring import build_services
from broker.settings import Settings
from broker.tasks import build_tasks

ROUTERS = (job_routes.router, catalog_routes.router, observability_routes.router, telemetry_routes.router,
           token_routes.router, tenancy_routes.router, quota_routes.router, audit_routes.router,
           settings_routes.router, docs_routes.router, report_routes.router, ops_routes.router,
           data_routes.router, service_routes.router, dashboard_routes.router)


def create_app(settings: Settings | None = None, executor: Executor | None = None, start_background: bool = True,
               engine=None, cluster: Cluster | None = None, service_limiter=None,
               service_metrics=None) -> FastAPI:
    """`service_limiter`: the buckets of the service entry point's rate limits when they are
    shared with other processes (`broker.entry.EntryWorkers.limiter`); None: this process's own.
    `service_metrics`: other processes' service request samples to add on /metrics
    (`broker.entry.EntryWorkers.samples`)."""
    settings = settings or Settings()
    failpoints.arm(settings.failpoint)
    own_engine = engine is None
    engine = engine or make_engine(settings)
    services = build_services(settings, engine, executor, cluster=cluster)
    if service_metrics is not None and services.service_router is not None:
        services.service_router.extra_samples = service_metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tasks = build_tasks(services) if start_background else None
        if tasks is not None:
            tasks.start()  # first: a second broker on one SQLite file stops here
        await services.jobs.writer.start()
        # The heap built so far (imports: Ray, SQLAlchemy, FastAPI; the app) lives as long as
        # the process: keep it out of the collector's full passes, which otherwise traverse it
        # (~200,000 objects, 70-100 ms with the event loop stopped: every request through the
        # service entry point waited that long, a few times a minute under load).
        gc.freeze()
        try:
            yield
        finally:
            if tasks is not None:
                tasks.stop()
            await services.jobs.writer.stop()
            services.telemetry.close()
            if services.service_controller is not None:
                services.service_controller.close()
            if own_engine:
                engine.dispose()

    entry = ServiceProxy(services=services, max_body_bytes=settings.service_max_body_bytes, limiter=service_limiter)
    app = BrokerApp(entry, title="Compute Broker", version="0.1.0", lifespan=lifespan,
                    default_response_class=JSON, docs_url=None, redoc_url=None,  # docs_routes: no CDN
                    description="Queue, quotas, fair share and preemption for GPU jobs on Ray.")
    app.state.services = services
    install_handlers(app)
    if settings.submit_fast_path:  # inside BodyLimit: the hot submit skips routing and dependencies
        app.add_middleware(SubmitFastPath, services=services, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestShape)  # control characters in path/query -> 422, non-JSON bodies -> 415
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # 413 also for chunked bodies
    if settings.rate_limit_per_s > 0:  # outermost: a throttled request costs no auth and no body read
        app.add_middleware(RateLimitMiddleware, limiter=TokenBucketLimiter(settings.rate_limit_per_s,
                                                                            settings.rate_limit_burst))
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(observability_routes.HttpMetrics, metrics=services.overview.process,
                       static_paths=frozenset(r.path for rt in ROUTERS for r in rt.routes if "{" not in r.path))
    return app


class BrokerApp(FastAPI):
    """FastAPI, except that a service's entry point (`/svc/...`) goes straight to the service
    proxy: it skips FastAPI's own layers (telemetry hooks, error and exception middleware), the
    API's middleware (metrics, body and shape checks, the API's rate limiter: the proxy has its
    own limits) and routing. These layers cost more CPU than the proxy itself (`broker bench
    service`); the proxy answers its own errors (a code, never a traceback)."""

    def __init__(self, entry: ServiceProxy, **kwargs) -> None:
        super().__init__(**kwargs)
        self._entry = entry

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(SVC_PREFIX):
            return await self._entry(scope, receive, send)
        await super().__call__(scope, receive, send)
