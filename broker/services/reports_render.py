"""Usage reports as CSV and as a printable HTML statement (no scripts, no external assets).

The CSV has one line per (period, group) with flat columns (the queue-time percentiles and the
cost spread into their own columns) and a last line `TOTAL`; figures are the JSON's.
"""

from __future__ import annotations

import csv
import html
import io

COLUMNS = ("period_start", "group", "allocated_gpu_hours", "used_gpu_hours", "idle_gpu_hours", "efficiency",
           "energy_kwh", "jobs", "services", "preemptions", "gpu_hours_lost", "queue_wait_p50_s",
           "queue_wait_p95_s", "cost_gpu", "cost_energy", "cost_total", "currency")


def _flat(row: dict) -> list:
    w, c = row.get("queue_wait_s") or {}, row.get("cost") or {}
    vals = {**row, "queue_wait_p50_s": w.get("p50"), "queue_wait_p95_s": w.get("p95"),
            "cost_gpu": c.get("gpu"), "cost_energy": c.get("energy"), "cost_total": c.get("total"),
            "currency": c.get("currency")}
    return ["" if vals.get(k) is None else vals.get(k) for k in COLUMNS]


def usage_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c if c != "group" else report["group_by"] for c in COLUMNS])
    for row in report["rows"]:
        w.writerow(_flat(row))
    w.writerow(_flat({**report["totals"], "period_start": "TOTAL", "group": ""}))
    return buf.getvalue()


def _n(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return html.escape(str(v))


def statement_html(st: dict) -> str:
    """A department's month on one printable page."""
    dep, e = st["department"], html.escape
    head = ("Project", "Allocated GPU-h", "Used GPU-h", "Idle GPU-h", "Efficiency", "Energy kWh", "Jobs",
            "Preemptions", "GPU-h lost", "Wait p95 (s)", "Cost")

    def line(label: str, r: dict, cls: str = "") -> str:
        c = r.get("cost")
        cost = "–" if not c else f"{c['total']:,.2f} {e(c['currency'])}"
        eff = "–" if r.get("efficiency") is None else f"{r['efficiency'] * 100:.1f} %"
        cells = (e(label), _n(r["allocated_gpu_hours"]), _n(r["used_gpu_hours"]), _n(r["idle_gpu_hours"]), eff,
                 _n(r["energy_kwh"]), _n(r["jobs"]), _n(r["preemptions"]), _n(r["gpu_hours_lost"]),
                 _n((r.get("queue_wait_s") or {}).get("p95"), 0), cost)
        return f"<tr class='{cls}'>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"

    rows = "\n".join(line(r["group"], r) for r in st["rows"]) or "<tr><td colspan='11'>no usage this month</td></tr>"
    prices = "".join(f"<li>{e(p['pool'])}: {p['gpu_hour']:,.2f} {e(p['currency'])} per GPU-hour, "
                     f"{p['kwh']:,.2f} {e(p['currency'])} per kWh</li>" for p in st.get("prices", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>GPU usage statement {e(dep['name'])} {e(st['month'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #111; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
th, td {{ border: 1px solid #999; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.total td {{ font-weight: bold; border-top: 2px solid #111; }}
@media print {{ body {{ margin: 0; }} }}
</style></head>
<body>
<h1>GPU usage statement</h1>
<p>Department <strong>{e(dep['name'])}</strong> ({e(dep['id'])}), month <strong>{e(st['month'])}</strong>
({e(st['from'])} to {e(st['to'])}, UTC).</p>
<table>
<thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>
<tbody>
{rows}
{line('Total', st['totals'], 'total')}
</tbody></table>
<h2>Prices</h2>
<ul>{prices or '<li>no prices set: no cost is charged</li>'}</ul>
<p>Allocated GPU-hours come from the accounting ledger (attempts that straddle the month are split at
its boundaries); used GPU-hours and energy from the GPU telemetry rollups. Idle = allocated - used.</p>
</body></html>
"""
