"""Scheduler benchmark: time full `run_cycle` calls on a standard, seeded scenario.

    python -m scheduler.bench [--json] [--repeat N] [--scaling] [--small] [--no-explain]

The standard scenario (seed 42, identical on every run): 1,000 nodes x 8 GPUs in two pools
(``operation``: 200 nodes lending idle capacity to innovation; ``innovation``: 800 nodes) and
three GPU models; 5 departments (OUH, SLB, SVS, SHS, RegionalIT); 200 projects with quotas
(20 operation projects, 180 innovation; nominal = a weighted share of the department's
flavors, a few with guarantees, limits and GPU-hour budgets); 2,000 running jobs packed onto the
nodes (about 90 % of the GPUs) and 10,000 pending jobs of 1 to 64 GPUs (above 8 GPUs a job is
split into 8-GPU workers), some pinned to one or two GPU models, a few with priorities.

Only `run_cycle` is timed (``time.perf_counter`` around the call; the snapshot is built once
beforehand). The policy is the default ``fair-backfill-preempt`` with ``explain=True`` (what
the broker runs) unless ``--no-explain``. Without ``--json`` (or with ``--scaling``) it also
prints a scaling table: pending 1k / 10k / 50k at 1,000 nodes, and nodes 100 / 1,000 / 5,000
at 10k pending (running jobs scale with the nodes: 2 per node).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from quotas.amount import UNLIMITED, ZERO, Amount
from scheduler.model import (
    POLICIES, CycleResult, Department, Flavor, Job, Node, Placement, Policy, Pool, Project, QuotaSpec,
    Resources, Running, Snapshot, WorkloadClass,
)

DEPARTMENTS: tuple[tuple[str, float], ...] = (("OUH", 3.0), ("SLB", 2.0), ("SVS", 2.0), ("SHS", 1.5), ("RegionalIT", 1.5))
MODELS: tuple[str, ...] = ("A100", "H100", "L40S")
OPERATION, INNOVATION = "operation", "innovation"
RUNNING_SIZES = ((1, 40), (2, 20), (4, 20), (8, 15), (16, 4), (32, 1))
PENDING_SIZES = ((1, 35), (2, 15), (4, 15), (8, 15), (16, 10), (32, 6), (64, 4))
NOW = 1_000_000.0
SEED = 42


@dataclass(frozen=True, slots=True)
class Scenario:
    nodes: int = 1000
    gpus_per_node: int = 8
    projects: int = 200
    running: int = 2000
    pending: int = 10000
    operation_fraction: float = 0.2  # of nodes and of projects
    seed: int = SEED


SMALL = Scenario(nodes=40, projects=12, running=60, pending=300)


def _pick(rng: random.Random, table: Sequence[tuple[int, int]]) -> int:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def build_snapshot(sc: Scenario) -> Snapshot:
    """The scenario's snapshot, deterministic for a given Scenario (seeded random)."""
    rng = random.Random(sc.seed)
    g = sc.gpus_per_node
    cap = Resources(gpus=g, cpus=16.0 * g, memory_gb=128.0 * g)
    n_op = max(1, round(sc.nodes * sc.operation_fraction))
    nodes = tuple(
        Node(id=f"node-{i:05d}", pool=OPERATION if i < n_op else INNOVATION, gpu_model=MODELS[i % len(MODELS)],
             capacity=cap)
        for i in range(sc.nodes)
    )
    pools = (Pool(OPERATION, WorkloadClass.OPERATION, lend_to_innovation=True), Pool(INNOVATION, WorkloadClass.INNOVATION))
    flavor_cap: dict[tuple[Flavor, str], float] = {}
    for n in nodes:
        for r in ("gpus", "cpus", "memory_gb"):
            flavor_cap[(n.flavor, r)] = flavor_cap.get((n.flavor, r), 0.0) + n.capacity.get(r)

    dept_w = sum(w for _, w in DEPARTMENTS)
    departments = tuple(
        Department(id=d, name=d, weight=w,
                   budget_gpu_hours=Amount.of(200_000) if d == "SHS" else UNLIMITED,
                   quotas={k: QuotaSpec(ZERO, Amount.of(round(v * w / dept_w, 3)), UNLIMITED)
                           for k, v in flavor_cap.items()})
        for d, w in DEPARTMENTS
    )
    n_op_proj = max(1, round(sc.projects * sc.operation_fraction))
    raw: list[tuple[str, str, bool, float]] = []
    for i in range(sc.projects):
        dept = DEPARTMENTS[i % len(DEPARTMENTS)][0]
        raw.append((f"{dept.lower()}-p{i:03d}", dept, i < n_op_proj, rng.choice((0.5, 1.0, 1.0, 2.0, 4.0))))
    projects: list[Project] = []
    for pid, dept, is_op, w in raw:
        pool = OPERATION if is_op else INNOVATION
        peers = [x for x in raw if x[1] == dept and x[2] == is_op]
        share = w / sum(x[3] for x in peers)
        dshare = dict(DEPARTMENTS)[dept] / dept_w
        quotas = {}
        for (fl, r), v in flavor_cap.items():
            if fl.pool != pool:
                continue
            nominal = round(v * dshare * share, 3)
            guaranteed = round(nominal * 0.25, 3) if rng.random() < 0.1 else 0.0
            limit = Amount.of(round(nominal * 3, 3)) if rng.random() < 0.3 else UNLIMITED
            quotas[(fl, r)] = QuotaSpec(Amount.of(guaranteed), Amount.of(nominal), limit)
        budget = rng.random() < 0.1
        projects.append(Project(
            id=pid, department=dept, weight=w,
            budget_gpu_hours=Amount.of(5000) if budget else UNLIMITED,
            spent_gpu_hours=rng.uniform(0, 5000) if budget else rng.uniform(0, 2000),
            decayed_usage_gpu_s=rng.uniform(0, 5e6),
            quotas=quotas,
        ))
    op_projects = [p for p, (_, _, is_op, _) in zip(projects, raw) if is_op]
    inno_projects = [p for p, (_, _, is_op, _) in zip(projects, raw) if not is_op]

    def make_job(jid: str, size: int, submit: float) -> Job:
        is_op = rng.random() < 0.15
        proj = rng.choice(op_projects if is_op else inno_projects)
        workers = max(1, size // g) if size > g else 1
        per = size // workers
        r = rng.random()
        models = (rng.choice(MODELS),) if r < 0.3 else (tuple(rng.sample(MODELS, 2)) if r < 0.4 else ())
        return Job(
            id=jid, project=proj.id,
            workload_class=WorkloadClass.OPERATION if is_op else WorkloadClass.INNOVATION,
            priority=rng.choice((0, 0, 0, 0, 1, 2)), submit_time=submit, workers=workers,
            per_worker=Resources(gpus=per, cpus=4.0 * per, memory_gb=32.0 * per),
            gpu_models=models, max_runtime_s=rng.choice((1, 2, 4, 8, 24, 48)) * 3600.0,
        )

    free = {n.id: g for n in nodes}
    by_pool = {p: [n for n in nodes if n.pool == p] for p in (OPERATION, INNOVATION)}
    usage: dict[str, float] = {}
    nominal = {p.id: sum(float(q.nominal) for (fl, r), q in p.quotas.items() if r == "gpus") for p in projects}
    running: list[Running] = []
    attempts = 0
    while len(running) < sc.running and attempts < sc.running * 20:
        attempts += 1
        job = make_job(f"run-{len(running):06d}", _pick(rng, RUNNING_SIZES), NOW - rng.uniform(600, 86400))
        pool = OPERATION if job.workload_class is WorkloadClass.OPERATION or rng.random() < 0.05 else INNOVATION
        cand = [n for n in by_pool[pool] if free[n.id] >= job.per_worker.gpus
                and (not job.gpu_models or n.gpu_model in job.gpu_models)]
        if len(cand) < job.workers:
            continue
        model = cand[0].gpu_model
        cand = [n for n in cand if n.gpu_model == model][: job.workers]
        if len(cand) < job.workers:
            continue
        for n in cand:
            free[n.id] -= job.per_worker.gpus
        usage[job.project] = usage.get(job.project, 0.0) + job.total.gpus
        lent = pool == OPERATION and job.workload_class is WorkloadClass.INNOVATION
        running.append(Running(
            job=job, placements=tuple(Placement(rank=i, node=n.id) for i, n in enumerate(cand)),
            start_time=job.submit_time + rng.uniform(0, 300), flavor=Flavor(pool, model),
            borrowing=lent or usage[job.project] > nominal[job.project],
        ))
    pending = tuple(make_job(f"pend-{i:06d}", _pick(rng, PENDING_SIZES), NOW - rng.uniform(0, 7200))
                    for i in range(sc.pending))
    return Snapshot(nodes=nodes, pools=pools, departments=departments, projects=tuple(projects),
                    running=tuple(running), pending=pending)


def time_cycles(snap: Snapshot, policy: Policy, repeat: int,
                cycle: Callable[[Snapshot, float, Policy], CycleResult]) -> tuple[list[float], list[float], CycleResult]:
    """Wall and CPU milliseconds of each of `repeat` run_cycle calls, and the (identical) last result.

    CPU time (time.process_time) is reported too because the benchmark machine is shared: wall
    time there measures the neighbours as much as the cycle."""
    times: list[float] = []
    cpu: list[float] = []
    result = None
    for _ in range(repeat):
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = cycle(snap, NOW, policy)
        times.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    assert result is not None
    return times, cpu, result


def p95(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, -(-95 * len(s) // 100) - 1))]


def summary(sc: Scenario, policy: Policy, repeat: int, cycle) -> dict:
    snap = build_snapshot(sc)
    times, cpu, res = time_cycles(snap, policy, repeat, cycle)
    return {
        "cycle_ms_median": round(statistics.median(times), 2),
        "cycle_cpu_ms_median": round(statistics.median(cpu), 2),
        "cycle_ms_p95": round(p95(times), 2),
        "cycle_ms_min": round(min(times), 2),
        "repeat": repeat,
        "admitted": len(res.admissions),
        "preempted": len(res.preemptions),
        "pending": len(res.pending),
        "pending_in": len(snap.pending),
        "nodes": len(snap.nodes),
        "gpus": sum(n.capacity.gpus for n in snap.nodes),
        "running": len(snap.running),
        "running_gpus": sum(r.job.total.gpus for r in snap.running),
        "projects": len(snap.projects),
        "policy": policy.name,
        "explain": policy.explain,
    }


SCALING_PENDING = (1_000, 10_000, 50_000)
SCALING_NODES = (100, 1_000, 5_000)


def scaling(base: Scenario, policy: Policy, repeat: int, cycle) -> list[dict]:
    """Cycle time as pending grows (nodes fixed) and as nodes grow (pending fixed)."""
    rows = []
    for p in SCALING_PENDING:
        sc = replace(base, pending=p)
        rows.append({"vary": "pending", **summary(sc, policy, repeat, cycle)})
    for n in SCALING_NODES:
        sc = replace(base, nodes=n, running=2 * n, pending=10_000)
        rows.append({"vary": "nodes", **summary(sc, policy, repeat, cycle)})
    return rows


def render(m: dict) -> str:
    keys = ("policy", "explain", "nodes", "gpus", "projects", "running", "running_gpus", "pending_in", "admitted",
            "preempted", "pending", "repeat", "cycle_ms_median", "cycle_ms_p95", "cycle_ms_min", "cycle_cpu_ms_median")
    w = max(map(len, keys))
    return "\n".join(f"{k:<{w}}  {m[k]}" for k in keys)


def render_scaling(rows: list[dict]) -> str:
    out = [f"{'vary':<8} {'nodes':>6} {'running':>8} {'pending':>8} {'admitted':>9} {'median ms':>10} {'p95 ms':>9} "
           f"{'cpu ms':>9}"]
    for r in rows:
        out.append(f"{r['vary']:<8} {r['nodes']:>6} {r['running']:>8} {r['pending_in']:>8} {r['admitted']:>9} "
                   f"{r['cycle_ms_median']:>10.1f} {r['cycle_ms_p95']:>9.1f} {r['cycle_cpu_ms_median']:>9.1f}")
    out.append(growth_sentence(rows))
    return "\n".join(out)


def growth_sentence(rows: list[dict]) -> str:
    """How the cost grows, read from the measured rows (ratio per x10 of input)."""
    def ratio(kind: str, lo: int, hi: int, key: str) -> str:
        a = next(r for r in rows if r["vary"] == kind and r[key] == lo)["cycle_cpu_ms_median"]
        b = next(r for r in rows if r["vary"] == kind and r[key] == hi)["cycle_cpu_ms_median"]
        return f"x{b / a:.1f}" if a > 0 else "n/a"
    return (f"CPU cost grows {ratio('pending', 1_000, 10_000, 'pending_in')} for 10x the pending jobs (1k to 10k) "
            f"and {ratio('pending', 10_000, 50_000, 'pending_in')} for 5x (10k to 50k); "
            f"{ratio('nodes', 100, 1_000, 'nodes')} for 10x the nodes (100 to 1,000) and "
            f"{ratio('nodes', 1_000, 5_000, 'nodes')} for 5x (1,000 to 5,000).")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (scaling rows under 'scaling' with --scaling)")
    ap.add_argument("--repeat", type=int, default=7, help="timed cycles (default 7)")
    ap.add_argument("--scaling", action="store_true", help="also run the scaling table")
    ap.add_argument("--small", action="store_true", help="a small scenario (for tests)")
    ap.add_argument("--no-explain", action="store_true", help="Policy(explain=False), as the simulator runs")
    ap.add_argument("--policy", choices=sorted(POLICIES), default="fair-backfill-preempt")
    ap.add_argument("--pending", type=int, help="override the number of pending jobs")
    ap.add_argument("--nodes", type=int, help="override the number of nodes (running = 2 per node)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        print("error: --repeat must be >= 1", file=sys.stderr)
        return 2
    from scheduler.cycle import run_cycle

    base = SMALL if args.small else Scenario()
    if args.pending is not None:
        base = replace(base, pending=args.pending)
    if args.nodes is not None:
        base = replace(base, nodes=args.nodes, running=2 * args.nodes)
    policy = POLICIES[args.policy]
    if args.no_explain:
        policy = replace(policy, explain=False)
    m = summary(base, policy, args.repeat, run_cycle)
    show_scaling = args.scaling or not args.json
    rows = []
    if show_scaling:
        rows = scaling(Scenario(), policy, max(1, min(args.repeat, 3)), run_cycle)
    if args.json:
        if rows:
            m["scaling"] = rows
        print(json.dumps(m, sort_keys=True))
    else:
        print(render(m))
        print()
        print(render_scaling(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
