"""Realistic rows of every table, written at any schema revision, for upgrade tests.

Why rows built from the current models and cut down to an older revision's columns: an
operator upgrades a database the *previous* release filled; the rows here are what the service
writes today (jobs in every state with their attempts, placements, events and ledger, tokens,
quotas, telemetry), and `insert_at(conn)` writes the part an older schema can hold: only the
tables and columns that exist there (reflected), in foreign-key order.

`ADMIN_SECRET` is the plaintext of the platform-admin token in the rows, so a test can call the
upgraded app with it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, select
from sqlalchemy.engine import Connection

from broker.auth.tokens import TokenKind, issue_token
from broker.models import (AdminSetting, AgentState, ApiToken, Attempt, AuditEntry, Department, GpuRollup,
                           GpuSample, HostSampleRow, IdempotencyKey, Job, JobEvent, JobStatus, Ledger,
                           Membership, Node, Placement, Pool, Project, QuotaRow, TelemetryMark, TokenOwner, User)

T0 = 1_790_000_000.0
_ISSUED = issue_token(TokenKind.USER)
ADMIN_SECRET = _ISSUED.plaintext
ADMIN_TOKEN_ID = "tokadmin0001"

# Foreign keys point up this list: parents are inserted first.
ORDER = ["departments", "projects", "pools", "nodes", "quotas", "api_tokens", "users", "memberships",
         "token_owners", "jobs", "attempts", "placements", "job_events", "ledger", "idempotency_keys",
         "audit_log", "admin_settings", "agent_state", "gpu_samples", "host_samples", "gpu_rollups",
         "telemetry_marks"]

# (status, attempts): how many attempts a job in that state has behind it.
JOB_STATES = [
    (JobStatus.PENDING, 0), (JobStatus.ADMITTED, 1), (JobStatus.STARTING, 1), (JobStatus.RUNNING, 1),
    (JobStatus.SUCCEEDED, 1), (JobStatus.FAILED, 2), (JobStatus.CANCELLED, 1), (JobStatus.PREEMPTED, 1),
    (JobStatus.LOST, 1),
]


def job_ids() -> dict[str, str]:
    """status -> job id of the one job in that state."""
    return {s.value: f"job{s.value.lower()}" for s, _ in JOB_STATES}


def rows() -> dict[str, list[dict[str, Any]]]:
    """table -> rows (column dicts in today's schema)."""
    out: dict[str, list] = {t: [] for t in ORDER}

    def add(obj) -> None:
        out[obj.__tablename__].append(obj.model_dump())

    add(Department(id="ouh", name="OUH", weight=2.0, budget_gpu_hours=5000.0, created_at=T0))
    add(Project(id="ouh-liver", department_id="ouh", name="Liver", max_running=4, max_pending=100,
                allow_process_runtime=False, created_at=T0))
    add(Pool(name="innovation", workload_class="innovation", description="shared"))
    add(Pool(name="operation", workload_class="operation", lend_to_innovation=True, description="production"))
    add(Node(id="inno-1", hostname="inno-1", address="10.0.0.1", pool="innovation", gpu_model="A100", gpus=4,
             cpus=32, memory_gb=256, labels={"broker.io/pool": "innovation"}, last_heartbeat=T0 + 50,
             admin_state="cordoned", admin_reason="maintenance", updated_at=T0))
    add(Node(id="op-1", hostname="op-1", pool="operation", gpu_model="H100", gpus=8, cpus=64, memory_gb=512,
             updated_at=T0))
    add(QuotaRow(id=1, owner_kind="department", owner_id="ouh", pool="innovation", gpu_model="A100",
                 resource="gpus", guaranteed=0, nominal=8, limit=12, updated_at=T0))
    add(QuotaRow(id=2, owner_kind="project", owner_id="ouh-liver", pool="innovation", gpu_model="A100",
                 resource="gpus", guaranteed=2, nominal=4, limit=None, updated_at=T0))
    add(ApiToken(id=ADMIN_TOKEN_ID, prefix=_ISSUED.prefix, hash=_ISSUED.hash, name="admin", role="platform-admin",
                 created_at=T0))
    member = issue_token(TokenKind.USER)
    add(ApiToken(id="tokmember001", prefix=member.prefix, hash=member.hash, name="alice", role="member",
                 project_id="ouh-liver", created_at=T0, expires_at=T0 + 86400 * 365 * 10))
    add(User(id="alice", display_name="Alice", email="alice@example.org", created_at=T0))
    add(Membership(id="mem1", user_id="alice", role="member", project_id="ouh-liver", created_at=T0,
                   created_by="admin"))
    add(TokenOwner(token_id="tokmember001", user_id="alice"))
    ev = 0
    for status, attempts in JOB_STATES:
        jid = job_ids()[status.value]
        ended = status.terminal
        add(Job(id=jid, name=f"train-{status.value.lower()}", project_id="ouh-liver", image="localhost/busybox:test",
                command=["/bin/busybox", "echo", "hi"], env={"FOO": "bar"}, gpus=1, cpus=2, memory_gb=8,
                gpu_models=["A100"], workers=2, max_runtime_s=600, priority=3, max_retries=1,
                checkpointable=status == JobStatus.RUNNING, status=status.value, version=2 + attempts,
                attempt=max(1, attempts), submit_time=T0, created_at=T0,
                admitted_at=T0 + 1 if attempts else None, started_at=T0 + 2 if attempts else None,
                finished_at=T0 + 60 if ended else None, exit_code=(0 if status == JobStatus.SUCCEEDED else
                                                                   1 if status == JobStatus.FAILED else None),
                message="" if status != JobStatus.FAILED else "exit 1",
                pending_code="QUOTA" if status == JobStatus.PENDING else None,
                pending_details={"need": 2, "free": 0} if status == JobStatus.PENDING else {},
                queue_position=1 if status == JobStatus.PENDING else None, borrowing=status == JobStatus.RUNNING,
                flavor_pool="innovation" if attempts else None, flavor_gpu_model="A100" if attempts else None,
                owner_token_id="tokmember001"))
        ev += 1
        add(JobEvent(id=ev, job_id=jid, ts=T0, kind="submitted", to_status="PENDING", sealed=True,
                     details={"by": "alice"}))
        add(AuditEntry(id=ev, at=T0, actor="alice", action="job.submit", target_kind="job", target_id=jid,
                       department_id="ouh", project_id="ouh-liver", changes=[], hash=f"{ev:064x}",
                       source_event_id=ev))
        add(IdempotencyKey(id=ev, token_id="tokmember001", key=f"key-{jid}", body_hash="b" * 64, job_id=jid,
                           created_at=T0))
        for n in range(1, attempts + 1):
            last = n == attempts
            add(Attempt(job_id=jid, number=n, status=status.value if last else JobStatus.FAILED.value,
                        admitted_at=T0 + 1, started_at=T0 + 2, ended_at=T0 + 60 if (ended or not last) else None,
                        exit_code=1 if not last else None, reason="" if last else "exit 1"))
            for rank in range(2):
                add(Placement(job_id=jid, attempt=n, rank=rank, node_id="inno-1", gpu_indices=[rank],
                              cuda_visible_devices=str(rank)))
            add(Ledger(job_id=jid, attempt=n, project_id="ouh-liver", department_id="ouh", pool="innovation",
                       gpu_model="A100", gpus=2, started_at=T0 + 2, ended_at=T0 + 60 if (ended or not last) else None,
                       allocated_gpu_s=116.0 if (ended or not last) else 0.0, used_gpu_s=80.5, energy_j=12345.0))
            ev += 1
            add(JobEvent(id=ev, job_id=jid, ts=T0 + 1, kind="transition", from_status="PENDING",
                         to_status="ADMITTED", attempt=n, message="admitted"))
    add(AdminSetting(key="image_allow_prefixes", value={"prefixes": ["localhost/"]}, version=3, updated_at=T0))
    add(AgentState(node_id="inno-1", last_seq=41, last_report_at=T0 + 50, agent_version="1.0",
                   agent_started_at=T0, gpu_backend="nvml", device_count=4, reports=42, samples=168))
    for i in range(3):
        add(GpuSample(id=i + 1, node_id="inno-1", gpu_index=i, uuid=f"GPU-{i}", ts=T0 + 10 * i, util_gpu=97.5,
                      memory_used_mb=21978.0, power_w=691.7, energy_mj=10**12 + i, job_id=job_ids()["RUNNING"],
                      attempt=1, project_id="ouh-liver", job_memory_mb=21354.0))
        add(HostSampleRow(id=i + 1, node_id="inno-1", ts=T0 + 10 * i, cpu_percent=12.5, load1=0.7))
    add(GpuRollup(id=1, resolution_s=60, node_id="inno-1", gpu_index=0, bucket=T0 - 40, job_id=job_ids()["RUNNING"],
                  project_id="ouh-liver", samples=3, util_n=3, util_sum=292.5, util_max=97.5))
    add(TelemetryMark(name="rollup.60", value=T0))
    return out


_ROWS = rows()


def reflect(conn: Connection) -> MetaData:
    md = MetaData()
    md.reflect(conn)
    return md


def insert_at(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    """Insert what the schema at `conn` can hold; returns table -> the rows as written."""
    md = reflect(conn)
    written: dict[str, list] = {}
    for name in ORDER:
        table = md.tables.get(name)
        if table is None:
            continue
        cut = [{k: v for k, v in r.items() if k in table.c} for r in _ROWS[name]]
        conn.execute(table.insert(), cut)
        written[name] = cut
    return written


def read_back(conn: Connection, written: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The rows now in each written table, limited to the columns that were written, sorted."""
    md = reflect(conn)
    out = {}
    for name, rows_ in written.items():
        cols = list(rows_[0]) if rows_ else []
        table = md.tables[name]
        got = [dict(r._mapping) for r in conn.execute(select(*[table.c[c] for c in cols]))]
        out[name] = sorted(got, key=repr)
    return out


def normalized(written: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {k: sorted(v, key=repr) for k, v in written.items()}
