"""Replay traces under several policies side by side and judge the default policy's targets.

    python -m scheduler.sim.compare --trace ../shared/traces/philly_pollux.csv --nodes 64,80,96 \\
        --gpus-per-node 8 [--trace-gen 7:operation-share=0.08,load=0.9] [--explain] [--jobs 4]
    python -m scheduler.sim.compare --trace-gen 7 --trace-gen 8:load=1.2 --nodes 40 --gpus-per-node 8

For each trace (``--trace FILE``, format detected from the header unless ``--format``; or
``--trace-gen SEED[:key=value,...]``, generated in memory by `scheduler.sim.generate`, whose
``cluster-gpus`` defaults to the replayed cluster's GPUs) and each cluster (``--nodes`` may
list several sizes; or ``--cluster FILE``) it runs every policy of
``--policies`` (default: fifo, fair, fair-backfill and the broker's default policy) with the
same settings, in ``--jobs`` parallel processes (default: one per CPU, at most one per run), and
prints a markdown table of the figures that matter for policy quality, then one PASS/FAIL line
per target for the default policy against ``fifo`` and ``fair`` on the same trace:

- operation p99 wait <= one cycle interval + the preemption grace;
- innovation avg, p95 and p99 wait <= 1.05 x fair's;
- max wait <= fifo's;
- GPU-seconds lost to preemption <= 2 % of the trace's GPU-seconds;
- utilization >= fifo's - 0.5 points; Jain (project slowdown) >= fair's;
- with ``--explain``: ETA error median <= 0.25, p90 <= 1.0, coverage >= 90 %;
- without ``--explain``: replay wall time <= 120 s (meant for the full Philly trace);

and, when both ran, whether ``fair-backfill`` is no worse than ``fair`` on those figures.
A target whose reference policy did not run, or that has no jobs to judge (no operation jobs),
says n/a. The settings default to the simulator's (300 s ticks, grace 0, equal shares, queue
depth 32) except ``--checkpoint-interval`` (1800 s: checkpointable jobs lose the work since their
last half-hourly checkpoint; it changes nothing for a trace without checkpointable jobs).

While tuning one policy, ``--reuse FILE`` takes ``fifo`` and ``fair`` from an earlier
``--json-out FILE`` run with the same trace and settings instead of replaying them again (the
baselines' decisions do not change while another policy is tuned; rerun them without
``--reuse`` after changing code they use):

    python -m scheduler.sim.compare --trace philly.csv --nodes 64 --gpus-per-node 8 --json-out base.json
    python -m scheduler.sim.compare --trace philly.csv --nodes 64 --gpus-per-node 8 --reuse base.json \
        --policies fair-backfill-preempt

Exit status: 0 when every replay finished (whatever the targets say; ``--strict`` makes a
failed target exit 1), 2 for bad input, 3 when a replay cannot finish (its reason is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Sequence

from scheduler.cycle import DEFAULT_POLICY
from scheduler.model import POLICIES
from scheduler.sim.cli import config, parse_window, window
from scheduler.sim.cluster import ClusterError, ReplayError
from scheduler.sim.generate import generate, parse_spec
from scheduler.sim.simulate import DEFAULT_CYCLE_INTERVAL_S, DEFAULT_QUEUE_DEPTH, SimConfig, simulate
from scheduler.sim.traces import TraceError, TraceJob, load_trace, parse_lines

BASELINES = ("fifo", "fair", "fair-backfill")
REUSABLE = ("fifo", "fair")  # the fixed baselines, which --reuse may take from an earlier run
INNOVATION_SLACK = 1.05
LOST_LIMIT = 0.02
UTILIZATION_SLACK = 0.005
ETA_P50_LIMIT, ETA_P90_LIMIT, ETA_COVERAGE_MIN = 0.25, 1.0, 0.9
REPLAY_LIMIT_S = 120.0
DEFAULT_CHECKPOINT_INTERVAL_S = 1800.0


@dataclass(frozen=True, slots=True)
class TraceSource:
    """A trace to replay: a file (with its format) or a generator spec."""

    label: str
    path: str = ""
    fmt: str = "canonical"
    gen: str = ""

    def load(self, window_text: str | None) -> list[TraceJob]:
        jobs = parse_lines(generate(parse_spec(self.gen)).splitlines()) if self.gen else load_trace(self.path, self.fmt)
        if window_text:
            jobs = window(jobs, *parse_window(window_text))
            if not jobs:
                raise ValueError(f"{self.label}: no job submitted in window {window_text}")
        return jobs


@dataclass(frozen=True, slots=True)
class Case:
    """One trace on one cluster: a table of its own, with every policy."""

    source: TraceSource
    cfg: SimConfig

    @property
    def where(self) -> str:
        c = self.cfg
        if c.cluster:
            return f"{sum(g.nodes for g in c.cluster)} nodes, {sum(g.nodes * g.gpus_per_node for g in c.cluster)} GPUs (inventory)"
        return f"{c.nodes} x {c.gpus_per_node} GPUs"

    @property
    def label(self) -> str:
        return f"{self.source.label} @ {self.where}"


def detect_format(path: str) -> str:
    """philly-pollux when the header names its columns, else canonical."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
    except OSError as e:
        raise TraceError(0, f"cannot read trace: {e.strerror or e}", path) from None
    return "philly-pollux" if "num_gpus" in header and "cluster" in header else "canonical"


