"""First start: the platform-admin token and the demo region.

`ensure_admin_token` is idempotent: when `<data_dir>/admin-token` holds a token that is valid in
the DB it does nothing; otherwise it issues a new platform-admin token, stores only its hash, and
writes the plaintext to the file with mode 0600 (created with that mode, never world-readable
for an instant). `seed_demo` fills an empty DB with departments, projects, pools and quotas.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.db import make_engine
from broker.models import ApiToken, Department, Pool, Project, QuotaRow
from broker.auth.authn import token_by_prefix
from broker.auth.tokens import TokenKind, issue_token, parse_token, verify_token_hash
from broker.settings import Settings

ADMIN_TOKEN_FILE = "admin-token"


def create_token(session: Session, *, name: str, role: str, kind: str = "user", project_id: str | None = None,
                 department_id: str | None = None, node_id: str | None = None,
                 expires_at: float | None = None) -> tuple[str, ApiToken]:
    """Issue a token and store its hash. Returns (plaintext, row); the plaintext is not kept."""
    issued = issue_token(TokenKind(kind))
    row = ApiToken(prefix=issued.prefix, hash=issued.hash, kind=kind, name=name, role=role, project_id=project_id,
                   department_id=department_id, node_id=node_id, expires_at=expires_at)
    session.add(row)
    session.flush()
    return issued.plaintext, row


def ensure_admin_token(settings: Settings, engine: Engine | None = None) -> Path:
    """Make sure a usable platform-admin token exists in `<data_dir>/admin-token`; return its path."""
    path = settings.ensure_data_dir() / ADMIN_TOKEN_FILE
    own = engine is None
    eng = engine or make_engine(settings)
    try:
        with Session(eng) as s:
            if path.exists() and _valid(s, path.read_text().strip()):
                return path
            plaintext, _ = create_token(s, name="admin", role="platform-admin")
            s.commit()
    finally:
        if own:
            eng.dispose()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(plaintext + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def _valid(s: Session, raw: str) -> bool:
    parsed = parse_token(raw)
    if parsed is None:
        return False
    row = token_by_prefix(s, parsed.prefix)
    now = time.time()
    return (row is not None and verify_token_hash(raw, row.hash) and row.revoked_at is None
            and (row.expires_at is None or row.expires_at > now))


DEPARTMENTS = [("ouh", "OUH", 1.0), ("slb", "SLB", 1.0), ("svs", "SVS", 1.0), ("shs", "SHS", 1.0),
               ("rit", "Regional IT", 0.5)]
PROJECTS = [("ouh-liver", "ouh", "Liver segmentation"), ("ouh-radiology", "ouh", "Radiology triage"),
            ("slb-cardio", "slb", "Cardiology ECG models"), ("svs-pathology", "svs", "Digital pathology"),
            ("shs-ops-triage", "shs", "ED triage (production)"), ("rit-platform", "rit", "Platform tests")]
# nominal GPUs on the innovation pool per department / project; operation guarantees for production.
INNOVATION_NOMINAL = {"ouh": 4, "slb": 2, "svs": 2, "shs": 1, "rit": 1,
                      "ouh-liver": 2, "ouh-radiology": 2, "slb-cardio": 2, "svs-pathology": 2,
                      "shs-ops-triage": 1, "rit-platform": 1}
OPERATION_GUARANTEED = {"shs": 2, "ouh": 2, "shs-ops-triage": 2, "ouh-radiology": 2}


def seed_demo(session: Session, *, gpu_model: str = "", process_runtime: bool = False,
              cpus_per_gpu: float = 0.0, memory_gb_per_gpu: float = 0.0) -> bool:
    """Seed an empty DB with the demo region. Returns False (and changes nothing) if any
    department exists. `gpu_model` is the flavor's model used for the demo quotas;
    `process_runtime` lets the demo projects run `runtime: process` jobs (host processes: for a
    one-machine demo only, where the deployment allows them too).

    `cpus_per_gpu` / `memory_gb_per_gpu` (the machine's ratio, `demo_ratios`): every GPU quota
    row gets CPU and memory rows in proportion, so that a job asking for its share of CPU and
    memory per GPU is within quota on every resource. Without them (0) CPU and memory have no
    quota rows: a nominal of 0, so every job borrows them and is preemptible as a borrower."""
    if session.execute(select(func.count()).select_from(Department)).scalar_one() > 0:
        return False
    for did, name, w in DEPARTMENTS:
        session.add(Department(id=did, name=name, weight=w))
    session.flush()
    for pid, did, name in PROJECTS:
        session.add(Project(id=pid, department_id=did, name=name, allow_process_runtime=process_runtime))
    session.add(Pool(name="operation", workload_class="operation", lend_to_innovation=True,
                     description="reserved for clinical production; idle capacity lent to innovation"))
    session.add(Pool(name="innovation", workload_class="innovation", description="shared by innovation teams"))
    per_gpu = {"gpus": 1.0, "cpus": cpus_per_gpu, "memory_gb": memory_gb_per_gpu}
    departments = {d for d, _, _ in DEPARTMENTS}
    for pool, table, guaranteed in (("innovation", INNOVATION_NOMINAL, False), ("operation", OPERATION_GUARANTEED, True)):
        for owner, g in table.items():
            kind = "department" if owner in departments else "project"
            for resource, ratio in per_gpu.items():
                if ratio <= 0:
                    continue
                amount = g * ratio if resource == "gpus" else max(0.5, round(g * ratio * 2) / 2)
                session.add(QuotaRow(owner_kind=kind, owner_id=owner, pool=pool, gpu_model=gpu_model,
                                     resource=resource, guaranteed=amount if guaranteed else 0, nominal=amount,
                                     limit=None))
    session.flush()
    return True


def demo_ratios(total_gpus: int, total_cpus: float, total_memory_gb: float) -> tuple[float, float]:
    """(CPUs per GPU, GiB of memory per GPU) of a machine, for `seed_demo`: its capacity over its
    GPUs (a machine without GPUs is treated as one GPU's worth, so the demo quotas still give
    CPU and memory in the same proportion as the GPU quotas)."""
    g = max(1, total_gpus)
    return total_cpus / g, total_memory_gb / g


def issue_agent_token(engine, node_id: str, name: str = "") -> str:
    """A new agent token bound to `node_id` (for `broker up` and the Ray per-node agents).

    The plaintext is returned once; only its hash is stored. The token may push telemetry for
    this node and do nothing else."""
    with Session(engine) as s:
        plain, _ = create_token(s, name=name or f"agent-{node_id}", role="agent", kind="agent", node_id=node_id)
        s.commit()
    return plain
