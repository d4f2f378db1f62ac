"""The region `broker bench dashboards` measures: a fleet, its jobs, 30 days of rollups.

`fill(url, nodes=1000, gpus=8, days=30, minute_hours=24, projects=40, ...)` writes, on top of the
demo region of `prepare_database`:
- `nodes` nodes of `gpus` GPUs (one in five in the operation pool, H100; the rest innovation, A100);
- `projects` more projects over the demo departments, each with a GPU quota in the innovation
  pool (nominal 8-32, limit twice that) and a monthly budget;
- running jobs of 4 GPUs on 60 % of the GPUs (attempt, placement, open ledger row; started up
  to 3 days ago), `pending` pending jobs over five reasons (half with an ETA), and
  `history` finished attempts spread over the `days` days (jobs, attempts, ledger rows);
- GPU rollups: one row per GPU and hour for `days` days and per GPU and minute for the last
  `minute_hours` hours, attributed to the job running on that GPU now (the rows are what the
  dashboards read; their values are synthetic), with the telemetry watermarks set as the
  rollup task would leave them.
The rollup rows are generated inside the database (one INSERT ... SELECT per resolution over a
recursive series), so 17 million rows take minutes, not an hour of client round trips.
Returns what the measurement needs: tokens, a running job, a project, counts.
"""

from __future__ import annotations

import random
import time
import uuid

from sqlalchemy import insert, text
from sqlmodel import Session

from broker.bench.reads import _job_row
from broker.db import make_engine
from broker.models import Attempt, Job, Ledger, Node, Placement, Project, QuotaRow
from broker.services.bootstrap import DEPARTMENTS, create_token
from broker.settings import Settings

HOUR, MINUTE, DAY = 3600, 60, 86400
REASONS = ("QUOTA_LIMIT", "NO_CAPACITY", "BUDGET_EXHAUSTED", "GANG_DOES_NOT_FIT", "WAITING_FOR_PREEMPTION")
_BATCH = 2000


