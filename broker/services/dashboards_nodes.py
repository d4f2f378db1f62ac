"""The nodes dashboard: every GPU's last rolled-up minute, its node's health, the job on it.

`NodeMap.snapshot(pool)` reads the fleet for one request: the nodes and the placements of
holding jobs are read every time (they change with every admission, drain or cordon), the GPU
readings only when a new minute has been rolled up. The readings are the heavy part (8,000
rows at 1,000 nodes x 8 GPUs) and change once a minute, so they are kept per minute, already
in the page's columns (one list per node and metric); finding out whether a newer minute
exists is one index probe (`latest_minute`).

`narrow(snapshot, can_see)` answers one caller: the snapshot's columns as they are, and the job
column with each job either an index into the caller's `jobs` list (a job of a project the
caller may see, named) or -1 (another project's job: neither its id nor its project leaves).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sqlmodel import Session

from broker.ports import Clock
from broker.services import dashboards_queries as q

LEGEND = {"util": "percent", "mem_mib": "MiB", "temp_c": "degrees C", "power_w": "W",
          "columns": "one value per GPU, by index; null: no reading in that minute",
          "job": "index into jobs; -1: allocated to a project you may not see; null: free"}
METRICS = ("util", "mem_mib", "temp_c", "power_w")


@dataclass(frozen=True)
class Snapshot:
    as_of: Optional[float]  # the minute the readings are from
    generated_at: float
    nodes: list[dict]  # public node rows without the job column
    gpu_jobs: list[list[Optional[str]]]  # per node, per GPU: the holding job's id or None
    jobs: dict[str, tuple[str, str, str]]  # job id -> (name, project, status)
    pools: list[dict]


class NodeMap:
    def __init__(self, engine, *, clock: Clock = time.time) -> None:
        self.engine, self.clock = engine, clock
        self._readings: tuple[Optional[float], dict[str, tuple[list, ...]]] = (None, {})
        self._lock = threading.Lock()

    def snapshot(self, pool: Optional[str] = None) -> Snapshot:
        with Session(self.engine) as s:
            nodes = q.nodes(s, pool)
            bucket = q.latest_minute(s)
            readings = self._columns(s, bucket)
            held = q.gpu_jobs(s, pool)
        return build(nodes, bucket, readings, held, self.clock())

    def _columns(self, s: Session, bucket: Optional[float]) -> dict[str, tuple[list, ...]]:
        """Per node: (util, mem, temp, power) lists by GPU index for `bucket`, read once per minute."""
        if bucket is None:
            return {}
        cached = self._readings
        if cached[0] == bucket:
            return cached[1]
        with self._lock:  # one reader per new minute; the others wait for it and share it
            if self._readings[0] == bucket:
                return self._readings[1]
            per: dict[str, dict[int, tuple]] = defaultdict(dict)
            for nid, g, util, mem, temp, power in q.latest_gpus(s, bucket):
                per[nid][int(g)] = (util, mem, temp, power)
            cols = {}
            for nid, by_gpu in per.items():
                rows = [by_gpu.get(i, (None, None, None, None)) for i in range(max(by_gpu) + 1)]
                cols[nid] = tuple([r[k] for r in rows] for k in range(len(METRICS)))
            self._readings = (bucket, cols)
            return cols


def build(nodes: list[dict], bucket: Optional[float], readings: dict[str, tuple[list, ...]], held,
          now: float) -> Snapshot:
    jobs: dict[str, tuple[str, str, str]] = {}
    on_node: dict[str, dict[int, str]] = defaultdict(dict)
    for node_id, indices, jid, name, project, status in held:
        jobs[jid] = (name, project, status)
        for i in q.gpu_indices(indices):
            on_node[node_id][i] = jid
    out, gpu_jobs, pools = [], [], defaultdict(lambda: defaultdict(int))
    for n in nodes:
        state, reason = effective_state(n)
        nid, count = n["id"], int(n["gpus"] or 0)
        row = {"id": nid, "pool": n["pool"], "gpu_model": n["gpu_model"], "state": state, "state_reason": reason,
               "health": n["state"], "admin_state": n["admin_state"], "fatal_reason": n["fatal_reason"] or None,
               "last_heartbeat": n["last_heartbeat"]}
        cols = readings.get(nid)
        for k, name in enumerate(METRICS):
            col = cols[k] if cols is not None else []
            row[name] = col if len(col) == count else (col + [None] * count)[:count]
        out.append(row)
        held_here = on_node.get(nid, {})
        job = [held_here.get(i) for i in range(count)] if held_here else [None] * count
        gpu_jobs.append(job)
        acc = pools[n["pool"]]
        acc["nodes"] += 1
        acc["gpus"] += count
        acc["allocated"] += len(held_here)
        acc[state] += 1
    return Snapshot(bucket, now, out, gpu_jobs, jobs, [{"name": k, **v} for k, v in sorted(pools.items())])


def narrow(snap: Snapshot, can_see: Callable[[str], bool], pool: Optional[str]) -> dict[str, Any]:
    """The snapshot for one caller (see the module docstring)."""
    index: dict[str, int] = {}
    jobs: list[dict] = []
    nodes = []
    for node, ids in zip(snap.nodes, snap.gpu_jobs):
        col = []
        for jid in ids:
            if jid is None:
                col.append(None)
                continue
            k = index.get(jid)
            if k is None:
                name, project, status = snap.jobs[jid]
                k = -1
                if can_see(project):
                    k = len(jobs)
                    jobs.append({"id": jid, "name": name, "project": project, "status": status})
                index[jid] = k
            col.append(k)
        nodes.append({**node, "job": col})
    return {"as_of": snap.as_of, "generated_at": snap.generated_at, "pool": pool, "jobs": jobs, "nodes": nodes,
            "pools": snap.pools, "legend": LEGEND}


def effective_state(n: dict) -> tuple[str, str]:
    """(state, reason) as `Node.effective_state`: an admin's cordon/drain shows on a ready node."""
    if n["admin_state"] and n["state"] == "ready":
        return n["admin_state"], n["admin_reason"] or ""
    return n["state"], n["state_reason"] or ""
