"""`broker backup FILE` / `broker restore FILE`: the embedded SQLite database, from a shell.

Backup runs while the broker runs (a consistent copy as of one instant); restore needs the
broker stopped and refuses otherwise. Both read the data dir and database URL the way `broker
up` does (`--data-dir`, `BROKER_DATA_DIR`, `BROKER_DATABASE_URL`). PostgreSQL deployments use
`pg_dump` / `pg_restore` instead (docs/OPERATIONS.md). Errors print their code and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from broker.errors import BrokerError
from broker.services import backup as svc
from broker.settings import Settings

DATA_DIR = typer.Option(None, "--data-dir", metavar="DIR", help="the broker's data dir (default: $BROKER_DATA_DIR or .broker)")


def _settings(data_dir: Optional[Path]) -> Settings:
    return Settings(**({"data_dir": data_dir} if data_dir is not None else {}))


def _report(verb: str, info: svc.BackupInfo) -> None:
    typer.echo(json.dumps({verb: str(info.path), "schema_revision": info.revision, "bytes": info.bytes,
                           "seconds": round(info.seconds, 3), "jobs": info.tables.get("jobs", 0),
                           "api_tokens": info.tables.get("api_tokens", 0)}, indent=2))


def backup(dest: Path = typer.Argument(..., metavar="DEST", help="the backup file to write (must not exist)"),
           data_dir: Optional[Path] = DATA_DIR) -> None:
    """Copy the live SQLite database to DEST, consistent, while the broker keeps running."""
    try:
        _report("backup", svc.backup(_settings(data_dir), dest))
    except BrokerError as e:
        typer.echo(f"error: {e.code}: {e}", err=True)
        raise typer.Exit(2)


def restore(src: Path = typer.Argument(..., metavar="SRC", help="a file written by `broker backup`"),
            data_dir: Optional[Path] = DATA_DIR) -> None:
    """Replace the data dir's database with SRC (broker stopped; the old one is kept beside it)."""
    try:
        info = svc.restore(_settings(data_dir), src)
    except BrokerError as e:
        typer.echo(f"error: {e.code}: {e}", err=True)
        raise typer.Exit(2)
    _report("restored", info)
    latest = svc.known_revisions()[-1]
    if info.revision != latest:
        typer.echo(f"note: the backup has schema revision {info.revision}; `broker up` migrates it to {latest}",
                   err=True)
