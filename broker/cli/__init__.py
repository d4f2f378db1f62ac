"""The `broker` console script (`broker.cli:app`): every command group, added explicitly.

Each group is a module with its own typer app (`jobs`, `nodes`, `projects`, `bench`) or one
command (`up`, `usage`, `pools`, `overview`); this package adds them to the root app and
nothing registers itself on import, so what the script offers is exactly what is listed below.
"""

from __future__ import annotations

import typer

from broker.cli import bench, jobs, nodes, overview, projects, up

app = typer.Typer(name="broker", help="Compute Broker: GPU job queue, quotas and fair share on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
app.command("up")(up.up)
app.add_typer(jobs.app, name="jobs")  # submit|list|get|cancel|logs|events
app.add_typer(nodes.app, name="nodes")  # list|cordon|drain|uncordon|move
app.add_typer(projects.app, name="projects")  # list|show
app.command("usage")(projects.usage)
app.command("pools")(overview.pools)
app.command("overview")(overview.overview)
app.add_typer(bench.app, name="bench")  # submit|ingest|dispatch


def main() -> None:
    app()
