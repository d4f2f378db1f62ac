"""`broker bench dispatch`: submit -> job process running, median over n jobs, against Ray's
Jobs API in the same run (see `broker.bench_dispatch`). Goal: ratio <= 0.5."""

from __future__ import annotations

import json

import typer

from broker.cli_common import bench_app


@bench_app.command("dispatch")
def bench_dispatch(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    n: int = typer.Option(20, "--jobs", "-n", min=1, help="measured jobs per path"),
    gpus: int = typer.Option(2, "--gpus", min=1, help="logical GPUs of the local Ray node"),
    warm: int = typer.Option(2, "--warm-runners", min=0,
                             help="spare runner actors per node (0: the cold path)"),
):
    """Start an idle local Ray node and a broker on it, then time both dispatch paths."""
    from broker.bench_dispatch import bench

    out = bench(n, gpus_per_node=gpus, warm_runners=warm)
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"broker (REST -> scheduling loop -> Ray runner): median {out['broker_ms_median']:.1f} ms")
    typer.echo(f"Ray Jobs API (submit_job):                      median {out['ray_jobs_ms_median']:.1f} ms")
    verdict = "meets" if out["ratio"] <= out["goal_ratio"] else "misses"
    typer.echo(f"ratio {out['ratio']:.3f} ({verdict} the goal <= {out['goal_ratio']}), n={out['n']}, "
               f"warm runners per node: {out['warm_runners']}")
