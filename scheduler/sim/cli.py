"""The simulator's command line (`python -m scheduler.simulate`, alias `scheduler.sim.simulate`).

Exit codes: 0 the replay finished; 2 bad input (trace, cluster file, flags), the message names
the file line; 3 the replay cannot finish on this cluster (`ReplayError`: which jobs and why),
so a misconfigured replay never passes as a quiet, plausible result.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Sequence

from scheduler.cycle import DEFAULT_POLICY
from scheduler.model import POLICIES
from scheduler.sim.cluster import ClusterError, ReplayError, load_cluster
from scheduler.sim.metrics import JobOutcome, render_table
from scheduler.sim.simulate import DEFAULT_CYCLE_INTERVAL_S, DEFAULT_QUEUE_DEPTH, SimConfig, simulate
from scheduler.sim.traces import FORMATS, TraceError, TraceJob, load_trace

JOBS_COLUMNS: tuple[str, ...] = ("job_id", "project", "class", "gpus", "submit", "first_start", "end", "wait",
                                 "preemptions", "lost_gpu_s", "first_estimate")


def parse_window(text: str) -> tuple[float | None, float | None]:
    """'START:END' in seconds, each optional, with an optional s/m/h/d suffix ('7d:14d')."""
    if ":" not in text:
        raise ValueError(f"window must be START:END, got {text!r}")
    a, b = text.split(":", 1)
    return _duration(a), _duration(b)


def _duration(s: str) -> float | None:
    s = s.strip()
    if not s:
        return None
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(s[-1].lower())
    num = s[:-1] if unit else s
    try:
        return float(num) * (unit or 1)
    except ValueError:
        raise ValueError(f"bad time {s!r} (seconds, or a number with s/m/h/d)") from None


def window(jobs: Sequence[TraceJob], start: float | None, end: float | None) -> list[TraceJob]:
    """Jobs submitted in [start, end) (trace seconds)."""
    return [j for j in jobs if (start is None or j.submit_time >= start) and (end is None or j.submit_time < end)]


def write_jobs(path: str, outcomes: Sequence[JobOutcome]) -> None:
    """One CSV row per job, in submit order; empty cells for what never happened."""
    def cell(x: float | None) -> str:
        return "" if x is None else f"{x:.1f}"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(JOBS_COLUMNS)
        for o in sorted(outcomes, key=lambda o: (o.submit, o.id)):
            wait = None if o.first_start is None else o.first_start - o.submit
            w.writerow((o.id, o.project, o.workload_class, o.gpus, cell(o.submit), cell(o.first_start), cell(o.end),
                        cell(wait), o.preemptions, cell(o.lost_gpu_s), cell(o.first_estimate)))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scheduler.simulate",
                                 description="Trace-driven simulator: replay a job trace through `run_cycle` on a "
                                             "simulated clock.")
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", choices=FORMATS, default="canonical")
    ap.add_argument("--nodes", type=int, help="identical nodes (required unless --cluster)")
    ap.add_argument("--gpus-per-node", type=int, help="GPUs per node (required unless --cluster)")
    ap.add_argument("--cluster", help="inventory CSV (pool,gpu_model,gpus_per_node,nodes) instead of --nodes")
    ap.add_argument("--policy", choices=sorted(POLICIES), default=DEFAULT_POLICY.name,
                    help=f"default: the broker's default ({DEFAULT_POLICY.name})")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--explain", action="store_true",
                    help="compute pending reasons and estimated starts as the broker does; adds the ETA figures")
    ap.add_argument("--jobs-out", metavar="FILE", help="write one CSV row per job")
    ap.add_argument("--window", help="START:END submit-time window, e.g. 0:7d")
    ap.add_argument("--cycle-interval", type=float, default=DEFAULT_CYCLE_INTERVAL_S,
                    help="seconds between ticks (default 300; 0: a tick at every event)")
    ap.add_argument("--preempt-grace", type=float, default=0.0, help="seconds a preempted job takes to stop")
    ap.add_argument("--checkpoint-interval", type=float, default=0.0,
                    help="checkpointable jobs save every S s of run time and lose the rest on preemption "
                         "(default 0: they lose nothing)")
    ap.add_argument("--runtime-ratio", choices=("learned", "off"), default="learned",
                    help="Project.runtime_ratio learned from finished jobs as the broker does (default), or 1.0")
    ap.add_argument("--shares", choices=("equal", "demand"), default="equal")
    ap.add_argument("--queue-depth", type=int, default=DEFAULT_QUEUE_DEPTH,
                    help="pending jobs passed per project and cycle, at least free GPUs + 1 (default 32; 0: all)")
    ap.add_argument("--progress", action="store_true", help="progress lines on stderr")
    ap.add_argument("--operation-nodes", type=int, default=None,
                    help="nodes in an operation pool (default: a quarter if the trace has operation jobs, else 0)")
    return ap


def config(args: argparse.Namespace) -> SimConfig:
    """The SimConfig for parsed arguments. Raises ValueError / ClusterError for bad ones."""
    if args.cluster:
        if args.nodes is not None or args.gpus_per_node is not None or args.operation_nodes is not None:
            raise ValueError("--cluster replaces --nodes, --gpus-per-node and --operation-nodes")
        groups = tuple(load_cluster(args.cluster))
        nodes, gpn = sum(g.nodes for g in groups), max(g.gpus_per_node for g in groups if g.nodes)
    else:
        if args.nodes is None or args.gpus_per_node is None:
            raise ValueError("give --nodes and --gpus-per-node, or --cluster FILE")
        if args.nodes < 1 or args.gpus_per_node < 1:
            raise ValueError("--nodes and --gpus-per-node must be >= 1")
        groups, nodes, gpn = None, args.nodes, args.gpus_per_node
    if args.checkpoint_interval < 0:
        raise ValueError("--checkpoint-interval must be >= 0")
    return SimConfig(nodes=nodes, gpus_per_node=gpn, policy=POLICIES[args.policy],
                     cycle_interval=args.cycle_interval, preempt_grace=args.preempt_grace,
                     shares=args.shares, queue_depth=args.queue_depth, operation_nodes=args.operation_nodes,
                     progress=args.progress, checkpoint_interval=args.checkpoint_interval, explain=args.explain,
                     cluster=groups, learn_runtime_ratio=args.runtime_ratio == "learned")


def load_jobs(trace: str, fmt: str, window_text: str | None) -> list[TraceJob]:
    """The trace, cut to the window. Raises TraceError / ValueError."""
    jobs = load_trace(trace, fmt)
    if window_text:
        jobs = window(jobs, *parse_window(window_text))
        if not jobs:
            raise ValueError(f"no job submitted in window {window_text}")
    return jobs


def simulate_main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config(args)
        jobs = load_jobs(args.trace, args.format, args.window)
    except (TraceError, ClusterError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = simulate(jobs, cfg)
    except ReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if args.jobs_out:
        write_jobs(args.jobs_out, result.outcomes)
    if args.json:
        print(json.dumps(result.metrics, sort_keys=True))
    else:
        print(render_table(result.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(simulate_main())
