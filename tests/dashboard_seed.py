"""A small world for the dashboards' tests (API on SQLite / PostgreSQL, and the browser pages).

`seed_world(engine, now, own=(dept, project), foreign=(dept, project), ...)` writes, beside
whatever the database holds:
- the two departments and projects where missing (new projects get GPU quotas in the
  innovation pool: own nominal 1 / limit 4, foreign guaranteed 1 / nominal 4 / no limit);
- ja: own, RUNNING for 2 h on `own_gpus` (2 GPUs, borrowing, may run 10 h);
- jb: foreign, RUNNING for 1 h on `foreign_gpus` (1 GPU);
- jc: own, PENDING (QUOTA_LIMIT, ETA in 15 min, 4 GPUs); jd: foreign, PENDING (NO_CAPACITY);
- je: own, SUCCEEDED on its second attempt (the first preempted), with its transition events;
- minute GPU rollups for the last `minutes` minutes ending at `bucket` (3 minutes ago): ja's
  GPUs at 80 % in that last minute, jb's at 50 %, `idle_gpu` unattributed at 0 %; each 2 GiB,
  200 W, 61 °C. Earlier minutes (if any) vary, so charts have a shape.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session

from broker.models import (
    Attempt, Department, GpuRollup, Job, JobEvent, Ledger, Node, Placement, Project, QuotaRow,
)

H = 3600.0


@dataclass
class World:
    now: float
    d1: str
    d2: str
    pa: str
    pb: str
    ja: str
    jb: str
    jc: str
    jd: str
    je: str
    bucket: float
    fold_end: float  # where a pool-rollup run at `now` stops folding minutes


def seed_world(engine, now: float, *, own: tuple[str, str], foreign: tuple[str, str],
               own_gpus: tuple[str, list[int]], foreign_gpus: tuple[str, list[int]],
               idle_gpu: tuple[str, int], minutes: int = 1) -> World:
    (d1, pa), (d2, pb) = own, foreign
    ja, jb, jc, jd, je = (uuid.uuid4().hex[:16] for _ in range(5))
    bucket = now - (now % 60) - 180
    with Session(engine) as s:
        for d, p, budget, quota in ((d1, pa, 100.0, (0, 1, 4)), (d2, pb, None, (1, 4, None))):
            if s.get(Department, d) is None:
                s.add(Department(id=d, name=d.upper(), budget_gpu_hours=1000 if d == d1 else None))
                s.flush()
            if s.get(Project, p) is None:
                s.add(Project(id=p, department_id=d, name=f"Project {p}", budget_gpu_hours=budget))
                s.flush()
                g, n, lim = quota
                s.add(QuotaRow(owner_kind="project", owner_id=p, pool="innovation", gpu_model="", resource="gpus",
                               guaranteed=g, nominal=n, limit=lim))
        pool_of = {n.id: (n.pool, n.gpu_model) for n in s.execute(select(Node)).scalars()}

        def job(jid, project, gpus, status, submit, **kw):
            s.add(Job(id=jid, project_id=project, name=f"name-{jid}", gpus=gpus, workers=1, status=status,
                      submit_time=submit, created_at=submit, command=["run", f"cmd-{jid}"], **kw))

        for jid, project, (node, idx), age, extra in ((ja, pa, own_gpus, 2 * H, {"borrowing": True, "max_runtime_s": 10 * H}),
                                                       (jb, pb, foreign_gpus, H, {})):
            pool, model = pool_of[node]
            job(jid, project, len(idx), "RUNNING", now - age - 60, admitted_at=now - age, started_at=now - age,
                flavor_pool=pool, flavor_gpu_model=model, **extra)
        job(jc, pa, 4, "PENDING", now - 600, pending_code="QUOTA_LIMIT", pending_message="over limit",
            queue_position=1, estimated_start=now + 900)
        job(jd, pb, 2, "PENDING", now - 300, pending_code="NO_CAPACITY", queue_position=2)
        job(je, pa, 1, "SUCCEEDED", now - 5 * H, attempt=2, admitted_at=now - 4 * H, started_at=now - 4 * H,
            finished_at=now - 3 * H, exit_code=0)
        s.flush()
        for jid, (node, idx), start, project, dept in ((ja, own_gpus, now - 2 * H, pa, d1),
                                                       (jb, foreign_gpus, now - H, pb, d2)):
            pool, model = pool_of[node]
            s.add(Attempt(job_id=jid, number=1, status="RUNNING", admitted_at=start, started_at=start))
            s.add(Placement(job_id=jid, attempt=1, rank=0, node_id=node, gpu_indices=idx,
                            cuda_visible_devices=",".join(map(str, idx))))
            s.add(Ledger(job_id=jid, attempt=1, project_id=project, department_id=dept, pool=pool, gpu_model=model,
                         gpus=len(idx), started_at=start))
        s.add(Attempt(job_id=je, number=1, status="PREEMPTED", admitted_at=now - 4.9 * H, started_at=now - 4.9 * H,
                      ended_at=now - 4.5 * H, reason="preempted"))
        s.add(Attempt(job_id=je, number=2, status="SUCCEEDED", admitted_at=now - 4 * H, started_at=now - 4 * H,
                      ended_at=now - 3 * H, exit_code=0))
        for ts, a, b, att in ((now - 5 * H, None, "PENDING", 1), (now - 4.9 * H, "PENDING", "RUNNING", 1),
                              (now - 4.5 * H, "RUNNING", "PREEMPTED", 1), (now - 4.4 * H, "PREEMPTED", "PENDING", 2),
                              (now - 4 * H, "PENDING", "RUNNING", 2), (now - 3 * H, "RUNNING", "SUCCEEDED", 2)):
            s.add(JobEvent(job_id=je, ts=ts, kind="transition" if a else "submitted", from_status=a, to_status=b,
                           attempt=att))
        gpus = [(own_gpus[0], i, ja, pa, 80.0) for i in own_gpus[1]] + \
               [(foreign_gpus[0], i, jb, pb, 50.0) for i in foreign_gpus[1]] + [(idle_gpu[0], idle_gpu[1], "", None, 0.0)]
        for k in range(minutes):
            b = bucket - k * 60
            for node, gpu, jid, project, util in gpus:
                u = util if k == 0 or not jid else max(0.0, min(100.0, util * (0.7 + 0.3 * math.sin(k / 9 + gpu))))
                s.add(GpuRollup(resolution_s=60, node_id=node, gpu_index=gpu, bucket=b, job_id=jid, project_id=project,
                                samples=60, util_n=60, util_sum=u * 60, util_max=u, mem_n=60, mem_sum=60 * 2048.0,
                                mem_max=4096.0, power_n=60, power_sum=60 * 200.0, power_max=250.0, temp_max=61.0))
        s.commit()
    fold_end = (now - 120) - ((now - 120) % 60)
    return World(now, d1, d2, pa, pb, ja, jb, jc, jd, je, bucket, fold_end)
