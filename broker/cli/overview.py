"""`broker pools` and `broker overview`: the region at a glance, as operations sees it.

"Allocated" is what the scheduler gave out, "used" what the GPUs report doing (node agents'
telemetry): the difference is the idle allocations the overview lists.
"""

from __future__ import annotations

from typing import Optional

import typer

from broker.cli import common, render
from broker.cli.common import INTERVAL, JSON_FLAG, OUTPUT, TOKEN, URL, WATCH, Output, emit, fmt_of, run


def pools_table(items: list[dict]) -> str:
    rows = [(p["name"], p["class"], "yes" if p.get("lend_to_innovation") else "", p["nodes"], p["gpus"],
             render.num(p["cpus"]), render.num(p["memory_gb"]), ",".join(p.get("gpu_models") or []) or "-",
             p.get("description") or "")
            for p in items]
    return render.table(("POOL", "CLASS", "LENDS", "NODES", "GPUS", "CPUS", "MEMORY GB", "MODELS", "DESCRIPTION"),
                        rows, right=("NODES", "GPUS", "CPUS", "MEMORY GB"))


def overview_view(o: dict) -> str:
    t = o["totals"]
    q = o["queue"]
    head = render.kv([
        ("GPUs", f"{t['gpus']} total, {t['gpus_allocated']} allocated, {t['gpus_used']} in use"
                 + (f", {t['idle_allocated_gpus']} allocated but idle" if t.get("idle_allocated_gpus") else "")),
        ("Queue", f"{q['pending']} pending, {q.get('starting', 0)} starting, {q['running']} running"
                  + (f"; oldest waits {render.duration(q['oldest_pending_wait_s'])}"
                     if q.get("oldest_pending_wait_s") else "")),
        ("Waiting for", ", ".join(f"{k} {v}" for k, v in sorted((q.get("by_reason") or {}).items())) or ""),
    ])
    pools = render.table(("POOL", "CLASS", "NODES", "GPUS", "SCHEDULABLE", "ALLOCATED", "USED", "POWER W"), [
        (p["name"], p["workload_class"], p["nodes"], p["gpus"], p["gpus_schedulable"], p["gpus_allocated"],
         p["gpus_used"], render.num(p.get("power_w"))) for p in o["pools"]],
        right=("NODES", "GPUS", "SCHEDULABLE", "ALLOCATED", "USED", "POWER W"))
    nodes = render.table(("NODE", "POOL", "MODEL", "STATE", "GPUS", "ALLOCATED", "USED", "UTIL %", "REPORTING"), [
        (n["id"], n["pool"], n["gpu_model"], n["state"], n["gpus"], n["gpus_allocated"], n["gpus_used"],
         render.num(n.get("util_gpu_avg")), "yes" if n.get("reporting") else "no") for n in o["nodes"]],
        right=("GPUS", "ALLOCATED", "USED", "UTIL %"))
    parts = [head, pools, nodes]
    if o.get("projects"):
        parts.append(render.table(("PROJECT", "RUNNING", "PENDING", "GPUS ALLOCATED", "GPUS USED", "BORROWING"), [
            (p["project"], p["running"], p["pending"], p["gpus_allocated"], p["gpus_used"], p["borrowing_gpus"])
            for p in o["projects"]], right=("RUNNING", "PENDING", "GPUS ALLOCATED", "GPUS USED", "BORROWING")))
    if o.get("idle_allocations"):
        parts.append("Allocated but idle:\n" + "\n".join(
            "  " + " ".join(f"{k}={v}" for k, v in a.items()) for a in o["idle_allocations"]))
    return "\n\n".join(parts)


def pools(output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Pools with their class, whether they lend idle GPUs to innovation, and their capacity."""
    with common.client(url, token) as c:
        emit(run(c.pools), fmt_of(output, as_json), pools_table)


def overview(output: Output = OUTPUT, as_json: bool = JSON_FLAG, watch: bool = WATCH, interval: float = INTERVAL,
             url: str = URL, token: Optional[str] = TOKEN):
    """GPUs allocated versus in use per pool, node and project, and the queue's health."""
    with common.client(url, token) as c:
        if watch:
            common.watch(lambda: overview_view(run(c.overview)), interval)
            return
        emit(run(c.overview), fmt_of(output, as_json), overview_view)