# -- running ---------------------------------------------------------------------------------

_LOADED: dict[tuple[TraceSource, str | None], list[TraceJob]] = {}  # per worker process


@dataclass(frozen=True, slots=True)
class Task:
    """One replay for a worker process: case `index` of the report under `policy`."""

    index: int
    source: TraceSource
    policy: str
    cfg: SimConfig
    window: str | None


def run_one(task: Task) -> tuple[Task, dict | str]:
    """Replay one (trace, policy); returns the metrics, or the reason it cannot finish."""
    key = (task.source, task.window)
    if key not in _LOADED:  # a worker keeps the last trace it loaded (sizes of one trace share it)
        _LOADED.clear()
        _LOADED[key] = task.source.load(task.window)
    try:
        return task, simulate(_LOADED[key], replace(task.cfg, policy=POLICIES[task.policy])).metrics
    except ReplayError as e:
        return task, str(e)


def settings(case: Case, window_text: str | None) -> dict:
    """What a replay's figures depend on besides the policy and the code (kept with --json-out)."""
    source, cfg = case.source, case.cfg
    return {"trace": source.gen or os.path.abspath(source.path), "format": source.fmt, "window": window_text,
            "nodes": cfg.nodes, "gpus_per_node": cfg.gpus_per_node, "operation_nodes": cfg.operation_nodes,
            "cluster": [list(map(str, (g.pool, g.gpu_model, g.gpus_per_node, g.nodes, g.workload_class.value,
                                       g.cpus_per_node, g.memory_gb_per_node))) for g in cfg.cluster or ()],
            "cycle_interval": cfg.cycle_interval, "preempt_grace": cfg.preempt_grace, "shares": cfg.shares,
            "queue_depth": cfg.queue_depth, "checkpoint_interval": cfg.checkpoint_interval, "explain": cfg.explain,
            "runtime_ratio": "learned" if cfg.learn_runtime_ratio else "off"}


def reusable(path: str, cases: Sequence[Case], window_text: str | None) -> list[dict]:
    """Per case, the baseline results (REUSABLE policies) of an earlier --json-out run with the
    same settings; empty where it has none."""
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    out = []
    for c in cases:
        entry = next((e for e in old.values() if e.get("settings") == settings(c, window_text)), None)
        res = entry["results"] if entry else {}
        out.append({p: res[p] for p in REUSABLE if isinstance(res.get(p), dict)})
    return out