def fill(url: str, *, nodes: int, gpus: int, days: int, minute_hours: int, projects: int, pending: int,
         history: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    now = time.time()
    eng = make_engine(Settings(database_url=url))
    try:
        with Session(eng) as s:
            pids = _catalog(s, nodes, gpus, projects)
            admin, _ = create_token(s, name="bench-dash-admin", role="platform-admin")
            member_project = pids[0]
            dept = s.get(Project, member_project).department_id
            member, _ = create_token(s, name="bench-dash-member", role="member", project_id=member_project,
                                     department_id=dept)
            s.commit()
        running, starts = _jobs(eng, rng, now, nodes, gpus, pids, pending, history, days)
        t0 = time.perf_counter()
        rows = _rollups(eng, now, nodes, gpus, days, minute_hours, running)
        return {"admin": admin, "member": member, "member_project": member_project,
                "running_job": next(j for j, p, _n, _g in running if p == member_project),
                "running_job_start": next(t for j, p, t in starts if p == member_project),
                "running_jobs": len(running), "rollup_rows": rows, "rollups_s": round(time.perf_counter() - t0, 1),
                "now": now}
    finally:
        eng.dispose()


def _catalog(s: Session, nodes: int, gpus: int, projects: int) -> list[str]:
    for i in range(nodes):
        op = i % 5 == 0
        s.add(Node(id=f"dash-{i:04d}", hostname=f"dash-{i:04d}", pool="operation" if op else "innovation",
                   gpu_model="H100" if op else "A100", gpus=gpus, cpus=128, memory_gb=1024,
                   state="ready" if i % 97 else "unhealthy", admin_state="cordoned" if i % 89 == 1 else None,
                   last_heartbeat=time.time()))
    depts = [d for d, _, _ in DEPARTMENTS]
    pids = []
    for i in range(projects):
        pid = f"dash-p{i:02d}"
        pids.append(pid)
        s.add(Project(id=pid, department_id=depts[i % len(depts)], name=f"Dashboard project {i}",
                      budget_gpu_hours=float(5000 + 1000 * (i % 7))))
    s.flush()
    for i, pid in enumerate(pids):
        nominal = float(8 + 4 * (i % 7))
        s.add(QuotaRow(owner_kind="project", owner_id=pid, pool="innovation", gpu_model="", resource="gpus",
                       guaranteed=nominal / 2, nominal=nominal, limit=2 * nominal))
    s.flush()
    return pids


def _jobs(eng, rng: random.Random, now: float, nodes: int, gpus: int, pids: list[str], pending: int, history: int,
          days: int) -> tuple[list[tuple[str, str, str, list[int]]], list[tuple[str, str, float]]]:
    """Write the jobs; returns the running ones as (job id, project, node, GPU indices) and as
    (job id, project, start)."""
    running: list[tuple[str, str, str, list[int]]] = []
    starts: list[tuple[str, str, float]] = []
    jobs, attempts, placements, ledger = [], [], [], []
    dept_of = {pid: DEPARTMENTS[i % len(DEPARTMENTS)][0] for i, pid in enumerate(pids)}
    per_job = min(4, gpus)
    for i in range(nodes):
        node = f"dash-{i:04d}"
        pool, model = ("operation", "H100") if i % 5 == 0 else ("innovation", "A100")
        for k in range(0, gpus - per_job + 1, per_job):
            if rng.random() >= 0.6:
                continue
            jid, pid = uuid.uuid4().hex[:16], rng.choice(pids)
            start = now - rng.uniform(600, 3 * DAY)
            idx = list(range(k, k + per_job))
            running.append((jid, pid, node, idx))
            starts.append((jid, pid, start))
            jobs.append({**_job_row(jid, pid, start - 60), "status": "RUNNING", "gpus": per_job, "admitted_at": start,
                         "started_at": start, "flavor_pool": pool, "flavor_gpu_model": model,
                         "max_runtime_s": 4 * DAY, "pending_code": None})
            attempts.append({"job_id": jid, "number": 1, "status": "RUNNING", "admitted_at": start, "started_at": start})
            placements.append({"job_id": jid, "attempt": 1, "rank": 0, "node_id": node, "gpu_indices": idx,
                               "cuda_visible_devices": ",".join(map(str, idx))})
            ledger.append({"job_id": jid, "attempt": 1, "project_id": pid, "department_id": dept_of[pid], "pool": pool,
                           "gpu_model": model, "gpus": per_job, "started_at": start, "ended_at": None,
                           "allocated_gpu_s": 0.0, "accrued_to": None})
    for i in range(pending):
        jid, pid = uuid.uuid4().hex[:16], rng.choice(pids)
        eta = now + rng.uniform(60, 6 * HOUR) if i % 2 else None
        jobs.append({**_job_row(jid, pid, now - rng.uniform(10, DAY)), "gpus": rng.choice((1, 2, 4, 8)),
                     "pending_code": REASONS[i % len(REASONS)], "pending_message": "bench", "queue_position": i + 1,
                     "estimated_start": eta})
    for _ in range(history):
        jid, pid = uuid.uuid4().hex[:16], rng.choice(pids)
        start = now - rng.uniform(HOUR, days * DAY)
        end = min(now - 60, start + rng.uniform(600, 12 * HOUR))
        g = rng.choice((1, 2, 4, 8))
        jobs.append({**_job_row(jid, pid, start - 120), "status": "SUCCEEDED", "gpus": g, "admitted_at": start,
                     "started_at": start, "finished_at": end, "flavor_pool": "innovation", "flavor_gpu_model": "A100",
                     "pending_code": None, "exit_code": 0})
        attempts.append({"job_id": jid, "number": 1, "status": "SUCCEEDED", "admitted_at": start, "started_at": start,
                         "ended_at": end, "exit_code": 0})
        ledger.append({"job_id": jid, "attempt": 1, "project_id": pid, "department_id": dept_of[pid],
                       "pool": "innovation", "gpu_model": "A100", "gpus": g, "started_at": start, "ended_at": end,
                       "allocated_gpu_s": g * (end - start), "accrued_to": None})
    with eng.begin() as conn:
        for table, rows in ((Job, jobs), (Attempt, attempts), (Placement, placements), (Ledger, ledger)):
            for k in range(0, len(rows), _BATCH):
                conn.execute(insert(table.__table__), [_defaults(table, r) for r in rows[k:k + _BATCH]])
    return running, starts


def _defaults(table, row: dict) -> dict:
    if table is Attempt:
        return {"ended_at": None, "exit_code": None, "reason": "", "last_seen_at": None, **row}
    if table is Job:
        return {"secrets": [], "mounts": [], **row}
    return row


def _rollups(eng, now: float, nodes: int, gpus: int, days: int, minute_hours: int,
             running: list[tuple[str, str, str, list[int]]]) -> int:
    """Hour rows for `days` days and minute rows for `minute_hours` hours, generated in SQL."""
    minute_end = (now - 120) - ((now - 120) % MINUTE)  # the minutes the rollup task has done
    hour_end = minute_end - (minute_end % HOUR)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE bench_gpu_jobs (node_id VARCHAR(200), gpu_index INTEGER, job_id VARCHAR(64), "
                          "project_id VARCHAR(64))"))
        rows = [{"n": node, "g": i, "j": jid, "p": pid} for jid, pid, node, idx in running for i in idx]
        for k in range(0, len(rows), _BATCH):
            conn.execute(text("INSERT INTO bench_gpu_jobs VALUES (:n, :g, :j, :p)"), rows[k:k + _BATCH])
    total = 0
    for res, count, end in ((HOUR, days * 24, hour_end), (MINUTE, minute_hours * 60, minute_end)):
        with eng.begin() as conn:
            total += conn.execute(text(_ROLLUP_SQL), {"res": res, "nb": count, "ng": gpus, "start": end - count * res}).rowcount or 0
    with eng.begin() as conn:
        conn.execute(text("DROP TABLE bench_gpu_jobs"))
        for name, value in (("rollup_1m", minute_end), ("rollup_1h", hour_end)):
            conn.execute(text("DELETE FROM telemetry_marks WHERE name = :n"), {"n": name})
            conn.execute(text("INSERT INTO telemetry_marks (name, value) VALUES (:n, :v)"), {"n": name, "v": value})
    if eng.dialect.name == "postgresql":  # as autovacuum would, but before the measurement, not during it
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE gpu_rollups"))
    return total


