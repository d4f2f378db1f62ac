"""What every `broker` command group shares: the API URL and token options, the client, output.

The typer apps themselves are built in `broker.cli` (the package), which adds each group
explicitly; importing a module here registers nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from broker.client import BrokerAPIError, BrokerClient

DEFAULT_URL = "http://127.0.0.1:8000"
URL = typer.Option(DEFAULT_URL, "--url", envvar="BROKER_URL", help="broker API base URL")
TOKEN = typer.Option(None, "--token", help="bearer token (default: $BROKER_TOKEN or <data dir>/admin-token)")


def resolve_token(token: str | None, data_dir: str | None = None) -> str | None:
    """--token, else $BROKER_TOKEN, else `<data dir>/admin-token` (local `broker up`)."""
    if token:
        return token
    if os.environ.get("BROKER_TOKEN"):
        return os.environ["BROKER_TOKEN"]
    p = Path(data_dir or os.environ.get("BROKER_DATA_DIR", ".broker")) / "admin-token"
    return p.read_text().strip() if p.exists() else None


def client(url: str, token: str | None) -> BrokerClient:
    return BrokerClient(url, resolve_token(token))


def out(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False))


def run(fn):
    """Call the API; an API error prints its code, message and details and exits 2."""
    try:
        return fn()
    except BrokerAPIError as e:
        typer.echo(f"error: {e.code}: {e.message}", err=True)
        if e.details:
            typer.echo(json.dumps(e.details, indent=2), err=True)
        raise typer.Exit(2)