def run_all(cases: Sequence[Case], policies: Sequence[str], window_text: str | None,
            jobs: int, reused: Sequence[dict] = ()) -> list[dict[str, dict | str]]:
    """Every (case, policy) replay not in `reused`, `jobs` at a time; the slowest policies start first."""
    cost = {"fifo": 0, "fair": 1, "fair-backfill": 2}
    results: list[dict[str, dict | str]] = [dict(reused[i]) if i < len(reused) else {} for i in range(len(cases))]
    for i, r in enumerate(results):
        if r:
            print(f"{cases[i].label}: reusing {', '.join(sorted(r))}", file=sys.stderr)
    tasks = sorted((Task(i, c.source, p, c.cfg, window_text) for i, c in enumerate(cases) for p in policies
                    if p not in results[i]), key=lambda t: (-cost.get(t.policy, 3), t.index))
    t0 = time.perf_counter()
    jobs = max(1, min(jobs, len(tasks)))
    if not tasks:
        return results
    if jobs == 1:
        done = map(run_one, tasks)
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ctx.Pool(jobs)
        done = pool.imap_unordered(run_one, tasks)
    try:
        for task, m in done:
            i, policy = task.index, task.policy
            results[i][policy] = m
            what = f"wall {m['wall_s']:.0f} s" if isinstance(m, dict) else "cannot finish"
            print(f"[{time.perf_counter() - t0:6.0f} s] {cases[i].label}: {policy} done ({what})",
                  file=sys.stderr, flush=True)
    finally:
        if jobs > 1:
            pool.close()
            pool.join()
    return results


# -- judging ---------------------------------------------------------------------------------


def targets(res: dict[str, dict], default: str, cycle_interval: float, grace: float,
            explain: bool) -> list[tuple[bool | None, str]]:
    """(passed, line) per target of the default policy; passed is None for n/a."""
    d = res.get(default)
    if not isinstance(d, dict):
        return [(None, f"{default} did not run")]
    fifo, fair = res.get("fifo"), res.get("fair")
    fifo = fifo if isinstance(fifo, dict) else None
    fair = fair if isinstance(fair, dict) else None
    out: list[tuple[bool | None, str]] = []
    op = d["per_class"]["operation"]
    limit = cycle_interval + grace
    if op["jobs"]:
        out.append((op["p99_wait_s"] <= limit,
                    f"operation p99 wait {_s(op['p99_wait_s'])} <= one cycle + grace ({_s(limit)})"))
    else:
        out.append((None, "operation p99 wait: n/a (no operation jobs)"))
    for q in ("avg", "p95", "p99"):
        key = f"{q}_wait_s"
        mine = d["per_class"]["innovation"][key]
        if fair is None:
            out.append((None, f"innovation {q} wait: n/a (fair did not run)"))
        else:
            ref = fair["per_class"]["innovation"][key]
            out.append((mine <= INNOVATION_SLACK * ref,
                        f"innovation {q} wait {_s(mine)} <= 1.05 x fair's ({_s(INNOVATION_SLACK * ref)})"))
    if fifo is None:
        out.append((None, "max wait: n/a (fifo did not run)"))
        out.append((None, "utilization: n/a (fifo did not run)"))
    else:
        out.append((d["max_wait_s"] <= fifo["max_wait_s"],
                    f"max wait {_s(d['max_wait_s'])} <= fifo's ({_s(fifo['max_wait_s'])})"))
        out.append((d["utilization"] >= fifo["utilization"] - UTILIZATION_SLACK,
                    f"utilization {d['utilization']:.4f} >= fifo's - 0.5 points ({fifo['utilization'] - UTILIZATION_SLACK:.4f})"))
    out.append((d["lost_fraction"] <= LOST_LIMIT, f"GPU-seconds lost {d['lost_fraction']:.2%} <= 2 %"))
    if fair is None:
        out.append((None, "Jain: n/a (fair did not run)"))
    else:
        out.append((d["jain_fairness"] >= fair["jain_fairness"],
                    f"Jain {d['jain_fairness']:.4f} >= fair's ({fair['jain_fairness']:.4f})"))
    if explain:
        out.append((d["eta_error_p50"] <= ETA_P50_LIMIT, f"ETA error median {d['eta_error_p50']:.3f} <= 0.25"))
        out.append((d["eta_error_p90"] <= ETA_P90_LIMIT, f"ETA error p90 {d['eta_error_p90']:.3f} <= 1.0"))
        out.append((d["eta_coverage"] >= ETA_COVERAGE_MIN, f"ETA coverage {d['eta_coverage']:.1%} >= 90 %"))
    else:
        out.append((d["wall_s"] <= REPLAY_LIMIT_S, f"replay {d['wall_s']:.1f} s <= 120 s (wall; CPU {d['cpu_s']:.1f} s)"))
    fb = res.get("fair-backfill")
    if fair is not None and isinstance(fb, dict):
        worse = [name for name, get, better in _FIGURES if not _no_worse(get(fb), get(fair), better)]
        out.append((not worse, "fair-backfill no worse than fair" + (f" (worse: {', '.join(worse)})" if worse else "")))
    return out