# util: a deterministic 0-99 pattern per GPU and bucket (busy GPUs high, idle ones low)
_ROLLUP_SQL = """
INSERT INTO gpu_rollups (resolution_s, node_id, gpu_index, bucket, job_id, project_id, samples, util_n, util_sum,
    util_max, mem_n, mem_sum, mem_max, power_n, power_sum, power_max, gpm_n, gr_sum, tensor_sum, dram_sum, temp_max)
WITH RECURSIVE b(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM b WHERE k < :nb - 1),
g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < :ng - 1)
SELECT :res, n.id, g.i, :start + b.k * :res, COALESCE(j.job_id, ''), j.project_id, 60, 60,
    60.0 * (CASE WHEN j.job_id IS NULL THEN (b.k + g.i) % 5 ELSE 40 + (b.k * 7 + g.i * 13) % 60 END),
    CASE WHEN j.job_id IS NULL THEN 4 ELSE 99 END, 60, 60.0 * 20480, 40960.0, 60, 60.0 * 300, 400.0, 0, 0, 0, 0,
    45.0 + (b.k + g.i) % 30
FROM nodes n CROSS JOIN g CROSS JOIN b
LEFT JOIN bench_gpu_jobs j ON j.node_id = n.id AND j.gpu_index = g.i
WHERE n.id LIKE 'dash-%'
"""
