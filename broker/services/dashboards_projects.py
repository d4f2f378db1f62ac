"""The projects dashboard: usage vs quota, borrowing both ways, budget burn-down, efficiency.

Per visible project, over GPUs:
- quota: its GPU quota rows (guaranteed / nominal / limit per pool and model) and their sums;
- in use: GPUs its holding jobs hold now, per pool;
- borrowing, per pool, among every project (so the figures are the region's, whoever asks):
  a project above its nominal borrows ``used - nominal``; projects below it lend their idle
  nominal ``nominal - used``. The borrowed total B is covered by the lent total I as far as it
  goes: lender q gives ``min(B, I) x idle_q / I``, split among borrowers by their share of B;
  what I does not cover came from capacity no project's nominal claims ("unassigned").
  Projects the caller may not see are named "other projects" (project None);
- budget: GPU-hours this month (calendar month, UTC) from the ledger, an open attempt up to
  now (as the scheduler's budget check counts it), what running jobs may still use up to their
  max runtime (reserved), and the cumulative spend at the end of each day (the burn-down);
- efficiency this month: used / allocated GPU-seconds from the pool rollups (hours up to the
  pool rollups' hour watermark, minutes after it).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

from sqlmodel import Session

from broker.services import dashboards_queries as q
from broker.services.snapshot import month_start
from quotas.budget import remaining_reservation

HOUR, MINUTE, DAY = 3600.0, 60, 86400.0


def project_rows(s: Session, now: float, visible: Optional[Sequence[str]], department: Optional[str],
                 can_see: Callable[[str], bool]) -> dict[str, Any]:
    period = month_start(now)
    days = _days_in_month(period)
    projects = q.projects(s, visible, department)
    ids = [p["id"] for p in projects]
    quotas = q.gpu_quotas(s)
    holding = q.holding_gpus(s)
    ledger = q.ledger_since(s, period, ids)
    hour_mark = q.mark(s, "pool_rollup_1h")
    split_at = period if hour_mark is None else max(period, min(now, hour_mark))
    month = defaultdict(lambda: [0.0, 0.0, 0.0])
    for res, a, b in ((int(HOUR), period, split_at), (MINUTE, split_at, now)):
        if b > a:
            for pid, alloc, used, energy in q.project_use(s, res, a, b, ids):
                m = month[pid]
                m[0] += float(alloc or 0.0)
                m[1] += float(used or 0.0)
                m[2] += float(energy or 0.0)

    rows_of: dict[str, list[dict]] = defaultdict(list)
    nominal: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for kind, owner, pool, model, g, n, lim in quotas:
        if kind != "project":
            continue
        rows_of[owner].append({"pool": pool, "gpu_model": model, "guaranteed": g, "nominal": n, "limit": lim})
        nominal[owner][pool] += float(n or 0.0)
    used: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    reserved: dict[str, float] = defaultdict(float)
    for pid, pool, _model, gpus, _borrowing, start, max_rt in holding:
        used[pid][pool] += float(gpus or 0)
        reserved[pid] += remaining_reservation(int(gpus or 0), float(start or now), float(max_rt or 0.0), now).value
    lending = borrowing(used, nominal)
    burn = _burn(ledger, period, now, days)

    out = []
    for p in projects:
        pid = p["id"]
        quota = rows_of.get(pid, [])
        spent = burn[pid][-1] if burn.get(pid) else 0.0
        limit = p["budget_gpu_hours"]
        b = lending.get(pid, {"borrowed": 0.0, "lent": 0.0, "from": {}, "to": {}})
        alloc_s, used_s, energy = month.get(pid, (0.0, 0.0, 0.0))
        used_s = min(used_s, alloc_s) if alloc_s else used_s
        out.append({
            "id": pid, "name": p["name"], "department": p["department_id"],
            "quota": quota,
            "guaranteed_gpus": sum(float(r["guaranteed"] or 0) for r in quota),
            "nominal_gpus": sum(float(r["nominal"] or 0) for r in quota),
            "limit_gpus": None if any(r["limit"] is None for r in quota) or not quota
            else sum(float(r["limit"]) for r in quota),
            "in_use_gpus": sum(used[pid].values()) if pid in used else 0.0,
            "in_use": {k: v for k, v in sorted(used[pid].items())} if pid in used else {},
            "borrowed_gpus": round(b["borrowed"], 3), "lent_gpus": round(b["lent"], 3),
            "borrowed_from": _named(b["from"], can_see), "lent_to": _named(b["to"], can_see),
            "budget": {"gpu_hours": limit, "spent": round(spent, 3), "reserved": round(reserved.get(pid, 0.0), 3),
                       "left": None if limit is None else round(max(0.0, limit - spent - reserved.get(pid, 0.0)), 3),
                       "burn": [round(x, 3) for x in burn.get(pid, [])]},
            "month": {"allocated_gpu_hours": round(alloc_s / HOUR, 3), "used_gpu_hours": round(used_s / HOUR, 3),
                      "idle_gpu_hours": round(max(0.0, alloc_s - used_s) / HOUR, 3),
                      "efficiency": round(used_s / alloc_s, 4) if alloc_s > 0 else None,
                      "energy_kwh": round(energy / 3.6e6, 3)},
        })
    return {"period_start": period, "days_in_month": days,
            "day": min(days, int((now - period) // DAY) + 1), "projects": out}


def borrowing(used: dict[str, dict[str, float]], nominal: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per project: GPUs borrowed and lent now, and from / to whom (see the module docstring).
    Invariant: per pool, the lent total equals the borrowed total minus the unassigned part."""
    out: dict[str, dict] = defaultdict(lambda: {"borrowed": 0.0, "lent": 0.0, "from": defaultdict(float),
                                                 "to": defaultdict(float)})
    pools = {pool for d in (used, nominal) for m in d.values() for pool in m}
    everyone = set(used) | set(nominal)
    for pool in sorted(pools):
        over = {p: max(0.0, used.get(p, {}).get(pool, 0.0) - nominal.get(p, {}).get(pool, 0.0)) for p in everyone}
        idle = {p: max(0.0, nominal.get(p, {}).get(pool, 0.0) - used.get(p, {}).get(pool, 0.0)) for p in everyone}
        big_b, big_i = sum(over.values()), sum(idle.values())
        if big_b <= 0:
            continue
        covered = min(big_b, big_i)
        for b, ob in over.items():
            if ob <= 0:
                continue
            out[b]["borrowed"] += ob
            for lender, il in idle.items():
                if il > 0:
                    amount = covered * (il / big_i) * (ob / big_b)
                    out[b]["from"][lender] += amount
                    out[lender]["to"][b] += amount
                    out[lender]["lent"] += amount
            if big_i < big_b:
                out[b]["from"][None] += ob * (big_b - big_i) / big_b  # capacity no nominal claims
    return out