def _no_worse(x: float, ref: float, better: str) -> bool:
    return x <= ref + 1e-9 if better == "lower" else x >= ref - 1e-9


def _s(x: float) -> str:
    return f"{x:,.0f} s"


# (row label, getter, which way is better): the figures of the targets, also the table's first rows
_FIGURES = (
    ("operation p99 wait (s)", lambda m: m["per_class"]["operation"]["p99_wait_s"], "lower"),
    ("innovation avg wait (s)", lambda m: m["per_class"]["innovation"]["avg_wait_s"], "lower"),
    ("innovation p95 wait (s)", lambda m: m["per_class"]["innovation"]["p95_wait_s"], "lower"),
    ("innovation p99 wait (s)", lambda m: m["per_class"]["innovation"]["p99_wait_s"], "lower"),
    ("max wait (s)", lambda m: m["max_wait_s"], "lower"),
    ("lost fraction", lambda m: m["lost_fraction"], "lower"),
    ("utilization", lambda m: m["utilization"], "higher"),
    ("Jain (project slowdown)", lambda m: m["jain_fairness"], "higher"),
)
_ETA_ROWS = (("ETA error median", "eta_error_p50"), ("ETA error p90", "eta_error_p90"),
             ("ETA coverage", "eta_coverage"), ("ETA late share", "eta_late_share"))
_INFO_ROWS = (("operation avg wait (s)", lambda m: m["per_class"]["operation"]["avg_wait_s"]),
              ("avg JCT (s)", lambda m: m["avg_jct_s"]), ("preemptions", lambda m: m["preemptions"]),
              ("lost GPU-s", lambda m: m["lost_gpu_s"]), ("jobs (operation)", lambda m: m["per_class"]["operation"]["jobs"]),
              ("replay wall / CPU (s)", lambda m: f"{m['wall_s']:.0f} / {m['cpu_s']:.0f}"))


def _fmt(label: str, x: object) -> str:
    """Seconds, counts and GPU-seconds as whole numbers; shares and indexes with 4 decimals."""
    if isinstance(x, str):
        return x
    if label.endswith("(s)") or isinstance(x, int) or "GPU-s" in label:
        return f"{x:,.0f}"
    return f"{x:.4f}"


