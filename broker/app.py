"""`create_app()`: build the FastAPI app and wire settings, DB, services and the executor.

Nothing here runs at import time. `start_background=False` gives an app without periodic
tasks (API tests); the group-commit writer always runs (it is part of the submit path).

app.state carries: settings, engine, auth (TokenAuth), jobs (JobService), logs (LogService),
catalog (CatalogService), executor (or None), and two optional hooks set by the scheduling
loop: `on_submit()` (wake up after a committed submit) and `on_cancel()` (after a cancel
request on a running job; falls back to on_submit).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from broker.api.json import JSON

from broker.api import catalog as catalog_routes
from broker.api import jobs as job_routes
from broker.api import observability as observability_routes
from broker.api.fastpath import SubmitFastPath
from broker.api.admin_wiring import install_admin
from broker.security.limits import BodySizeLimit
from broker.security.ratelimit import RateLimitMiddleware, TokenBucketLimiter
from broker.db import make_engine
from broker.errors import install_handlers
from broker.services.auth import TokenAuth
from broker.services.catalog import CatalogService
from broker.services.jobs import JobService
from broker.services.logs import LogService
from broker.services.accounting import fill_ledger_usage
from broker.services.checkpoints import remove_finished_checkpoints
from broker.services.scheduling import SchedulingLoop
from broker.settings import Settings
from broker.tasks import Tasks
from broker.telemetry.tasks import install as install_telemetry
from broker.services.admin_audit import seal_pending
from broker.telemetry.tasks import register as register_telemetry


def make_tasks(settings: Settings, engine, executor, on_nodes_changed=None):
    """The periodic tasks (broker.tasks), not yet started: the scheduling loop and the
    reconciler when there is an executor; telemetry tasks are added by the caller."""
    loop = SchedulingLoop(settings, engine, executor, on_nodes_changed=on_nodes_changed) if executor else None
    tasks = Tasks(loop, executor, cycle_interval_s=settings.cycle_interval_s,
                  reconcile_interval_s=settings.reconcile_interval_s)
    tasks.add_interval(lambda: fill_ledger_usage(engine, time.time()), 60.0, "accounting.ledger")
    tasks.add_interval(lambda: seal_pending(engine), 2.0, "audit.seal_job_submits")
    tasks.add_interval(lambda: remove_finished_checkpoints(engine, settings.checkpoint_root_dir), 30.0,
                       "checkpoints.cleanup")
    return tasks


def create_app(settings: Settings | None = None, executor=None, start_background: bool = True,
               engine=None) -> FastAPI:
    settings = settings or Settings()
    own_engine = engine is None
    engine = engine or make_engine(settings)
    jobs = JobService(settings, engine, executor=executor)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await jobs.writer.start()
        tasks = None
        if start_background:
            tasks = make_tasks(settings, engine, executor, on_nodes_changed=jobs.catalog_changed)
            register_telemetry(tasks, app.state.telemetry)
            app.state.tasks = tasks
            if tasks.loop is not None:
                app.state.on_submit = tasks.wake
                app.state.on_cancel = tasks.wake
            tasks.start()
        try:
            yield
        finally:
            if tasks is not None:
                app.state.on_submit = app.state.on_cancel = None
                tasks.stop()
            await jobs.writer.stop()
            app.state.telemetry.close()
            if own_engine:
                engine.dispose()

    app = FastAPI(title="Compute Broker", version="0.1.0", lifespan=lifespan,
                  default_response_class=JSON,
                  description="Queue, quotas, fair share and preemption for GPU jobs on Ray.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.executor = executor
    app.state.start_background = start_background
    app.state.auth = TokenAuth(engine, ttl_s=settings.token_cache_ttl_s)
    app.state.jobs = jobs
    app.state.logs = LogService(jobs)
    app.state.catalog = CatalogService(engine)
    app.state.on_submit = None
    app.state.on_cancel = None
    app.state.tasks = None
    install_handlers(app)
    if settings.submit_fast_path:  # inside BodyLimit: the hot submit skips routing and dependencies
        app.add_middleware(SubmitFastPath, state=app.state, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # 413 also for chunked bodies
    if settings.rate_limit_per_s > 0:  # outermost: a throttled request costs no auth and no body read
        app.add_middleware(RateLimitMiddleware, limiter=TokenBucketLimiter(settings.rate_limit_per_s,
                                                                            settings.rate_limit_burst))
    app.include_router(job_routes.router)
    app.include_router(catalog_routes.router)
    app.include_router(observability_routes.router)
    install_telemetry(app)
    install_admin(app)  # issue 4: authorization, tenancy/token/quota/settings/audit routes, OIDC
    return app
