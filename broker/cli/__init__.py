"""The `broker` console script (`broker.cli:app`): every command group, added explicitly.

Each group is a module with its own typer app (`jobs`, `nodes`, `projects`, `bench`) or its
commands (`up`, `backup`/`restore`, `usage`, `pools`, `overview`); this package adds them to the
root app and nothing registers itself on import, so what the script offers is exactly what is
listed below.
"""

from __future__ import annotations

import importlib
import sys

# httpx imports its own command-line client (rich's progress bars, syntax highlighting, click)
# whenever it is imported, unless that module is unavailable, in which case it falls back on a
# stub. This process never runs httpx's CLI: skipping it takes about a quarter off the start of
# every `broker` command (a client command must answer in about 300 ms; see `broker bench cli`).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import typer
import typer.main
from typer.core import TyperGroup

from broker.cli import bench, capacity, jobs, nodes, overview, projects, reports, services


class _Root(TyperGroup):
    """The root group; the server-side commands are imported only when run (or listed).

    `up`, `backup` and `restore` bring the server (uvicorn, SQLAlchemy, the services): over a
    second of imports that a client command such as `broker jobs list` must not pay, since the
    CLI talks to the API over HTTP and needs none of it.
    """

    LAZY = {
        "up": ("broker.cli.up", "up"),
        "backup": ("broker.cli.backup", "backup"),  # embedded SQLite, online
        "restore": ("broker.cli.backup", "restore"),  # embedded SQLite, broker stopped
    }

    def list_commands(self, ctx):
        return [*super().list_commands(ctx), *(n for n in self.LAZY if n not in self.commands)]

    def get_command(self, ctx, name):
        if name in self.LAZY and name not in self.commands:
            module, attr = self.LAZY[name]
            one = typer.Typer(rich_markup_mode=None)
            one.command(name)(getattr(importlib.import_module(module), attr))
            self.add_command(typer.main.get_command(one), name)
        return super().get_command(ctx, name)


app = typer.Typer(name="broker", help="Compute Broker: GPU job queue, quotas and fair share on Ray.", cls=_Root,
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
app.add_typer(jobs.app, name="jobs")  # submit|list|get|cancel|logs|events
app.add_typer(nodes.app, name="nodes")  # list|cordon|drain|uncordon|move
app.add_typer(projects.app, name="projects")  # list|show
app.command("usage")(reports.usage)  # a project's view, or the usage report
app.add_typer(reports.app, name="reports")  # usage|statement|prices|set-price
app.add_typer(capacity.app, name="capacity")  # export|whatif
app.command("pools")(overview.pools)
app.command("overview")(overview.overview)
app.add_typer(bench.app, name="bench")  # submit|ingest|dispatch
app.add_typer(services.app, name="services")  # deploy|list|get|scale|rollout status|logs|delete


def main() -> None:
    app()