def table(res: dict[str, dict | str], policies: Sequence[str], default: str, explain: bool) -> str:
    """One markdown table: a row per figure, a column per policy."""
    heads = [f"{p} (default)" if p == default else p for p in policies]
    lines = ["| figure | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(policies)]
    rows = [(n, g) for n, g, _ in _FIGURES]
    if explain:
        rows += [(n, (lambda k: lambda m: m[k])(k)) for n, k in _ETA_ROWS]
    rows += list(_INFO_ROWS)
    for name, get in rows:
        cells = [_fmt(name, get(res[p])) if isinstance(res.get(p), dict) else "error" for p in policies]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(cases: Sequence[Case], results: list[dict], policies: Sequence[str], default: str,
           explain: bool) -> tuple[str, bool]:
    """The markdown report and whether every target passed."""
    out: list[str] = []
    all_ok = True
    tally: Counter[bool | None] = Counter()
    for case, res in zip(cases, results):
        cfg = case.cfg
        any_m = next((m for m in res.values() if isinstance(m, dict)), None)
        jobs = f"{any_m['jobs'] + any_m['unfinished']:,} jobs, " if any_m else ""
        out.append(f"### {case.source.label}: {jobs}{case.where}, {cfg.cycle_interval:g} s ticks, "
                   f"grace {cfg.preempt_grace:g} s, checkpoint every {cfg.checkpoint_interval:g} s"
                   f"{', explain' if explain else ''}\n")
        out.append(table(res, policies, default, explain))
        for p in policies:
            if isinstance(res.get(p), str):
                out.append(f"\n{p}: error: {res[p]}")
        out.append(f"\nTargets for {default} (the default policy):\n")
        for ok, line in targets(res, default, cfg.cycle_interval, cfg.preempt_grace, explain):  # type: ignore[arg-type]
            all_ok &= ok is not False
            tally[ok] += 1
            out.append(f"- {'PASS' if ok else 'n/a ' if ok is None else 'FAIL'} {line}")
        out.append("")
    out.append(f"{default}: {tally[True]} of {tally[True] + tally[False]} targets met over {len(cases)} "
               f"trace(s) and cluster(s){f' ({tally[None]} n/a)' if tally[None] else ''}.")
    return "\n".join(out), all_ok


def summary(results: list[dict], policies: Sequence[str], default: str) -> str:
    """Across every trace and cluster, one line per policy against `fair`: the geometric mean of
    its innovation avg/p95/p99 wait ratios, on how many traces all three stay within 1.05 x,
    the mean and worst lost fraction, the geometric mean of its Jain ratio and the worst
    operation p99 wait. One trace can swing on a single project (see docs/scheduling-policy.md):
    a policy is judged on the set, not on one table. Empty without `fair`."""
    keys = ("avg_wait_s", "p95_wait_s", "p99_wait_s")
    pairs = [(r["fair"], r) for r in results if isinstance(r.get("fair"), dict)]
    if not pairs:
        return ""
    lines = [f"Across {len(pairs)} trace(s) and cluster(s), against fair (geometric means of the ratios):\n",
             "| policy | innovation avg / p95 / p99 wait | within 1.05 x on all three | lost mean / worst | Jain | "
             "operation p99 worst (s) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in policies:
        if p == "fair":
            continue
        got = [(f, r[p]) for f, r in pairs if isinstance(r.get(p), dict)]
        if not got:
            continue
        logs = [0.0, 0.0, 0.0]
        jain = within = 0.0
        lost: list[float] = []
        op99 = 0.0
        for f, m in got:
            fi, mi = f["per_class"]["innovation"], m["per_class"]["innovation"]
            ratios = [(mi[k] + 1.0) / (fi[k] + 1.0) for k in keys]  # +1 s: a trace with no wait at all
            logs = [a + math.log(x) for a, x in zip(logs, ratios)]
            within += all(x <= INNOVATION_SLACK for x in ratios)
            jain += math.log(max(m["jain_fairness"], 1e-9) / max(f["jain_fairness"], 1e-9))
            lost.append(m["lost_fraction"])
            op99 = max(op99, m["per_class"]["operation"]["p99_wait_s"])
        n = len(got)
        name = f"{p} (default)" if p == default else p
        lines.append(f"| {name} | {' / '.join(f'{math.exp(a / n):.3f}' for a in logs)} | {within:.0f} of {n} | "
                     f"{100 * sum(lost) / n:.2f} % / {100 * max(lost):.2f} % | {math.exp(jain / n):.3f} | {op99:,.0f} |")
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------


def _sizes(text: str | None) -> list[int | None]:
    """'64' or '64,80,96' -> node counts; None (no --nodes: an inventory) -> [None]."""
    if text is None:
        return [None]
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--nodes must be a number or a comma-separated list of numbers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.sim.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--trace", action="append", default=[], help="trace file (repeatable)")
    ap.add_argument("--format", choices=("auto", "canonical", "philly-pollux"), default="auto")
    ap.add_argument("--trace-gen", action="append", default=[], metavar="SEED[:key=value,...]",
                    help="a generated trace (repeatable), e.g. 7:operation-share=0.08,load=0.9")
    ap.add_argument("--nodes", help="nodes, or a comma-separated list (each size gets its own tables)")
    ap.add_argument("--gpus-per-node", type=int)
    ap.add_argument("--cluster", help="inventory CSV instead of --nodes/--gpus-per-node")
    ap.add_argument("--operation-nodes", type=int)
    ap.add_argument("--policies", default=",".join(dict.fromkeys((*BASELINES, DEFAULT_POLICY.name))))
    ap.add_argument("--default", default=DEFAULT_POLICY.name, help="the policy the targets judge")
    ap.add_argument("--explain", action="store_true", help="reasons and estimates as the broker; ETA figures")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel replays")
    ap.add_argument("--window")
    ap.add_argument("--cycle-interval", type=float, default=DEFAULT_CYCLE_INTERVAL_S)
    ap.add_argument("--preempt-grace", type=float, default=0.0)
    ap.add_argument("--checkpoint-interval", type=float, default=DEFAULT_CHECKPOINT_INTERVAL_S)
    ap.add_argument("--shares", choices=("equal", "demand"), default="equal")
    ap.add_argument("--runtime-ratio", choices=("learned", "off"), default="learned",
                    help="Project.runtime_ratio learned from finished jobs as the broker does (default), or 1.0")
    ap.add_argument("--queue-depth", type=int, default=DEFAULT_QUEUE_DEPTH)
    ap.add_argument("--json-out", metavar="FILE", help="also write every replay's metrics and the verdicts as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument("--reuse", metavar="FILE", help="take fifo and fair from an earlier --json-out run with the same "
                                                    "settings instead of replaying them (while tuning another policy)")
    args = ap.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    try:
        bad = [p for p in policies + [args.default] if p not in POLICIES]
        if bad:
            raise ValueError(f"unknown policy {bad[0]!r} (known: {', '.join(sorted(POLICIES))})")
        if not args.trace and not args.trace_gen:
            raise ValueError("give at least one --trace or --trace-gen")
        files = [TraceSource(os.path.basename(p), path=p,
                             fmt=detect_format(p) if args.format == "auto" else args.format) for p in args.trace]
        for s in files:  # fail fast on a bad file before starting the replays
            s.load(args.window)
        cases = []
        for nodes in _sizes(args.nodes):
            sim_args = argparse.Namespace(**{**vars(args), "nodes": nodes, "policy": args.default, "progress": False})
            cfg = config(sim_args)
            gpus = sum(g.nodes * g.gpus_per_node for g in cfg.cluster) if cfg.cluster else cfg.nodes * cfg.gpus_per_node
            cases += [Case(s, cfg) for s in files]
            for g in args.trace_gen:
                text = g if "cluster" in g else f"{g}{',' if ':' in g else ':'}cluster-gpus={gpus}"
                parse_spec(text)
                cases.append(Case(TraceSource(f"generated {text}", gen=text), cfg))
    except (TraceError, ClusterError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        reused = reusable(args.reuse, cases, args.window) if args.reuse else []
    except (OSError, ValueError) as e:
        print(f"error: --reuse: {e}", file=sys.stderr)
        return 2
    results = run_all(cases, policies, args.window, args.jobs, reused)
    policies = list(dict.fromkeys([p for p in REUSABLE if any(p in r for r in reused)] + policies))
    text, ok = report(cases, results, policies, args.default, args.explain)
    print(text)
    if len(cases) > 1:
        print("\n" + summary(results, policies, args.default))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({c.label: {"settings": settings(c, args.window), "results": r, "targets": [
                {"passed": ok_, "target": line} for ok_, line in
                targets(r, args.default, c.cfg.cycle_interval, c.cfg.preempt_grace, args.explain)]}  # type: ignore[arg-type]
                for c, r in zip(cases, results)}, f, indent=1, sort_keys=True)
    if any(isinstance(m, str) for r in results for m in r.values()):
        return 3
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
