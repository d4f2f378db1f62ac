"""The `broker` console script (`broker.cli:app`): every command group, added explicitly.

Each group is a module with its own typer app (`jobs`, `nodes`, `bench`) or its commands
(`up`, `backup`/`restore`); this package adds them to the root app and nothing registers itself
on import, so what the script offers is exactly what is listed below.
"""

from __future__ import annotations

import typer

from broker.cli import backup, bench, jobs, nodes, up

app = typer.Typer(name="broker", help="Compute Broker: GPU job queue, quotas and fair share on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.command("up")(up.up)
app.add_typer(jobs.app, name="jobs")  # submit|list|get|cancel|logs|events
app.add_typer(nodes.app, name="nodes")  # list|cordon|drain|uncordon|move
app.add_typer(bench.app, name="bench")  # submit|ingest|dispatch
app.command("backup")(backup.backup)  # embedded SQLite, online
app.command("restore")(backup.restore)  # embedded SQLite, broker stopped


def main() -> None:
    app()