def _named(amounts: dict, can_see: Callable[[str], bool]) -> list[dict]:
    """[{project, gpus}] with projects the caller may not see folded into one row (project
    None with "other": true); capacity no nominal claims is {"project": None, "unassigned": true}."""
    named: dict[str, float] = defaultdict(float)
    other = unassigned = 0.0
    for pid, v in amounts.items():
        if pid is None:
            unassigned += v
        elif can_see(pid):
            named[pid] += v
        else:
            other += v
    rows = [{"project": k, "gpus": round(v, 3)} for k, v in sorted(named.items()) if v > 0]
    if other > 0:
        rows.append({"project": None, "other": True, "gpus": round(other, 3)})
    if unassigned > 0:
        rows.append({"project": None, "unassigned": True, "gpus": round(unassigned, 3)})
    return rows


def _burn(ledger, period: float, now: float, days: int) -> dict[str, list[float]]:
    """Cumulative GPU-hours spent by the end of each day of the month so far, per project."""
    today = min(days, int((now - period) // DAY) + 1)
    per_day: dict[str, list[float]] = defaultdict(lambda: [0.0] * today)
    for pid, _dept, gpus, start, end in ledger:
        a = max(float(start), period)
        b = min(now, float(end) if end is not None else now)
        while a < b:
            i = int((a - period) // DAY)
            stop = min(b, period + (i + 1) * DAY)
            if i < today:
                per_day[pid][i] += (stop - a) * gpus / HOUR
            a = stop
    out = {}
    for pid, xs in per_day.items():
        acc, cum = 0.0, []
        for x in xs:
            acc += x
            cum.append(acc)
        out[pid] = cum
    return out


def _days_in_month(period: float) -> int:
    d = dt.datetime.fromtimestamp(period, tz=dt.timezone.utc)
    nxt = dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.timezone.utc)
    return int(round((nxt.timestamp() - period) / DAY))
