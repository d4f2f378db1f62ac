"""What every `broker` command group shares: the API URL and token options, the client, output.

The typer apps themselves are built in `broker.cli` (the package), which adds each group
explicitly; importing a module here registers nothing. Output is human text by default and
JSON or YAML with `-o json|yaml` (`--json` is short for `-o json`): scripts get the API's own
shapes, people get tables and sentences.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from typing import Any, Callable, Optional

import httpx
import typer

from broker.client import DEFAULT_URL, BrokerAPIError, BrokerClient, default_token

def _no_python_types_in_help() -> None:
    """typer prints a Python type after each argument in --help (`JOB_ID <str>`); every argument
    here has a name and a description instead, so the type column is left out."""
    try:
        from typer.core import TyperArgument
    except ImportError:  # another typer layout: its help is left as it is
        return
    if hasattr(TyperArgument, "display_type_rich"):
        TyperArgument.display_type_rich = lambda self, ctx: None


_no_python_types_in_help()

URL = typer.Option(DEFAULT_URL, "--url", envvar="BROKER_URL", metavar="URL",
                   help="Broker API base URL (or $BROKER_URL).", show_default=True)
TOKEN = typer.Option(None, "--token", metavar="TOKEN", show_default=False,
                     help="Bearer token (default: $BROKER_TOKEN, else .broker/admin-token from `broker up`).")


class Output(str, enum.Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


OUTPUT = typer.Option(Output.table, "--output", "-o", case_sensitive=False, metavar="table|json|yaml",
                      help="Output format: a human view, or the API's JSON/YAML for scripts.")
JSON_FLAG = typer.Option(False, "--json", help="Same as -o json.")
WATCH = typer.Option(False, "--watch", "-w", help="Redraw every --interval seconds until Ctrl-C.")
INTERVAL = typer.Option(2.0, "--interval", min=0.2, metavar="SECONDS", help="Seconds between redraws with --watch.")


def resolve_token(token: str | None, data_dir: str | None = None) -> str | None:
    """--token, else $BROKER_TOKEN, else `<data dir>/admin-token` (local `broker up`)."""
    return token or default_token(data_dir)


def client(url: str, token: str | None) -> BrokerClient:
    return BrokerClient(url, resolve_token(token))


def fmt_of(output: Output, as_json: bool = False) -> Output:
    return Output.json if as_json else Output(output)


def dump(obj: Any, fmt: Output = Output.json) -> str:
    """The API's data as JSON or YAML text (YAML keeps the key order of the API)."""
    if fmt == Output.yaml:
        import yaml

        return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True).rstrip("\n")
    return json.dumps(obj, indent=2, sort_keys=False)


def out(obj: Any, fmt: Output = Output.json) -> None:
    typer.echo(dump(obj, fmt))


def emit(obj: Any, fmt: Output, human: Callable[[Any], str]) -> None:
    """`human(obj)` for the table format, the data itself for json/yaml."""
    typer.echo(human(obj) if fmt == Output.table else dump(obj, fmt))


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def run(fn: Callable[[], Any]) -> Any:
    """Call the API. A user's mistake or an unreachable broker is one clear message, exit 2;
    never a traceback."""
    try:
        return fn()
    except BrokerAPIError as e:
        typer.echo(f"error: {e.code}: {e.message}", err=True)
        for line in detail_lines(e.details, e.message):
            typer.echo(line, err=True)
        raise typer.Exit(2)
    except httpx.TransportError as e:
        base = getattr(getattr(e, "request", None), "url", None)
        where = f"{base.scheme}://{base.netloc.decode()}" if base is not None else "the broker"
        fail(f"cannot reach {where} ({type(e).__name__}). Is it running (`broker up`)? "
             "Set --url or $BROKER_URL to another address.")
    except TimeoutError as e:
        fail(str(e), code=1)


def detail_lines(details: Any, message: str = "") -> list[str]:
    """An error's details as indented `key: value` lines, leaving out what the message says."""
    if not isinstance(details, dict):
        return [f"  {details}"] if details else []
    lines = []
    for key, value in details.items():
        if isinstance(value, list) and value and all(isinstance(x, dict) and "message" in x for x in value):
            items = [(x.get("field") or key, x["message"]) for x in value]
        else:
            items = [(key, json.dumps(value) if isinstance(value, (dict, list)) else value)]
        lines += [f"  {k}: {v}" for k, v in items if f"{k}: {v}" not in message]
    return lines


def pause(seconds: float) -> None:
    """The wait between two frames of `watch` (tests replace this one function, never
    `time.sleep` itself, which every thread of the process shares)."""
    time.sleep(seconds)


def watch(render: Callable[[], str], interval: float, *, until: Callable[[], bool] = lambda: False) -> None:
    """Redraw `render()` every `interval` seconds until Ctrl-C (or `until()`): `watch`-like.

    On a terminal the screen is cleared and redrawn in place; piped, each frame follows the last
    after a blank line, so a log of the views stays readable. Ctrl-C ends with exit 0 and no
    traceback: stopping to watch is not an error.
    """
    tty = sys.stdout.isatty()
    try:
        while True:
            frame = render()
            stamp = time.strftime("%H:%M:%S")
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            typer.echo(f"every {interval:g}s, {stamp} (Ctrl-C to stop)\n{frame}\n")
            if until():
                return
            pause(interval)
    except KeyboardInterrupt:
        typer.echo("")


