"""The broker's one typed settings object (pydantic-settings, prefix ``BROKER_``).

Why one object: every knob lives in one place, is validated once, and is passed down
explicitly. Nothing in the broker reads the environment at import time; `Settings()` is
built in `create_app()` / `main()` (or by a test) and handed to whatever needs it.

Invariant: `database_url` is always set after construction; when not given it is the SQLite
file `<data_dir>/broker.db`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

IMAGE_KEY = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")  # a label value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BROKER_", extra="ignore")

    data_dir: Path = Path(".broker")
    database_url: str = ""  # "" -> sqlite:///<data_dir>/broker.db
    ray_address: str | None = None  # None: start a local Ray head

    host: str = "127.0.0.1"
    port: int = 8000

    cycle_interval_s: float = 1.0
    reconcile_interval_s: float = 5.0
    grace_period_s: float = 30.0
    # The grace a stopped job gets between its notice + SIGTERM and SIGKILL, by where it runs:
    # keys "pool/class", "pool" or "class" (e.g. {"operation/innovation": 10, "innovation": 120}),
    # the most specific wins, else grace_period_s. See `grace_for`.
    grace_by: dict[str, float] = {}
    # Checkpointable jobs keep state in <checkpoint_root>/<project>/<job id> across attempts
    # (default <data_dir>/checkpoints). Set it to a path every node mounts (NFS, CephFS...) and
    # checkpoint_root_shared=true so that a job resumes wherever it is placed next.
    checkpoint_root: Path | None = None
    checkpoint_root_shared: bool = False
    # Job logs (<data_dir>/logs/<job>/<attempt>/worker-<rank>.log): each worker's file is capped
    # (head and tail kept, a marker line between; 0 = no cap) and a job's logs are deleted this
    # many days after it ended (0 = kept forever). See docs/OPERATIONS.md.
    log_max_bytes_per_worker: int = Field(default=100 * 1024 * 1024, ge=0)
    log_retention_days: float = Field(default=30.0, ge=0)
    heartbeat_timeout_s: float = 60.0
    starting_timeout_s: float = 120.0  # a job stuck in STARTING longer than this is repaired
    lost_node_hold_s: float = 60.0  # a node that lost a running worker gets no new work this long

    allow_process_runtime: bool = False
    # False where the nodes have no container runtime (`broker up` on a machine without podman):
    # container jobs are then refused at submit (422 CONTAINER_RUNTIME_UNAVAILABLE), not failed at launch.
    container_runtime_available: bool = True
    scheduling_policy: str = "fair-backfill-preempt"  # a name from scheduler.model.POLICIES
    # Fields of that preset to change, e.g. {"reclaim_after_s": 600} (scheduler.model.Policy);
    # an unknown field is refused at start.
    scheduling_policy_overrides: dict[str, float | bool | int | None] = {}
    max_body_bytes: int = 256 * 1024
    # A service entry point's request body limit (/svc/...: bodies above 64 KiB stream to the replica).
    service_max_body_bytes: int = 1024 * 1024 * 1024
    page_size_max: int = 500  # command/env limits live in broker.schemas (they are in the OpenAPI doc)

    token_cache_ttl_s: float = 30.0

    # Security: image registries jobs may use (path-boundary prefixes; admins can
    # override at runtime), per-token rate limit (0 disables), proxies whose X-Forwarded-For the
    # audit log believes, optional OIDC (issuer + audience + JWKS; groups claim -> roles).
    image_allow_prefixes: list[str] = ["localhost/"]
    rate_limit_per_s: float = 1500.0
    rate_limit_burst: int = 3000
    # The service entry point's default per-caller limit (a token or API key, per service; a
    # service's `rate_limit` overrides it and may add a limit for the whole service; 0 disables).
    service_rate_limit_per_caller_per_s: float = 1500.0
    service_rate_limit_per_caller_burst: int = 3000
    # Service entry point worker processes (`broker.entry`): N processes, each with its own
    # event loop, serve `/svc/...` on `service_proxy_port` (SO_REUSEPORT: the kernel spreads
    # connections over them), beside the broker's own port (which keeps serving `/svc/` too).
    # Rate limits are shared between them (shared memory), loads reach the autoscaler through
    # `service_loads`. 0: no workers, no extra port (the entry point is the broker process only).
    service_proxy_workers: int = 0
    service_proxy_port: int = 0  # 0: the API port + 1
    security_trusted_proxies: list[str] = []
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks_url: str = ""
    oidc_groups_claim: str = "groups"
    oidc_group_prefix: str = "cb"
    oidc_group_map: dict[str, list[str]] = {}
    idempotency_ttl_s: float = 24 * 3600.0

    # Group commit (submit hot path): how many jobs one transaction may carry and how long
    # the writer waits for more once the first arrives (0: commit what is there at once).
    submit_batch_max: int = 256
    submit_batch_wait_s: float = 0.0
    submit_writers: int = 2  # transactions in flight at once (PostgreSQL; SQLite uses 1)
    db_pool_size: int = 10
    # PostgreSQL: how long a new connection may take, and a request may wait for a pooled one,
    # before the request gives up with 503 DATABASE_UNAVAILABLE (a dead server fails requests
    # quickly instead of holding them open).
    db_connect_timeout_s: int = 5
    db_pool_timeout_s: float = 10.0
    submit_fast_path: bool = True  # POST /api/v1/jobs as a pure ASGI handler (broker.api.fastpath)

    # Pending jobs a project may have queued at once unless its `max_pending` says otherwise
    # (admins set it per project); a submit beyond it gets 429 PENDING_CAP with Retry-After.
    default_max_pending: int = Field(1000, ge=0)

    # The operations overview and /metrics serve one shared snapshot at most this old (0: fresh
    # on every request).
    overview_max_age_s: float = Field(2.0, ge=0)

    # Hospital data, secrets and job isolation (issue 13; docs/SECURITY.md).
    # Secrets are Fernet-encrypted at rest: `secrets_key` (one key, or several comma-separated:
    # the first encrypts, all decrypt, for key rotation) or else the key file (default
    # <data_dir>/secrets.key, one key a line; `broker up` creates it mode 0600 when missing).
    secrets_key: str = ""
    secrets_key_file: Path | None = None
    # Where runners write a job's secret files (a tmpfs on every node: values never reach a disk).
    secrets_tmpfs_dir: Path = Path("/dev/shm")
    # Container jobs: own network namespace, no capabilities, no-new-privileges, read-only root
    # (unless the job asks), CPU/memory/pids limits as admitted. False: the host network, as before.
    job_isolation: bool = True
    job_pids_limit: int = Field(4096, ge=0)  # 0: no pids limit
    no_egress_pools: list[str] = []  # pools whose jobs get no network beyond their own gang
    # The addresses of the pooled job namespaces on every node (a /30 each; the node's side
    # .1, the container .2): a private range no node uses. See docs/SECURITY.md.
    job_network_subnet: str = "10.213.0.0/16"
    # Per-attempt scratch (removed at the end) and per-project results (kept; size reported in
    # usage, new jobs refused past the limit). Defaults under <data_dir>.
    scratch_root: Path | None = None
    results_root: Path | None = None
    results_max_gb_per_project: float = Field(100.0, ge=0)

    default_max_runtime_s: float = 24 * 3600.0
    seed_demo: bool = True

    log_level: str = "info"

    # Two or more brokers on one PostgreSQL database elect a leader (broker.services.leadership):
    # followers try the advisory lock every leader_poll_s; a leader whose heartbeat on its lock's
    # connection has not succeeded for leader_lease_s stops acting as leader.
    leader_poll_s: float = 0.5
    leader_lease_s: float = 5.0
    # Operations insight (notifications): e-mail goes through the region's SMTP relay
    # (notify_smtp_host empty: e-mail subscriptions are refused); webhooks only to URLs that
    # start with one of notify_webhook_allow_prefixes (e.g. "https://hooks.example.org/"; empty:
    # webhook subscriptions are refused), so a tenant cannot make the broker call internal
    # addresses. Failed deliveries are retried with backoff (base doubling up to max) up to
    # notify_max_attempts times.
    notify_smtp_host: str = ""
    notify_smtp_port: int = 25
    notify_smtp_from: str = "compute-broker@localhost"
    notify_smtp_starttls: bool = False
    notify_smtp_user: str = ""
    notify_smtp_password: str = ""
    notify_webhook_allow_prefixes: list[str] = []
    notify_timeout_s: float = Field(5.0, gt=0, le=60)
    notify_retry_base_s: float = Field(30.0, gt=0)
    notify_retry_max_s: float = Field(3600.0, gt=0)
    notify_max_attempts: int = Field(10, ge=1)

    # Kubernetes cluster mode (docs/KUBERNETES.md): node discovery from GPU Feature Discovery
    # labels, cordon/taint sync both ways, demand-driven KubeRay worker groups, agent identity by
    # TokenReview. Off unless k8s_enabled; k8s_api_url "" = in-cluster credentials.
    k8s_enabled: bool = False
    k8s_api_url: str = ""
    k8s_token_file: str = ""
    k8s_namespace: str = "compute-broker"
    k8s_raycluster: str = "compute-broker-ray"
    k8s_pool_label: str = "compute-broker/pool"
    k8s_rack_label: str = "topology.compute-broker.io/rack"
    k8s_gpu_models: dict[str, str] = {}  # GFD product -> GPU model name, e.g. {"NVIDIA-H100-80GB-HBM3": "H100"}
    k8s_sync_interval_s: float = Field(5.0, gt=0)
    k8s_autoscale: bool = True
    k8s_scale_cooldown_s: float = Field(600.0, ge=0)
    k8s_scale_up_max: int = Field(4, ge=0)  # nodes per worker group per window
    k8s_scale_up_window_s: float = Field(60.0, gt=0)
    k8s_agent_namespace: str = "compute-broker-agents"
    k8s_agent_service_account: str = "broker-agent"
    k8s_agent_audience: str = "compute-broker"
    # Tenant images approved to run on KubeRay: key -> image reference, e.g.
    # {"seg-v3": "registry.region.dk/radiology/seg:3.0"}. Each key has a worker group whose pods
    # run that image beside the Ray worker and carry the Ray label broker.io/image=<key>
    # (docs/KUBERNETES.md, "Tenant containers on KubeRay"): a container job of such an image is
    # accepted even where the nodes have no podman, and runs only in a fresh pod of its image.
    k8s_images: dict[str, str] = {}

    # Test-only: arm one named failpoint (broker.failpoints), e.g. "after_admit_commit" or
    # "after_launch@2"; the process then dies there as if killed. Empty in production.
    failpoint: str = ""
    # Operations insight (usage reports): running attempts accrue in the ledger at every multiple
    # of this period (UTC), so budgets, usage and reports see long jobs and services while they run.
    accrual_period_s: float = Field(default=3600.0, ge=60.0, le=86400.0)

    @field_validator("k8s_images")
    @classmethod
    def _image_keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not IMAGE_KEY.fullmatch(k)]
        if bad:
            raise ValueError(f"k8s_images: keys must be Ray/Kubernetes label values (letters, digits, '-', '_', '.', "
                             f"at most 63, alphanumeric at both ends): {bad}")
        refs = list(v.values())
        dup = sorted({r for r in refs if refs.count(r) > 1})
        if dup or any(not r or r != r.strip() for r in refs):
            raise ValueError(f"k8s_images: each key needs its own non-empty image reference; repeated: {dup}")
        return v

    def image_keys(self) -> dict[str, str]:
        """Approved image reference -> its key (`k8s_images` read the other way)."""
        return {ref: key for key, ref in self.k8s_images.items()}

    @model_validator(mode="after")
    def _default_db(self) -> "Settings":
        bad = {k: v for k, v in self.grace_by.items() if not (0 <= float(v) <= 24 * 3600)}
        if bad:
            raise ValueError(f"grace_by: seconds must be within 0..86400: {bad}")
        if not self.database_url:
            self.database_url = f"sqlite:///{Path(self.data_dir) / 'broker.db'}"
        return self

    def policy(self):
        """The scheduling policy: the preset named by `scheduling_policy` with the overrides."""
        from dataclasses import fields, replace

        from scheduler.model import POLICIES

        base = POLICIES[self.scheduling_policy]
        unknown = set(self.scheduling_policy_overrides) - {f.name for f in fields(base)}
        if unknown:
            raise ValueError(f"scheduling_policy_overrides: no such policy fields {sorted(unknown)}")
        return replace(base, **self.scheduling_policy_overrides) if self.scheduling_policy_overrides else base

    def grace_for(self, pool: str | None, workload_class: str) -> float:
        """Seconds between notice + SIGTERM and SIGKILL for a job of `workload_class` in `pool`."""
        for key in (f"{pool}/{workload_class}" if pool else None, pool, workload_class):
            if key and key in self.grace_by:
                return float(self.grace_by[key])
        return self.grace_period_s

    @property
    def checkpoint_root_dir(self) -> Path:
        root = self.checkpoint_root if self.checkpoint_root is not None else Path(self.data_dir) / "checkpoints"
        return Path(root).resolve()

    def checkpoint_dir(self, project: str, job_id: str) -> Path:
        """A checkpointable job's directory (ids are the broker's own: no user path)."""
        return self.checkpoint_root_dir / project / job_id

    @property
    def secrets_key_path(self) -> Path:
        return Path(self.secrets_key_file) if self.secrets_key_file else Path(self.data_dir) / "secrets.key"

    def scratch_dir(self, job_id: str, attempt: int) -> Path:
        root = self.scratch_root if self.scratch_root is not None else Path(self.data_dir) / "scratch"
        return Path(root).resolve() / job_id / str(attempt)

    def results_dir(self, project: str) -> Path:
        root = self.results_root if self.results_root is not None else Path(self.data_dir) / "results"
        return Path(root).resolve() / project

    @property
    def log_dir(self) -> Path:
        """Where runners write job logs on this host (what `broker up` gives its executor)."""
        return (Path(self.data_dir) / "logs").resolve()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_data_dir(self) -> Path:
        """Create the data dir (mode 0700: it holds the admin token) and return it."""
        p = Path(self.data_dir)
        p.mkdir(parents=True, exist_ok=True)
        try:
            p.chmod(0o700)
        except OSError:
            pass
        return p
