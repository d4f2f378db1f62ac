"""`broker bench submit|reads|ingest|dispatch|kueue|cli|service|dashboards`: the broker's benchmarks from a shell (JSON with --json).

Each command runs one function of `broker.bench` and prints its result, as one JSON object with
`--json` or as a few readable lines; the options the benchmarks share are declared once here.
Goals on PostgreSQL here: submit jobs_per_s >= 500, p95_ms <= 50; ingest samples_per_s >= 20,000;
dispatch ratio <= 0.5; kueue wall_s <= 120 and usage_pct >= 80; dashboards p95 <= 250 ms; errors 0 everywhere.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

import typer

app = typer.Typer(help="Benchmarks (JSON with --json).", no_args_is_help=True)

AS_JSON = typer.Option(False, "--json", help="print one JSON object")
DATABASE = typer.Option(None, "--database", metavar="URL",
                        help="DB URL (default: PostgreSQL at 127.0.0.1:5432/test if up, else SQLite)")


def _emit(out: dict, as_json: bool, lines: Callable[[dict], list[str]]) -> None:
    """The result as one JSON line, or the benchmark's readable lines and its error samples."""
    if as_json:
        typer.echo(json.dumps(out))
        return
    for line in lines(out):
        typer.echo(line)
    for s in out.get("error_samples", []):
        typer.echo(f"  error: {s}")


@app.command("submit")
def bench_submit(
    as_json: bool = AS_JSON,
    database: Optional[str] = DATABASE,
    concurrency: int = typer.Option(16, "--concurrency", "-c", metavar="N", help="keep-alive connections"),
    duration: float = typer.Option(10.0, "--duration", "-d", metavar="SECONDS", help="measured seconds (after a 1 s warm-up)"),
    workers: int = typer.Option(1, "--workers", metavar="N", help="uvicorn worker processes"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline",
                                  help="also measure the plain FastAPI+SQLModel endpoint and print the ratio"),
    baseline_workers: Optional[int] = typer.Option(None, "--baseline-workers", metavar="N",
                                                   help="uvicorn workers of the plain FastAPI baseline (default: --workers)"),
    repeat: int = typer.Option(1, "--repeat", "-r", metavar="N", help="runs of each (alternating); report the median run"),
):
    """Concurrent POST /api/v1/jobs; every 201 is checked to be a row in the DB afterwards."""
    from broker.bench.submit import bench

    out = bench(database=database, concurrency=concurrency, duration_s=duration, workers=workers,
                baseline=baseline, baseline_workers=baseline_workers, repeat=repeat)
    _emit(out, as_json, _submit_lines)


