"""`broker reports usage|statement|prices|set-price` and `broker usage`: who used which GPUs.

`usage` shows the usage report as a table (one line per period and group: allocated, used and
idle GPU-hours, efficiency, energy, jobs, preemptions, p95 wait, cost), or the API's JSON / YAML /
CSV. `statement` writes a department's month as CSV and as a printable HTML page.
`broker usage` with a project shows that project's quota, usage and budget (as before); with
`--department` or nothing, this month's usage report for what the caller may see.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer

from broker.cli import common, render
from broker.cli.common import JSON_FLAG, TOKEN, URL, Output, dump, run

app = typer.Typer(help="Usage reports: GPU-hours allocated / used / idle, energy, waits and cost; monthly "
                       "statements; prices per pool.", no_args_is_help=True, rich_markup_mode=None)


class ReportOutput(str, enum.Enum):
    table = "table"
    json = "json"
    yaml = "yaml"
    csv = "csv"


class GroupBy(str, enum.Enum):
    department = "department"
    project = "project"
    pool = "pool"
    gpu_model = "gpu_model"
    user = "user"


class Period(str, enum.Enum):
    day = "day"
    week = "week"
    month = "month"


R_OUTPUT = typer.Option(ReportOutput.table, "--output", "-o", case_sensitive=False, metavar="table|json|yaml|csv",
                        help="A table, or the API's JSON / YAML, or CSV.")
GROUP = typer.Option(GroupBy.department, "--group-by", "-g", case_sensitive=False,
                     metavar="department|project|pool|gpu_model|user", help="One line per this and period.")
PERIOD = typer.Option(Period.month, "--period", "-p", case_sensitive=False, metavar="day|week|month",
                      help="Period length (UTC; weeks start on Monday).")
FROM = typer.Option(None, "--from", metavar="DATE", help="Start: ISO date or date-time (default: this period).")
TO = typer.Option(None, "--to", metavar="DATE", help="End (exclusive; default: now).")
DEPT = typer.Option(None, "--department", "-d", metavar="DEPARTMENT", help="Only this department.")
PROJ = typer.Option(None, "--project", metavar="PROJECT", help="Only this project.")


def _h(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def report_table(rep: dict) -> str:
    """One line per period and group, then the total."""
    if not rep.get("rows"):
        return f"no usage between {rep['from']} and {rep['to']}"

    def line(period: str, group: str, r: dict) -> tuple:
        c = r.get("cost")
        eff = "-" if r.get("efficiency") is None else f"{r['efficiency'] * 100:.0f}%"
        wait = (r.get("queue_wait_s") or {}).get("p95")
        return (period, group or "-", _h(r["allocated_gpu_hours"]), _h(r["used_gpu_hours"]), _h(r["idle_gpu_hours"]),
                eff, _h(r["energy_kwh"]), r["jobs"], r["preemptions"], _h(r["gpu_hours_lost"]),
                render.duration(wait) if wait is not None else "-",
                "-" if not c else f"{c['total']:,.2f} {c['currency']}")

    rows = [line(r["period_start"][:10], r["group"], r) for r in rep["rows"]]
    rows.append(line("TOTAL", "", rep["totals"]))
    right = ("ALLOC GPU-H", "USED GPU-H", "IDLE GPU-H", "EFF", "kWh", "JOBS", "PREEMPT", "LOST GPU-H", "WAIT P95", "COST")
    return render.table(("PERIOD", rep["group_by"].upper(), *right), rows, right=right)


def _emit(data, text: Optional[str], fmt: ReportOutput, human) -> None:
    if fmt == ReportOutput.csv:
        typer.echo(text, nl=False)
    elif fmt == ReportOutput.table:
        typer.echo(human(data))
    else:
        typer.echo(dump(data, Output(fmt.value)))


@app.command("usage")
def usage_report(group_by: GroupBy = GROUP, period: Period = PERIOD, start: Optional[str] = FROM,
                 end: Optional[str] = TO, department: Optional[str] = DEPT, project: Optional[str] = PROJ,
                 output: ReportOutput = R_OUTPUT, as_json: bool = JSON_FLAG, url: str = URL,
                 token: Optional[str] = TOKEN):
    """Usage per group and period: allocated / used / idle GPU-hours, energy, jobs, waits, cost."""
    fmt = ReportOutput.json if as_json else output
    args = dict(group_by=group_by.value, period=period.value, start=start, end=end, department=department,
                project=project)
    with common.client(url, token) as c:
        if fmt == ReportOutput.csv:
            _emit(None, run(lambda: c.usage_report(**args, csv=True)), fmt, report_table)
        else:
            _emit(run(lambda: c.usage_report(**args)), None, fmt, report_table)


@app.command("statement")
def statement(department: str = typer.Option(..., "--department", "-d", metavar="DEPARTMENT",
                                             help="The department, e.g. ouh."),
              month: str = typer.Option(..., "--month", "-m", metavar="YYYY-MM", help="The month, e.g. 2026-11."),
              out_dir: Path = typer.Option(Path("."), "--out-dir", metavar="DIR", help="Where to write the files."),
              url: str = URL, token: Optional[str] = TOKEN):
    """A department's monthly statement: writes statement-DEPT-MONTH.csv and .html (printable)."""
    with common.client(url, token) as c:
        data = run(lambda: c.statement(department, month))
        csv_text = run(lambda: c.statement(department, month, format="csv"))
        html_text = run(lambda: c.statement(department, month, format="html"))
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"statement-{department}-{month}"
    Path(f"{base}.csv").write_text(csv_text, encoding="utf-8")
    Path(f"{base}.html").write_text(html_text, encoding="utf-8")
    typer.echo(report_table(data))
    typer.echo(f"\nwrote {base}.csv and {base}.html")


