"""The `broker` typer app and its sub-apps, shared by every `broker/cli_*.py` module.

Each command group lives in its own module and registers on these objects:
`cli_jobs` (jobs ...), `cli_bench_submit` (bench submit); the lead's `cli_up` adds
`@app.command("up")`, the Ray helper's `cli_bench_dispatch` adds `@bench_app.command("dispatch")`.
`broker/cli.py` imports every module, which is all the wiring there is.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

app = typer.Typer(name="broker", help="Compute Broker: GPU job queue, quotas and fair share on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
jobs_app = typer.Typer(help="Submit, list, inspect and cancel jobs.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (JSON with --json).", no_args_is_help=True)
nodes_app = typer.Typer(help="Nodes: list; platform-admins cordon, drain, uncordon or move them.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(nodes_app, name="nodes")
app.add_typer(bench_app, name="bench")

DEFAULT_URL = "http://127.0.0.1:8000"


def resolve_token(token: str | None, data_dir: str | None = None) -> str | None:
    """--token, else $BROKER_TOKEN, else `<data dir>/admin-token` (local `broker up`)."""
    if token:
        return token
    if os.environ.get("BROKER_TOKEN"):
        return os.environ["BROKER_TOKEN"]
    p = Path(data_dir or os.environ.get("BROKER_DATA_DIR", ".broker")) / "admin-token"
    return p.read_text().strip() if p.exists() else None
