"""`broker nodes list|cordon|drain|uncordon|move`: node operations from a shell.

cordon: no new work; drain: no new work, running work ends on its own; uncordon lifts either
(never a health problem: an unhealthy node stays out); move: another pool (`--to-label` goes
back to the executor's pool label). All but `list` are for platform-admins and audited.

`list` shows what is free on each node: capacity minus what the placements of admitted and
running jobs hold (one read per active job, since the list of jobs leaves placements out).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import typer

from broker.cli import common, render
from broker.cli.common import JSON_FLAG, OUTPUT, TOKEN, URL, Output, emit, fmt_of, run

app = typer.Typer(help="Nodes: list; platform-admins cordon, drain, uncordon or move them.", no_args_is_help=True,
                  rich_markup_mode=None)

NODE = typer.Argument(..., metavar="NODE", help="The node's id (see `broker nodes list`).")
REASON = typer.Option("", "--reason", "-r", metavar="TEXT", show_default=False,
                      help="Why, shown with the node's state and kept in the audit log.")


def allocations(c) -> dict[str, dict[str, float]]:
    """Per node: GPUs, CPUs and memory held by the placements of active jobs' current attempts."""
    held: dict[str, dict[str, float]] = defaultdict(lambda: {"gpus": 0.0, "cpus": 0.0, "memory_gb": 0.0})
    for j in c.iter_jobs(status=",".join(render.ACTIVE), limit=500):
        full = c.get(j["id"])
        for p in full.get("placements", []):
            if p.get("attempt") == full["attempt"]:
                for k in ("gpus", "cpus", "memory_gb"):
                    held[p["node"]][k] += float(full["resources"][k])
    return dict(held)


def with_free(items: list[dict], held: dict[str, dict[str, float]]) -> list[dict]:
    out = []
    for n in items:
        h = held.get(n["id"], {"gpus": 0.0, "cpus": 0.0, "memory_gb": 0.0})
        out.append({**n, "free": {k: max(0.0, float(n[k]) - h[k]) for k in ("gpus", "cpus", "memory_gb")}})
    return out


def nodes_table(items: list[dict]) -> str:
    if not items:
        return "no nodes (is an executor attached? `broker up` starts a local Ray node)"
    rows = []
    for n in items:
        pool = n["pool"] + ("*" if n.get("pool_source") == "admin" else "")
        free = n.get("free") or {}
        rows.append((n["id"], pool, n["gpu_model"], n["state"],
                     f"{render.num(free.get('gpus', n['gpus']))}/{n['gpus']}",
                     f"{render.num(free.get('cpus', n['cpus']))}/{render.num(n['cpus'])}",
                     f"{render.num(free.get('memory_gb', n['memory_gb']))}/{render.num(n['memory_gb'])}",
                     "; ".join(x for x in (n.get("state_reason") or "",
                                           "process jobs only (no container runtime)"
                                           if n.get("runtimes") == ["process"] else "") if x)))
    return render.table(("NODE", "POOL", "MODEL", "STATE", "FREE GPUS", "FREE CPUS", "FREE MEM GB", "REASON"), rows,
                        right=("FREE GPUS", "FREE CPUS", "FREE MEM GB"))


@app.command("list")
def list_nodes(output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Nodes with pool (* = moved by an admin), state, and free/total GPUs, CPUs and memory."""
    with common.client(url, token) as c:
        items = run(lambda: with_free(c.nodes(), allocations(c)))
    emit(items, fmt_of(output, as_json), nodes_table)


def _change(node: str, url: str, token: Optional[str], output: Output, **changes) -> None:
    with common.client(url, token) as c:
        n = run(lambda: c.update_node(node, **changes))
    emit(n, output, lambda n: f"{n['id']}: {n['state']} in pool {n['pool']}"
                              + (f" ({n['state_reason']})" if n.get("state_reason") else ""))


@app.command("cordon")
def cordon(node: str = NODE, reason: str = REASON, output: Output = OUTPUT, url: str = URL,
           token: Optional[str] = TOKEN):
    """No new work on NODE; what runs there goes on."""
    _change(node, url, token, output, state="cordoned", **({"reason": reason} if reason else {}))


@app.command("drain")
def drain(node: str = NODE, reason: str = REASON, output: Output = OUTPUT, url: str = URL,
          token: Optional[str] = TOKEN):
    """No new work on NODE; running work ends on its own (then move or maintain it)."""
    _change(node, url, token, output, state="draining", **({"reason": reason} if reason else {}))


@app.command("uncordon")
def uncordon(node: str = NODE, output: Output = OUTPUT, url: str = URL, token: Optional[str] = TOKEN):
    """Lift an admin's cordon or drain (a node out for health reasons stays out)."""
    _change(node, url, token, output, state="ready")


@app.command("move")
def move(node: str = NODE,
         pool: Optional[str] = typer.Argument(None, metavar="[POOL]", show_default=False, help="The target pool."),
         to_label: bool = typer.Option(False, "--to-label", help="Back to the pool the executor's label says."),
         output: Output = OUTPUT, url: str = URL, token: Optional[str] = TOKEN):
    """Move NODE to POOL (refused while it runs work, or if the pools' guarantees would not fit)."""
    if (pool is None) == (not to_label):
        common.fail("give a POOL or --to-label")
    _change(node, url, token, output, pool=None if to_label else pool)
