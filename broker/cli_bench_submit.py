"""`broker bench submit`: submit throughput and latency against a real API server (see
`broker.bench_submit`). Goal on PostgreSQL here: jobs_per_s >= 500, p95_ms <= 50, errors 0."""

from __future__ import annotations

import json
from typing import Optional

import typer

from broker.cli_common import bench_app


@bench_app.command("submit")
def bench_submit(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    database: Optional[str] = typer.Option(None, "--database",
                                           help="DB URL (default: PostgreSQL at 127.0.0.1:5432/test if up, else SQLite)"),
    concurrency: int = typer.Option(16, "--concurrency", "-c", help="keep-alive connections"),
    duration: float = typer.Option(10.0, "--duration", "-d", help="measured seconds (after a 1 s warm-up)"),
    workers: int = typer.Option(1, "--workers", help="uvicorn worker processes"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline",
                                  help="also measure the plain FastAPI+SQLModel endpoint and print the ratio"),
    baseline_workers: Optional[int] = typer.Option(None, "--baseline-workers"),
    repeat: int = typer.Option(1, "--repeat", "-r", help="runs of each (alternating); report the median run"),
):
    """Concurrent POST /api/v1/jobs; every 201 is checked to be a row in the DB afterwards."""
    from broker.bench_submit import bench

    out = bench(database=database, concurrency=concurrency, duration_s=duration, workers=workers,
                baseline=baseline, baseline_workers=baseline_workers, repeat=repeat)
    if as_json:
        typer.echo(json.dumps(out))
        return
    def line(r):
        return (f"{r['mode']:9} {r['jobs_per_s']:8.1f} jobs/s  p50 {r['p50_ms']:6.1f} ms  p95 {r['p95_ms']:6.1f} ms  "
                f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  ({r['requests']} requests, {r['verified']} rows "
                f"verified, c={r['concurrency']}, workers={r['server_workers']})")
    typer.echo(f"database: {out['database']}")
    typer.echo(line(out))
    if "baseline" in out:
        typer.echo(line(out["baseline"]))
        typer.echo(f"ratio: {out['ratio']}x the baseline's throughput")
    for r in out.get("runs", []):
        typer.echo(f"  run: {r['mode']:9} {r['jobs_per_s']:8.1f} jobs/s  p50 {r['p50_ms']:6.1f} ms  "
                   f"p95 {r['p95_ms']:6.1f} ms  errors {r['errors']}")
    for s in out.get("error_samples", []):
        typer.echo(f"  error: {s}")
