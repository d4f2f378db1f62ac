"""`broker bench ingest`: GPU samples per second stored through POST /api/v1/telemetry (see
`broker.bench_ingest`). Goal on PostgreSQL here: samples_per_s >= 20,000, errors 0."""

from __future__ import annotations

import json
from typing import Optional

import typer

from broker.cli_common import bench_app


@bench_app.command("ingest")
def bench_ingest(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    database: Optional[str] = typer.Option(None, "--database",
                                           help="DB URL (default: PostgreSQL at 127.0.0.1:5432/test if up, else SQLite)"),
    nodes: int = typer.Option(48, "--nodes", "-n", help="simulated agents (one keep-alive connection each)"),
    gpus: int = typer.Option(8, "--gpus", help="GPUs per node"),
    readings: int = typer.Option(25, "--readings", help="readings per GPU in one report (25 x 8 GPUs = 200 samples, the agent's largest report)"),
    duration: float = typer.Option(10.0, "--duration", "-d", help="measured seconds (after a 2 s warm-up)"),
    repeat: int = typer.Option(1, "--repeat", help="runs; the median-throughput run is reported"),
    workers: int = typer.Option(3, "--workers", help="uvicorn worker processes (3 on 2 cores: requests wait on PostgreSQL part of the time)"),
):
    """Agents push reports back to back; every acknowledged sample is checked to be stored."""
    from broker.bench_ingest import bench_repeat

    out = bench_repeat(repeat, database=database, nodes=nodes, gpus=gpus, readings=readings, duration_s=duration,
                       workers=workers)
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"database: {out['database']}")
    typer.echo(f"{out['samples_per_s']:10.1f} samples/s  ({out['reports_per_s']} reports/s of {out['samples_per_report']} "
               f"samples, {out['report_bytes']} bytes)  p50 {out['p50_ms']} ms  p95 {out['p95_ms']} ms  "
               f"p99 {out['p99_ms']} ms  errors {out['errors']}  stored {out['samples_stored']}  "
               f"c={out['concurrency']} workers={out['server_workers']}")
    typer.echo(f"CPU s: {out['cpu_s']}  -> {out['samples_per_cpu_s']} samples per CPU second "
               f"(load average {out['load_avg_1m']})")
    if len(out.get("runs", [])) > 1:
        for r in out["runs"]:
            typer.echo(f"  run: {r}")
    for s in out.get("error_samples", []):
        typer.echo(f"  error: {s}")
