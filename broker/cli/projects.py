"""`broker projects list|show` and `broker usage`: seeing one's place in the region.

`show` (and `usage`, the same view) answers what a team asks before submitting: what am I
entitled to per flavor (guaranteed / nominal / limit), what do I use, what do I borrow and from
whom, what do I lend, how much budget is left.
"""

from __future__ import annotations

from typing import Optional

import typer

from broker.cli import common, render
from broker.cli.common import JSON_FLAG, OUTPUT, TOKEN, URL, Output, emit, fmt_of, run

app = typer.Typer(help="Projects: list them; show one's quota, usage, borrowing and budget.",
                  no_args_is_help=True, rich_markup_mode=None)

PROJECT = typer.Argument(..., metavar="PROJECT", help="The project's id, e.g. ouh-liver.")


def projects_table(items: list[dict]) -> str:
    if not items:
        return "no projects visible to this token"
    rows = [(p["id"], p["department_name"] or p["department"], p["name"], render.num(p.get("weight")),
             "-" if p.get("budget_gpu_hours") is None else f"{render.num(p['budget_gpu_hours'])} GPU-h",
             "yes" if p.get("allow_process_runtime") else "")
            for p in items]
    return render.table(("PROJECT", "DEPARTMENT", "NAME", "WEIGHT", "BUDGET", "PROCESS JOBS"), rows,
                        right=("WEIGHT",))


def _flavor(x: dict) -> str:
    return f"{x['pool']}/{x['gpu_model']}" if x.get("gpu_model") else x["pool"]


def _limit(v) -> str:
    return "unlimited" if v is None else render.num(v)


def usage_view(u: dict) -> str:
    """Entitlement beside use per flavor and resource, then borrowing both ways, then budget."""
    keys: dict[tuple, dict] = {}
    for e in u.get("entitlement", []):
        keys.setdefault((e["pool"], e["gpu_model"], e["resource"]), {}).update(e)
    for x in u.get("usage", []):
        keys.setdefault((x["pool"], x["gpu_model"], x["resource"]), {"nominal": x.get("nominal")}).update(
            {"in_use": x["in_use"]})
    borrowed = {(b["pool"], b["gpu_model"], b["resource"]): b["amount"] for b in u.get("borrowing", [])}
    rows = []
    for (pool, model, res), e in sorted(keys.items()):
        rows.append((_flavor({"pool": pool, "gpu_model": model}), res, render.num(e.get("guaranteed", 0.0)),
                     render.num(e.get("nominal", 0.0)), _limit(e.get("limit")), render.num(e.get("in_use", 0.0)),
                     render.num(borrowed.get((pool, model, res), 0.0))))
    jobs = u.get("jobs", {})
    text = render.kv([
        ("Project", f"{u['project']}  (department {u['department']})"),
        ("Jobs", f"{jobs.get('holding', 0)} holding resources, {jobs.get('pending', 0)} pending"
                 + (f" (at most {jobs['max_running']} running)" if jobs.get("max_running") else "")
                 + (f" (at most {jobs['max_pending']} pending)" if jobs.get("max_pending") else "")),
    ])
    text += "\n\n" + (render.table(("FLAVOR", "RESOURCE", "GUARANTEED", "NOMINAL", "LIMIT", "IN USE", "BORROWED"),
                                   rows, right=("GUARANTEED", "NOMINAL", "LIMIT", "IN USE", "BORROWED"))
                      if rows else "no quota set for this project: it can only borrow idle capacity")
    lines = []
    for b in u.get("borrowing", []):
        who = ", ".join(f"{x['project']} ({render.num(x['amount'])})" for x in b.get("from", [])) or "the region"
        lines.append(f"borrows {render.num(b['amount'])} {b['resource']} in {_flavor(b)} from {who}"
                     " (preemptible when they need it back)")
    for x in u.get("lending", []):
        who = ", ".join(f"{t['project']} ({render.num(t['amount'])})" for t in x.get("to", [])) or "nobody yet"
        lines.append(f"lends idle {render.num(x['idle_nominal'])} {x['resource']} in {_flavor(x)} to {who}")
    if lines:
        text += "\n\n" + "\n".join(lines)
    text += "\n\n" + render.kv([("Budget", _budget(u.get("budget") or {})),
                                ("Department budget", _budget(u.get("department_budget") or {}))])
    return text


def _budget(b: dict) -> str:
    spent = f"{render.num(round(b.get('spent') or 0.0, 1))} GPU-h spent"
    if b.get("reserved"):
        spent += f", {render.num(round(b['reserved'], 1))} reserved by running jobs"
    if b.get("gpu_hours") is None:
        return f"no budget set; {spent} this period"
    return f"{render.num(round(b.get('left') or 0.0, 1))} of {render.num(b['gpu_hours'])} GPU-h left ({spent})"


@app.command("list")
def list_projects(output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """The projects you may see, with department, fair-share weight and budget."""
    with common.client(url, token) as c:
        emit(run(c.projects), fmt_of(output, as_json), projects_table)


@app.command("show")
def show(project: str = PROJECT, output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL,
         token: Optional[str] = TOKEN):
    """A project's entitlement per flavor, usage, borrowing both ways and budget."""
    with common.client(url, token) as c:
        emit(run(lambda: c.usage(project)), fmt_of(output, as_json), usage_view)


def usage(project: str = PROJECT, output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL,
          token: Optional[str] = TOKEN):
    """A project's quota, usage, borrowing and budget (the same as `broker projects show`)."""
    show(project, output, as_json, url, token)