@app.command("prices")
def prices(as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Prices per pool that reports charge (per GPU-hour and per kWh)."""
    with common.client(url, token) as c:
        items = run(c.prices)
    if as_json:
        typer.echo(dump(items))
        return
    typer.echo(render.table(("POOL", "PER GPU-HOUR", "PER kWh", "CURRENCY"),
                            [(p["pool"], f"{p['gpu_hour']:,.2f}", f"{p['kwh']:,.2f}", p["currency"]) for p in items],
                            right=("PER GPU-HOUR", "PER kWh")) if items else "no prices set: reports carry no cost")


@app.command("set-price")
def set_price(pool: str = typer.Argument(..., metavar="POOL", help="The pool, e.g. innovation."),
              gpu_hour: float = typer.Option(..., "--gpu-hour", min=0, help="Price of one allocated GPU-hour."),
              kwh: float = typer.Option(0.0, "--kwh", min=0, help="Price of one kWh of GPU energy."),
              currency: str = typer.Option("DKK", "--currency", metavar="ISO", help="Three-letter currency code."),
              url: str = URL, token: Optional[str] = TOKEN):
    """Platform-admins: set a pool's prices."""
    with common.client(url, token) as c:
        p = run(lambda: c.set_price(pool, gpu_hour=gpu_hour, kwh=kwh, currency=currency))
    typer.echo(f"{p['pool']}: {p['gpu_hour']:,.2f} {p['currency']} per GPU-hour, {p['kwh']:,.2f} per kWh")


def usage(project_arg: Optional[str] = typer.Argument(None, metavar="[PROJECT]",
                                                      help="A project: its quota, usage and budget."),
          project: Optional[str] = PROJ, department: Optional[str] = DEPT, output: Output = common.OUTPUT,
          as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """A project's quota, usage and budget; or (with --department, or nothing) this month's usage
    per project."""
    from broker.cli import projects

    one = project_arg or project
    if one and not department:
        projects.show(one, output, as_json, url, token)
        return
    fmt = ReportOutput.json if as_json else ReportOutput(output.value)
    usage_report(GroupBy.project, Period.month, None, None, department, one, fmt, False, url, token)
