"""`build_services()`: every use case of one app, constructed once, authorization first.

Why one builder: each way of assembling the broker (`broker up`, the benchmark servers, the
test fixtures, a bare `create_app()`) goes through `create_app()`, which calls this, so there
is exactly one place that decides what a service is given. `Authz` and the `SubmitGuard` are
built before any service and passed to each constructor that needs them as a required
argument: no service exists without its authorization, and nothing is attached afterwards.

Invariant: `Services` is immutable; the routes reach it through typed dependencies
(`broker.api.deps`), the periodic tasks through `broker.tasks.build_tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sqlalchemy.engine import Engine

from broker.auth import oidc_authn
from broker.auth.authn import Authenticator, TokenAuth
from broker.auth.authz import Authz
from broker.auth.guard import SubmitGuard
from broker.auth.cluster_authn import ClusterIdentityAuth
from broker.ports import Cluster, Executor
from broker.services.admin.audit import AuditLog
from broker.services.admin.quotas import QuotaAdmin
from broker.services.admin.settings import SettingsAdmin
from broker.services.admin.tenancy import TenancyAdmin
from broker.services.admin.tokens import TokenAdmin
from broker.services.capacity_runs import CapacityService

from broker.services import storage
from broker.services.catalog import CatalogService
from broker.services.cluster_sync import ClusterSync
from broker.services.jobs import JobService
from broker.services.leadership import Leadership, leadership_for
from broker.services.idle import IdleService
from broker.services.logs import LogService
from broker.services.notify import NotifyService
from broker.services.metrics import ProcessMetrics
from broker.services.overview import OverviewService
from broker.services.reports import ReportService
from broker.services.scheduling import SchedulingLoop
from broker.services.datasets import DatasetService
from broker.services.secrets import SecretService
from broker.services import service_queries
from broker.services.service_controller import ServiceController
from broker.services.service_load import LoadPublisher, RemoteLoad, new_broker_id
from broker.services.service_router import ServiceRouter
from broker.services.services import ServiceManager
from broker.services.telemetry.reads import TelemetryReads
from broker.services.telemetry.service import TelemetryConfig, TelemetryService
from broker.services.wakeup import Wakeup
from broker.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    executor: Executor | None
    authz: Authz
    authn: Authenticator
    guard: SubmitGuard
    wakeup: Wakeup
    leader: Leadership  # started by the periodic tasks; the API of every broker serves regardless
    loop: SchedulingLoop | None  # None without an executor: nothing to schedule onto
    jobs: JobService
    logs: LogService
    catalog: CatalogService
    overview: OverviewService
    telemetry: TelemetryService
    telemetry_reads: TelemetryReads
    audit: AuditLog
    tokens: TokenAdmin
    tenancy: TenancyAdmin
    quotas: QuotaAdmin
    admin_settings: SettingsAdmin
    reports: ReportService  # usage reports, statements, prices
    capacity: CapacityService  # trace export and what-if replays (background runs)
    idle: IdleService
    notify: NotifyService
    secrets: SecretService
    datasets: DatasetService
    cluster_sync: ClusterSync | None = None  # cluster mode (Kubernetes) only
    service_manager: ServiceManager | None = None  # inference services (broker.services.services)
    service_router: ServiceRouter | None = None  # the /svc proxy's ready replicas and metrics
    service_controller: ServiceController | None = None  # None without an executor
    # publishes this broker's requests in flight per service (every broker; None on SQLite,
    # where only one broker runs)
    service_load: LoadPublisher | None = None
    broker_id: str = ""


def build_services(settings: Settings, engine: Engine, executor: Executor | None = None,
                   cluster: Cluster | None = None) -> Services:
    authz = Authz(engine)
    tokens = TokenAuth(engine, ttl_s=settings.token_cache_ttl_s)
    identity = oidc_authn.from_settings(settings, authz, engine)
    if cluster is not None:  # node agents' projected ServiceAccount tokens, in front of OIDC
        identity = ClusterIdentityAuth(cluster.review_token, namespace=settings.k8s_agent_namespace,
                                       service_account=settings.k8s_agent_service_account, fallback=identity)
    authn = Authenticator(tokens, identity)
    wakeup = Wakeup()
    if executor is not None and hasattr(executor, "set_on_end"):  # optional: an EndNotifier
        executor.set_on_end(wakeup.ended)  # an attempt's end wakes the loop (no-op until it runs)
    admin_settings = SettingsAdmin(engine, authz, settings, on_change=lambda: guard.invalidate())
    guard = SubmitGuard(settings, engine, authz, admin_settings=admin_settings.effective)
    secrets = SecretService(settings, engine, authz)
    datasets = DatasetService(engine, authz)
    jobs = JobService(settings, engine, authz=authz, guard=guard, executor=executor, wakeup=wakeup,
                      secrets=secrets, datasets=datasets)

    def quotas_changed() -> None:
        jobs.catalog_changed()  # pools and nodes changed: the submit checks' caches too
        wakeup.submitted()  # entitlements changed: let the scheduler look again

    leader = leadership_for(settings, engine)
    process = ProcessMetrics(engine)  # this process's counters and histograms (/metrics)
    cluster_sync = ClusterSync(engine, cluster, autoscale=settings.k8s_autoscale, images=settings.image_keys(),
                               on_nodes_changed=jobs.catalog_changed) if cluster is not None else None
    loop = SchedulingLoop(settings, engine, executor, on_nodes_changed=jobs.catalog_changed, leader=leader,
                          on_tick=process.on_tick,
                          pending_note=cluster_sync.note if cluster_sync else None,
                          secrets=secrets) if executor else None
    service_router = ServiceRouter(process.registry, load=partial(service_queries.ready_endpoints_of, engine))
    caller_limit = ((settings.service_rate_limit_per_caller_per_s, settings.service_rate_limit_per_caller_burst)
                    if settings.service_rate_limit_per_caller_per_s > 0 else None)
    service_manager = ServiceManager(engine, authz, jobs, wakeup=wakeup, caller_limit=caller_limit)
    broker_id = new_broker_id()
    # several brokers share only a PostgreSQL database; the entry point's worker processes
    # (`broker.entry`) are brokers of their own for the autoscaler, on SQLite too
    several = engine.dialect.name != "sqlite" or settings.service_proxy_workers > 0
    service_load = LoadPublisher(engine, service_router, broker_id) if several else None
    service_controller = ServiceController(
        engine, executor=executor, router=service_router, wakeup=wakeup, grace_s=loop.grace_s,
        default_cap=settings.default_max_pending,
        remote_load=RemoteLoad(engine, broker_id) if several else None) if loop is not None else None
    return Services(
        settings=settings, engine=engine, executor=executor, authz=authz, authn=authn, guard=guard,
        wakeup=wakeup, leader=leader, loop=loop, jobs=jobs,
        logs=LogService(jobs, retention_days=settings.log_retention_days),
        catalog=CatalogService(engine, authz, container_runtime=settings.container_runtime_available),
        overview=OverviewService(engine, authz, loop=loop, max_age_s=settings.overview_max_age_s, leader=leader,
                                 process=process),
        telemetry=TelemetryService(engine, TelemetryConfig.from_settings(settings)),
        telemetry_reads=TelemetryReads(engine, authz), audit=AuditLog(engine, authz),
        tokens=TokenAdmin(engine, authz, tokens), tenancy=TenancyAdmin(engine, authz, on_change=guard.invalidate),
        quotas=QuotaAdmin(engine, authz, on_change=quotas_changed,
                          results=partial(storage.measure, settings)), admin_settings=admin_settings,
        reports=ReportService(engine, authz), capacity=CapacityService(engine, authz, settings.policy),
        idle=IdleService(engine, authz), notify=NotifyService(engine, authz, settings),
        secrets=secrets, datasets=datasets, cluster_sync=cluster_sync,
        service_manager=service_manager, service_router=service_router, service_controller=service_controller,
        service_load=service_load, broker_id=broker_id,
    )
