"""`broker capacity export|whatif`: what to buy next, answered from the region's own history.

`export` writes the recorded history as a canonical trace (for `python -m scheduler.simulate`).
`whatif` starts a replay on the broker (a background run), shows a progress bar while it runs,
then prints wait percentiles per department and class and the utilization before and after,
and writes the queue plot as SVG.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from broker.cli import common, render
from broker.cli.common import JSON_FLAG, TOKEN, URL, dump, fail, run

app = typer.Typer(help="Capacity planning: export the recorded history; replay it on changed hardware or quotas.",
                  no_args_is_help=True, rich_markup_mode=None)


@app.command("export")
def export(start: Optional[str] = typer.Option(None, "--from", metavar="DATE", help="Start (default: 4 weeks ago)."),
           end: Optional[str] = typer.Option(None, "--to", metavar="DATE", help="End (default: now)."),
           out: Optional[Path] = typer.Option(None, "--out", "-f", metavar="FILE", help="Write here (default: stdout)."),
           url: str = URL, token: Optional[str] = TOKEN):
    """The recorded history as a canonical trace CSV (submit time, real duration, GPUs, ...)."""
    with common.client(url, token) as c:
        text = run(lambda: c.capacity_trace(start=start, end=end))
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {max(0, len(text.splitlines()) - 1)} jobs to {out}")


def whatif_view(res: dict) -> str:
    """Per department and class: waits before -> after; then totals and utilization."""
    before = {(r["department"], r["class"]): r for r in res["before"]["per_department_class"]}
    after = {(r["department"], r["class"]): r for r in res["after"]["per_department_class"]}

    def w(r: dict | None, k: str) -> str:
        return "-" if r is None else render.duration(r[k])

    rows = [(d, k, (before.get((d, k)) or after.get((d, k)))["jobs"],
             f"{w(before.get((d, k)), 'avg_wait_s')} -> {w(after.get((d, k)), 'avg_wait_s')}",
             f"{w(before.get((d, k)), 'p50_wait_s')} -> {w(after.get((d, k)), 'p50_wait_s')}",
             f"{w(before.get((d, k)), 'p95_wait_s')} -> {w(after.get((d, k)), 'p95_wait_s')}")
            for d, k in sorted(set(before) | set(after))]
    b, a, rec = res["before"], res["after"], res["recorded"]
    text = render.table(("DEPARTMENT", "CLASS", "JOBS", "AVG WAIT", "P50 WAIT", "P95 WAIT"), rows, right=("JOBS",))
    text += "\n\n" + render.kv([
        ("Jobs replayed", res["jobs"]),
        ("GPUs", f"{b['gpus']} -> {a['gpus']}"),
        ("Utilization", f"{b['utilization'] * 100:.1f}% -> {a['utilization'] * 100:.1f}%"),
        ("Average wait", f"{render.duration(b['avg_wait_s'])} -> {render.duration(a['avg_wait_s'])} "
                         f"(recorded {render.duration(rec['avg_wait_s'])})"),
        ("p95 wait", f"{render.duration(b['p95_wait_s'])} -> {render.duration(a['p95_wait_s'])} "
                     f"(recorded {render.duration(rec['p95_wait_s'])})"),
    ])
    return text


@app.command("whatif")
def whatif(weeks: float = typer.Option(4.0, "--weeks", min=0.01, max=26, help="Replay the last N weeks."),
           add: list[str] = typer.Option([], "--add", metavar="GROUP",
                                         help='Nodes to add: "pool=innovation,model=H100,gpus_per_node=8,nodes=2".'),
           remove: list[str] = typer.Option([], "--remove", metavar="GROUP", help="Nodes to remove (same form)."),
           quota_file: Optional[Path] = typer.Option(None, "--quota-file", metavar="FILE",
                                                     help="Quota rows to replace or add (YAML or JSON list)."),
           svg: Path = typer.Option(Path("whatif-queue.svg"), "--svg", metavar="FILE", help="Where to write the plot."),
           as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Replay the recorded history on the live region and on the changed one; compare waits."""
    quotas = quota_file.read_text(encoding="utf-8") if quota_file else None
    with common.client(url, token) as c:
        started = run(lambda: c.start_whatif(weeks=weeks, add=add, remove=remove, quota_file=quotas))
        with typer.progressbar(length=100, label="replaying", file=sys.stderr) as bar:
            done = 0
            while True:
                r = run(lambda: c.whatif(started["id"]))
                pct = int(r["progress"] * 100)
                bar.update(pct - done)
                done = pct
                if r["status"] != "running":
                    break
                time.sleep(0.5)
    if r["status"] == "failed":
        fail(f"{r['error']['code']}: {r['error']['message']}")
    res = r["result"]
    svg.write_text(res["svg"], encoding="utf-8")
    if as_json:
        typer.echo(dump(res))
        return
    typer.echo(whatif_view(res))
    typer.echo(f"\nqueue over time: {svg}")
