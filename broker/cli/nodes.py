"""`broker nodes list|cordon|drain|uncordon|move`: node operations from a shell.

cordon: no new work; drain: no new work, running work ends on its own; uncordon lifts either
(never a health problem: an unhealthy node stays out); move: another pool (`--to-label` goes
back to the executor's pool label). All but `list` are for platform-admins and audited.
"""

from __future__ import annotations

from typing import Optional

import typer

from broker.cli import common
from broker.cli.common import TOKEN, URL, out, run

app = typer.Typer(help="Nodes: list; platform-admins cordon, drain, uncordon or move them.", no_args_is_help=True)


def _table(items: list[dict]) -> str:
    rows = [("NODE", "POOL", "MODEL", "GPUS", "STATE", "REASON")]
    for n in items:
        pool = n["pool"] + ("*" if n.get("pool_source") == "admin" else "")
        rows.append((n["id"], pool, n["gpu_model"], str(n["gpus"]), n["state"], n.get("state_reason") or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:5])) + "  " + r[5] for r in rows)


@app.command("list")
def list_nodes(json_out: bool = typer.Option(False, "--json"), url: str = URL, token: Optional[str] = TOKEN):
    """Nodes with pool (* = moved by an admin), GPUs and state."""
    with common.client(url, token) as c:
        items = run(c.nodes)
    if json_out:
        out(items)
    else:
        typer.echo(_table(items))


def _change(node: str, url: str, token: Optional[str], **changes) -> None:
    with common.client(url, token) as c:
        out(run(lambda: c.update_node(node, **changes)))


@app.command("cordon")
def cordon(node: str, reason: str = typer.Option("", "--reason", "-r"), url: str = URL,
           token: Optional[str] = TOKEN):
    """No new work on NODE; what runs there goes on."""
    _change(node, url, token, state="cordoned", **({"reason": reason} if reason else {}))


@app.command("drain")
def drain(node: str, reason: str = typer.Option("", "--reason", "-r"), url: str = URL,
          token: Optional[str] = TOKEN):
    """No new work on NODE; running work ends on its own (then move or maintain it)."""
    _change(node, url, token, state="draining", **({"reason": reason} if reason else {}))


@app.command("uncordon")
def uncordon(node: str, url: str = URL, token: Optional[str] = TOKEN):
    """Lift an admin's cordon or drain (a node out for health reasons stays out)."""
    _change(node, url, token, state="ready")


@app.command("move")
def move(node: str, pool: Optional[str] = typer.Argument(None, help="target pool"),
         to_label: bool = typer.Option(False, "--to-label", help="back to the executor's pool label"),
         url: str = URL, token: Optional[str] = TOKEN):
    """Move NODE to POOL (refused while it runs work, or if the pools' guarantees would not fit)."""
    if (pool is None) == (not to_label):
        typer.echo("error: give a POOL or --to-label", err=True)
        raise typer.Exit(2)
    _change(node, url, token, pool=None if to_label else pool)