def _submit_lines(out: dict) -> list[str]:
    def line(r):
        return (f"{r['mode']:9} {r['jobs_per_s']:8.1f} jobs/s  p50 {r['p50_ms']:6.1f} ms  p95 {r['p95_ms']:6.1f} ms  "
                f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  ({r['requests']} requests, {r['verified']} rows "
                f"verified, c={r['concurrency']}, workers={r['server_workers']})")
    lines = [f"database: {out['database']}", line(out)]
    if "baseline" in out:
        lines += [line(out["baseline"]), f"ratio: {out['ratio']}x the baseline's throughput"]
    lines += [f"  run: {r['mode']:9} {r['jobs_per_s']:8.1f} jobs/s  p50 {r['p50_ms']:6.1f} ms  "
              f"p95 {r['p95_ms']:6.1f} ms  errors {r['errors']}" for r in out.get("runs", [])]
    return lines


@app.command("reads")
def bench_reads(
    as_json: bool = AS_JSON,
    database: Optional[str] = DATABASE,
    queue: int = typer.Option(35_000, "--queue", metavar="N", help="PENDING jobs in the database during the run"),
    projects: int = typer.Option(50, "--projects", metavar="N", help="projects the queue is spread over"),
    users: int = typer.Option(50, "--users", "-u", metavar="N", help="keep-alive connections, each reading back to back"),
    duration: float = typer.Option(20.0, "--duration", "-d", metavar="SECONDS", help="measured seconds (after a 2 s warm-up)"),
    overview_max_age: Optional[float] = typer.Option(None, "--overview-max-age", metavar="SECONDS",
                                                     help="the server's overview snapshot age in s (0: fresh "
                                                          "on every request); default: the setting's default"),
):
    """Overview, /metrics, job list and job get under load with a deep queue: p50/p95 each."""
    from broker.bench.reads import bench

    out = bench(database=database, queue=queue, projects=projects, users=users, duration_s=duration,
                overview_max_age_s=overview_max_age)
    _emit(out, as_json, _reads_lines)


def _reads_lines(out: dict) -> list[str]:
    lines = [f"database: {out['database']}  queue: {out['queue']} pending jobs  users: {out['users']}  "
             f"{out['requests_per_s']} requests/s  errors {out['errors']}"]
    for name, e in out["endpoints"].items():
        lines.append(f"  {name:9} p50 {e['p50_ms']:7.1f} ms  p95 {e['p95_ms']:7.1f} ms  p99 {e['p99_ms']:7.1f} ms  "
                     f"({e['requests']} requests, {e['errors']} errors)")
    return lines


@app.command("ingest")
def bench_ingest(
    as_json: bool = AS_JSON,
    database: Optional[str] = DATABASE,
    nodes: int = typer.Option(48, "--nodes", "-n", metavar="N", help="simulated agents (one keep-alive connection each)"),
    gpus: int = typer.Option(8, "--gpus", metavar="N", help="GPUs per node"),
    readings: int = typer.Option(25, "--readings", metavar="N", help="readings per GPU in one report (25 x 8 GPUs = 200 samples, the agent's largest report)"),
    duration: float = typer.Option(10.0, "--duration", "-d", metavar="SECONDS", help="measured seconds (after a 2 s warm-up)"),
    repeat: int = typer.Option(1, "--repeat", metavar="N", help="runs; the median-throughput run is reported"),
    workers: int = typer.Option(3, "--workers", metavar="N", help="uvicorn worker processes (3 on 2 cores: requests wait on PostgreSQL part of the time)"),
):
    """Agents push reports back to back; every acknowledged sample is checked to be stored."""
    from broker.bench.ingest import bench_repeat

    out = bench_repeat(repeat, database=database, nodes=nodes, gpus=gpus, readings=readings, duration_s=duration,
                       workers=workers)
    _emit(out, as_json, _ingest_lines)


def _ingest_lines(out: dict) -> list[str]:
    lines = [f"database: {out['database']}",
             f"{out['samples_per_s']:10.1f} samples/s  ({out['reports_per_s']} reports/s of {out['samples_per_report']} "
             f"samples, {out['report_bytes']} bytes)  p50 {out['p50_ms']} ms  p95 {out['p95_ms']} ms  "
             f"p99 {out['p99_ms']} ms  errors {out['errors']}  stored {out['samples_stored']}  "
             f"c={out['concurrency']} workers={out['server_workers']}",
             f"CPU s: {out['cpu_s']}  -> {out['samples_per_cpu_s']} samples per CPU second "
             f"(load average {out['load_avg_1m']})"]
    if len(out.get("runs", [])) > 1:
        lines += [f"  run: {r}" for r in out["runs"]]
    return lines


@app.command("dispatch")
def bench_dispatch(
    as_json: bool = AS_JSON,
    n: int = typer.Option(20, "--jobs", "-n", metavar="N", min=1, help="measured jobs per path"),
    gpus: int = typer.Option(2, "--gpus", metavar="N", min=1, help="logical GPUs of the local Ray node"),
    warm: int = typer.Option(2, "--warm-runners", metavar="N", min=0,
                             help="spare runner actors per node (0: the cold path)"),
    isolation: bool = typer.Option(False, "--isolation",
                                   help="container jobs with and without the sandbox, alternately (goal <= +10 %)"),
):
    """Start an idle local Ray node and a broker on it, then time both dispatch paths."""
    from broker.bench.dispatch import bench

    if isolation:
        _emit(bench(n, gpus_per_node=gpus, warm_runners=warm, isolation=True), as_json, _isolation_lines)
        return
    _emit(bench(n, gpus_per_node=gpus, warm_runners=warm), as_json, _dispatch_lines)


def _isolation_lines(out: dict) -> list[str]:
    verdict = "meets" if out["ratio"] <= out["goal_ratio"] else "misses"
    return [f"container, sandboxed (leased netns, read-only, no caps, limits): median {out['isolated_ms_median']:.1f} ms",
            f"container, host network, no sandbox:                           median {out['host_ms_median']:.1f} ms",
            f"ratio {out['ratio']:.3f} ({verdict} the goal <= {out['goal_ratio']}), n={out['n']} each; "
            f"median of the back-to-back pairs' ratios {out['paired_ratio_median']:.3f}; "
            f"load average {out['load_1min'][0]} -> {out['load_1min'][1]}"]


def _dispatch_lines(out: dict) -> list[str]:
    verdict = "meets" if out["ratio"] <= out["goal_ratio"] else "misses"
    return [f"broker (REST -> scheduling loop -> Ray runner): median {out['broker_ms_median']:.1f} ms",
            f"Ray Jobs API (submit_job):                      median {out['ray_jobs_ms_median']:.1f} ms",
            f"ratio {out['ratio']:.3f} ({verdict} the goal <= {out['goal_ratio']}), n={out['n']}, "
            f"warm runners per node: {out['warm_runners']}"]


@app.command("kueue")
def bench_kueue(
    as_json: bool = AS_JSON,
    database: Optional[str] = DATABASE,
    scale: float = typer.Option(1.0, "--scale", metavar="N", min=0.001, help="fraction of each queue's jobs (1.0: 15,000 jobs)"),
    priority_preemption: bool = typer.Option(True, "--priority-preemption/--no-priority-preemption",
                                             help="higher priority preempts lower in a project (Kueue's scenario)"),
    connections: int = typer.Option(8, "--connections", metavar="N", min=1, help="keep-alive connections of the submitter"),
    timeout: float = typer.Option(900.0, "--timeout", metavar="SECONDS", help="seconds to wait for every job to end"),
    profile: Optional[str] = typer.Option(None, "--profile", metavar="FILE",
                                          help="write cProfile stats of the scheduling loop's ticks to FILE (pstats)"),
):
    """Kueue's scheduler performance scenario through the API, the scheduling loop and a fake executor."""
    from broker.bench.kueue import bench

    out = bench(scale=scale, database=database, priority_preemption=priority_preemption, connections=connections,
                timeout_s=timeout, profile=profile)
    _emit(out, as_json, _kueue_lines)
    if not out["ok"]:
        raise typer.Exit(1)


def _kueue_lines(out: dict) -> list[str]:
    k, g = out["kueue"], out["goal"]
    lines = [f"database: {out['database']}  scale {out['scale']}  jobs {out['jobs']}  succeeded {out['succeeded']}  "
             f"policy {out['policy']} (priority preemption {'on' if out['priority_preemption'] else 'off'})  "
             f"cycle interval {out['cycle_interval_s']} s",
             f"wall {out['wall_s']} s (goal <= {g['wall_s']:.0f}, Kueue {k['wall_s']})  usage {out['usage_pct']} % "
             f"(goal >= {g['usage_pct']:.0f}, Kueue {k['usage_pct']})  scripted work alone {out['work_usage_pct']} %",
             f"preemptions {out['preemptions']}  attempts {out['attempts']}  peak GPUs held {out['peak_gpus_held']}  "
             f"admitted twice {out['admitted_twice']}  server CPU {out['server_cpu_s']} s  "
             f"load {out['load_avg_before']} -> {out['load_avg_after']}"]
    for name, d in out["latency"].items():
        a, r = d["admitted_ms"], d["running_ms"]
        lines.append(f"  {name:6} n={d['n']:5}  submit->admitted ms p50 {a.get('p50')} p95 {a.get('p95')} "
                     f"p99 {a.get('p99')} mean {a.get('mean')}  submit->running p50 {r.get('p50')} p95 {r.get('p95')}")
    lines += [f"  problem: {p}" for p in out["problems"]]
    return lines


@app.command("cli")
def bench_cli(
    as_json: bool = AS_JSON,
    database: Optional[str] = DATABASE,
    jobs: int = typer.Option(1000, "--jobs", "-n", metavar="N", min=1, help="jobs in the database (over 5 projects)"),
    runs: int = typer.Option(20, "--runs", metavar="N", min=1, help="timed runs of each command (alternating)"),
):
    """Wall time of `broker jobs list` against a live API, beside `curl` of the same route (goal: 300 ms)."""
    from broker.bench.cli import bench

    out = bench(database=database, jobs=jobs, runs=runs)
    _emit(out, as_json, lambda o: [
        f"database: {o['database']}  jobs {o['jobs']}  runs {o['runs']}  load {o['load_avg_1m']}",
        f"broker jobs list  median {o['cli']['median_ms']} ms  p90 {o['cli']['p90_ms']} ms  min {o['cli']['min_ms']} ms"
        f"  (goal <= {o['goal_ms']} ms: {'met' if o['meets_goal'] else 'NOT met'})",
        f"curl              median {o['curl']['median_ms']} ms  p90 {o['curl']['p90_ms']} ms  min {o['curl']['min_ms']} ms",
        f"ratio (median)    {o['ratio_median']}x"])


@app.command("service")
def bench_service(
    as_json: bool = AS_JSON,
    concurrency: int = typer.Option(16, "--concurrency", "-c", metavar="N", help="keep-alive connections for throughput"),
    duration: float = typer.Option(5.0, "--duration", "-d", metavar="SECONDS", help="seconds per throughput block"),
    latency_n: int = typer.Option(500, "--latency-requests", metavar="N", help="sequential requests per path for latency"),
    users: int = typer.Option(20, "--users", metavar="N", help="concurrent clients during the rollouts"),
    proxy_workers: int = typer.Option(2, "--proxy-workers", metavar="N", min=0,
                                      help="entry point worker processes measured beside the broker's port (0: none)"),
):
    """A service's entry point vs straight to its replicas (same run), failover, rollout errors."""
    from broker.bench.service import bench

    out = bench(concurrency=concurrency, duration_s=duration, latency_n=latency_n, users=users,
                proxy_workers=proxy_workers)
    _emit(out, as_json, _service_lines)


def _service_lines(out: dict) -> list[str]:
    def line(name, r):
        return (f"{name:7} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                f"(loaded p50 {r['p50_ms_loaded']:.2f} ms)  errors {r['errors']}")
    f, ro, rb = out["failover"], out["rollout"], out["rollback"]
    lines = [line("proxy", out["proxy"]), line("direct", out["direct"]),
             f"throughput ratio {out['throughput_ratio']} (goal >= {out['goal_ratio']}), p50 overhead "
             f"{out['p50_overhead_ms']} ms (goal <= {out['goal_overhead_ms']})"]
    if "workers" in out:
        lines += [line("workers", out["workers"]),
                  f"workers ({out['workers']['workers']} processes): throughput ratio {out['workers_throughput_ratio']}, "
                  f"p50 overhead {out['workers_p50_overhead_ms']} ms"]
    cpu = out.get("cpu_us_per_request") or {}
    for name in ("direct", "proxy", "workers"):
        if name in cpu:
            c = cpu[name]
            parts = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("total", "cpu_bound_ratio"))
            bound = f"; ratio at most {c['cpu_bound_ratio']} with every core busy" if "cpu_bound_ratio" in c else ""
            lines.append(f"CPU us/request {name}: {c['total']} ({parts}){bound}")
    return lines + [
            f"failover: out of rotation {f.get('out_of_rotation_s')} s, replaced {f.get('replaced_s')} s, "
            f"errors {f.get('errors')}",
            f"rollout: {ro['seconds']} s, {ro['requests']} requests, errors {ro['errors']}",
            f"rollback: rolled back {rb.get('rolled_back')} in {rb['seconds']} s, errors {rb['errors']}"]


@app.command("dashboards")
def bench_dashboards(
    as_json: bool = AS_JSON,
    database: Optional[str] = DATABASE,
    nodes: int = typer.Option(1000, "--nodes", "-n", metavar="N", min=1, help="nodes in the fleet"),
    gpus: int = typer.Option(8, "--gpus", metavar="N", min=1, help="GPUs per node"),
    days: int = typer.Option(30, "--days", metavar="N", min=1, help="days of hourly GPU rollups"),
    minute_hours: int = typer.Option(24, "--minute-hours", metavar="N", min=1, help="hours of minute GPU rollups"),
    projects: int = typer.Option(40, "--projects", metavar="N", min=1, help="projects added to the demo region"),
    pending: int = typer.Option(5000, "--pending", metavar="N", min=0, help="pending jobs"),
    history: int = typer.Option(20_000, "--history", metavar="N", min=0, help="finished attempts over the days"),
    requests: int = typer.Option(30, "--requests", "-r", metavar="N", min=1, help="timed reads of each API per role"),
):
    """Every dashboard API at fleet scale (p95 goal 250 ms), beside a plain query of the same rows."""
    from broker.bench.dashboards import bench

    out = bench(database=database, nodes=nodes, gpus=gpus, days=days, minute_hours=minute_hours, projects=projects,
                pending=pending, history=history, requests=requests)
    _emit(out, as_json, _dashboards_lines)


def _dashboards_lines(out: dict) -> list[str]:
    f = out["fleet"]
    lines = [f"database: {out['database']}  {f['nodes']} nodes, {f['gpus']} GPUs, {f['rollup_rows']:,} GPU rollup rows "
             f"({f['days']} d hourly, {f['minute_hours']} h by minute), {f['running_jobs']} running, "
             f"{f['pending_jobs']} pending, {f['finished_attempts']} finished attempts",
             f"seeded in {out['seed_s']} s (rollups {out['rollups_s']} s); pool rollups folded in {out['fold_s']} s "
             f"(first run), {out['fold_again_s']} s (the next); load average {out['load_avg']}",
             f"{'API':28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'bytes':>9}   plain query p50 / p95 ms"]
    for name, a in out["api"].items():
        p = out["plain"][name.split(" [")[0]]
        lines.append(f"{name:28} {a['p50_ms']:8.1f} {a['p95_ms']:8.1f} {a['max_ms']:8.1f} {a['bytes']:9}   "
                     f"{p['p50_ms']:.1f} / {p['p95_ms']:.1f}")
    nm = out["plain"]["nodes, a new minute"]
    lines.append(f"nodes, a new minute rolled up (8 readings per node read and kept): p50 {nm['p50_ms']} ms, "
                 f"p95 {nm['p95_ms']} ms")
    w = out["without_pool_rollups_ms"]
    lines.append(f"30-day overview without the pool rollups (GPU rollups summed per pool and hour): "
                 f"p50 {w['p50_ms']} ms")
    lines.append(f"worst p95 {out['worst_p95_ms']} ms: goal <= {out['goal_ms']:.0f} ms "
                 f"{'met' if out['meets_goal'] else 'NOT met'}")
    return lines
