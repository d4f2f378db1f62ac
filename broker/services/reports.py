"""Usage reports: who used which GPUs, how well, at what cost, per day / week / month.

`ReportService.usage(principal, group_by=, period=, start=, end=)` answers
`GET /api/v1/reports/usage`; `statement()` is a department's month on one page (CSV / HTML in
`broker.services.reports_render`); `set_price()` lets platform-admins price a pool.

Where the figures come from (and why they reconcile):
- allocated GPU-seconds: the ledger, exactly. Each attempt's interval [started_at, ended_at) (an
  open attempt up to what it accrued, `broker.services.accounting.accrue_ledger`) is split at
  every period boundary inside the window, so the rows of a report sum to the ledger's own
  figure to the second (tested both ways, on SQLite and PostgreSQL);
- used GPU-seconds and energy: the telemetry rollups at their resolution (hourly before the
  hour rollups' watermark, minutes after); idle = allocated - used (never below 0);
  efficiency = used / allocated;
- jobs: distinct jobs with allocated time in the period; services: counted by the
  `service_counter` the service is built with (none until services exist: the hook service
  accounting plugs into, see `ServiceCounter`);
- preemptions: attempts that ended preempted in the period; GPU-hours lost: the allocation of
  those attempts, except for checkpointable jobs (they resume from their checkpoint; the work
  since the last one is not recorded in the database, so it is not guessed);
- queue time: per attempt admitted in the period, from submit (or from the end of its previous
  attempt) to admission; p50 / p90 / p95 / max by nearest rank;
- cost: per pool, allocated GPU-hours x its price per GPU-hour + kWh x its price per kWh
  (`pool_prices`); a group with no priced pool has no cost (null, never 0).

Periods are UTC: days from midnight, weeks from Monday, calendar months. Scope: platform-admins
and global ops-viewers see everything, department-admins (and department ops-viewers) their
departments, members and project-admins their projects; a filter naming a project or department
the caller may not see answers 404 as everywhere else, one it may see but not read usage of 403.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

from sqlmodel import Session

from broker.auth.authn import Principal as AuthPrincipal
from broker.auth.authz import Authz
from broker.auth.policy import Action, Ref, Resource
from broker.errors import Invalid
from broker.models import Department, Pool, PoolPrice
from broker.ports import Clock
from broker.services import reports_queries as q
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.services.admin.tenancy import department_not_found

GROUPS = ("department", "project", "pool", "gpu_model", "user")
PERIODS = ("day", "week", "month")
MAX_BUCKETS = 400  # periods in one report
DAY = 86400.0

# How reports count services (the hook for service accounting, passed to `ReportService`):
# (session, start, end, visible project ids or None, group_by, period) -> {(period start, group
# key): services that ran in that period and group}.
ServiceCounter = Callable[[Session, float, float, Optional[Sequence[str]], str, str], dict]


def no_services(s, start, end, projects, group_by, period) -> dict:
    """Until services exist: none."""
    return {}


# --------------------------------------------------------------------------- periods


def period_start(t: float, period: str) -> float:
    """The start (UTC) of the day / week (Monday) / month holding `t`."""
    d = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
    if period == "day":
        d = d.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "week":
        d = (d - dt.timedelta(days=d.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "month":
        d = d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(period)
    return d.timestamp()


def next_period(start: float, period: str) -> float:
    if period == "day":
        return start + DAY
    if period == "week":
        return start + 7 * DAY
    d = dt.datetime.fromtimestamp(start, tz=dt.timezone.utc)
    return dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.timezone.utc).timestamp()


def split(start: float, end: float, period: str) -> Iterator[tuple[float, float]]:
    """(period start, seconds of [start, end) inside it) for each period the interval touches.
    Invariant: the seconds sum to end - start."""
    t = start
    p = period_start(start, period)
    while t < end:
        nxt = next_period(p, period)
        stop = min(end, nxt)
        yield p, stop - t
        t, p = stop, nxt


def percentile(sorted_values: Sequence[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


EARLIEST, LATEST = 946684800.0, 4102444800.0  # 2000-01-01 and 2100-01-01, UTC


def parse_time(value: Optional[str], default: float, name: str) -> float:
    """Epoch seconds, an ISO date (UTC midnight) or an ISO date-time (UTC unless it says),
    between 2000 and 2100."""
    if value is None or value == "":
        return default
    bad = Invalid(f"{name} must be an ISO date (2026-11-01), date-time or epoch seconds between 2000 and 2100, "
                  f"not {value!r}", code="BAD_TIME", details={"field": name})
    try:
        t = float(value)
    except ValueError:
        try:
            d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise bad from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        t = d.timestamp()
    if not (math.isfinite(t) and EARLIEST <= t <= LATEST):
        raise bad
    return t


def parse_month(month: str) -> tuple[float, float]:
    """'2026-11' -> (start, end) of that month, UTC."""
    try:
        d = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        d = None
    if d is None or not 2000 <= d.year < 2100:
        raise Invalid(f"month must look like 2026-11 (2000-2099), not {month!r}", code="BAD_MONTH")
    return d.timestamp(), next_period(d.timestamp(), "month")


# --------------------------------------------------------------------------- the report (pure)


@dataclass
class Figures:
    allocated_gpu_s: float = 0.0
    used_gpu_s: float = 0.0
    energy_j: float = 0.0
    jobs: set = field(default_factory=set)
    services: int = 0
    preemptions: int = 0
    lost_gpu_s: float = 0.0
    waits: list = field(default_factory=list)
    alloc_by_pool: dict = field(default_factory=lambda: defaultdict(float))
    energy_by_pool: dict = field(default_factory=lambda: defaultdict(float))

    def public(self, prices: dict[str, PoolPrice]) -> dict:
        alloc_h = self.allocated_gpu_s / 3600.0
        used_s = min(self.used_gpu_s, self.allocated_gpu_s) if self.allocated_gpu_s else self.used_gpu_s
        waits = sorted(self.waits)
        return {
            "allocated_gpu_s": round(self.allocated_gpu_s, 3),
            "allocated_gpu_hours": round(alloc_h, 6),
            "used_gpu_hours": round(self.used_gpu_s / 3600.0, 6),
            "idle_gpu_hours": round(max(0.0, self.allocated_gpu_s - used_s) / 3600.0, 6),
            "efficiency": None if self.allocated_gpu_s <= 0 else round(used_s / self.allocated_gpu_s, 4),
            "energy_kwh": round(self.energy_j / 3.6e6, 6),
            "jobs": len(self.jobs),
            "services": self.services,
            "preemptions": self.preemptions,
            "gpu_hours_lost": round(self.lost_gpu_s / 3600.0, 6),
            "queue_wait_s": {"count": len(waits), "p50": percentile(waits, 50), "p90": percentile(waits, 90),
                             "p95": percentile(waits, 95), "max": waits[-1] if waits else None},
            "cost": cost(self.alloc_by_pool, self.energy_by_pool, prices),
        }


def cost(alloc_by_pool: dict, energy_by_pool: dict, prices: dict[str, PoolPrice]) -> Optional[dict]:
    """Cost of GPU-seconds and joules per pool at that pool's prices; None if no pool is priced."""
    priced = [p for p in set(alloc_by_pool) | set(energy_by_pool) if p in prices]
    if not priced:
        return None
    gpu = sum(alloc_by_pool.get(p, 0.0) / 3600.0 * prices[p].gpu_hour for p in priced)
    energy = sum(energy_by_pool.get(p, 0.0) / 3.6e6 * prices[p].kwh for p in priced)
    currencies = sorted({prices[p].currency for p in priced})
    return {"gpu": round(gpu, 2), "energy": round(energy, 2), "total": round(gpu + energy, 2),
            "currency": currencies[0] if len(currencies) == 1 else "mixed"}


def build_report(*, group_by: str, period: str, start: float, end: float, intervals: Iterable[q.Interval],
                 waits: Iterable[q.Wait], uses: Iterable[q.Use], jobs: dict[str, tuple[str, str, str]],
                 nodes: dict[str, tuple[str, str]], prices: dict[str, PoolPrice],
                 services: Optional[dict] = None) -> dict:
    """Rows per (period, group) and totals, from the rows the queries return (pure)."""
    cells: dict[tuple[float, str], Figures] = defaultdict(Figures)
    total = Figures()

    def key_of(x) -> str:
        return getattr(x, group_by)

    for iv in intervals:
        a, b = max(iv.start, start), min(iv.end, end)
        if b > a and iv.gpus > 0:
            for p, secs in split(a, b, period):
                gs = secs * iv.gpus
                for f in (cells[(p, key_of(iv))], total):
                    f.allocated_gpu_s += gs
                    f.alloc_by_pool[iv.pool] += gs
                    f.jobs.add(iv.job_id)
        if iv.closed and iv.preempted and start <= iv.end < end:
            lost = 0.0 if iv.checkpointable else iv.allocated_gpu_s
            for f in (cells[(period_start(iv.end, period), key_of(iv))], total):
                f.preemptions += 1
                f.lost_gpu_s += lost
    for w in waits:
        for f in (cells[(period_start(w.admitted_at, period), key_of(w))], total):
            f.waits.append(w.wait_s)
    for u in uses:
        project, department, user = jobs.get(u.job_id, ("", "", ""))
        pool, model = nodes.get(u.node_id, ("", ""))
        dims = {"project": project, "department": department, "user": user, "pool": pool, "gpu_model": model}
        for f in (cells[(period_start(u.bucket, period), dims[group_by])], total):
            f.used_gpu_s += u.used_gpu_s
            f.energy_j += u.energy_j
            f.energy_by_pool[pool] += u.energy_j
    for (p, g), n in (services or {}).items():
        for f in (cells[(p, g)], total):
            f.services += n
    rows = [{"period_start": iso(p), "period_start_ts": p, "group": g, **f.public(prices)}
            for (p, g), f in sorted(cells.items())]
    return {"group_by": group_by, "period": period, "from": iso(start), "to": iso(end), "from_ts": start,
            "to_ts": end, "rows": rows, "totals": total.public(prices)}


# --------------------------------------------------------------------------- the service


class ReportService:
    def __init__(self, engine, authz: Authz, *, clock: Clock = time.time,
                 service_counter: ServiceCounter = no_services) -> None:
        self.engine, self.authz, self.clock, self.service_counter = engine, authz, clock, service_counter

    def usage(self, p: AuthPrincipal, *, group_by: str = "department", period: str = "month",
              start: Optional[str] = None, end: Optional[str] = None, department: Optional[str] = None,
              project: Optional[str] = None) -> dict:
        if group_by not in GROUPS:
            raise Invalid(f"group_by must be one of {', '.join(GROUPS)}", code="BAD_GROUP_BY")
        if period not in PERIODS:
            raise Invalid(f"period must be one of {', '.join(PERIODS)}", code="BAD_PERIOD")
        now = self.clock()
        a = parse_time(start, period_start(now, period), "from")
        b = parse_time(end, now, "to")
        if not b > a:
            raise Invalid("'to' must be after 'from'", code="BAD_TIME_RANGE", details={"from": a, "to": b})
        n = 0
        for n, _ in enumerate(split(a, b, period), 1):
            if n > MAX_BUCKETS:
                raise Invalid(f"at most {MAX_BUCKETS} {period}s per report; narrow the range or use a longer period",
                              code="BAD_TIME_RANGE")
        projects = self._scope(p, department, project)
        with Session(self.engine) as s:
            out = self._report(s, group_by, period, a, b, projects)
        out["scope"] = {"department": department, "project": project, "all": projects is None}
        return out

    def statement(self, p: AuthPrincipal, *, department: str, month: str) -> dict:
        """A department's month: per project, then totals and prices (for CSV / HTML)."""
        a, b = parse_month(month)
        projects = self._scope(p, department, None)
        with Session(self.engine) as s:
            dep = s.get(Department, department)
            out = self._report(s, "project", "month", a, b, projects)
            out["prices"] = [price_public(x) for x in q.prices(s).values()]
        out["department"] = {"id": department, "name": dep.name if dep else department}
        out["month"] = month
        return out

    def prices(self, p: AuthPrincipal) -> list[dict]:
        self.authz.require(p, Action.POOL_READ)
        with Session(self.engine) as s:
            return [price_public(x) for x in sorted(q.prices(s).values(), key=lambda x: x.pool)]

    def set_price(self, p: AuthPrincipal, caller: Caller, pool: str, *, gpu_hour: float, kwh: float,
                  currency: str) -> dict:
        self.authz.require(p, Action.POOL_ADMIN)
        with Session(self.engine) as s:
            if s.get(Pool, pool) is None:
                raise Invalid(f"pool {pool!r} does not exist", code="UNKNOWN_POOL")
            row = s.get(PoolPrice, pool)
            before = price_public(row) if row else None
            row = row or PoolPrice(pool=pool)
            row.gpu_hour, row.kwh, row.currency = gpu_hour, kwh, currency
            row.updated_at, row.updated_by = self.clock(), caller.actor
            s.add(row)
            after = price_public(row)
            audit.record(s, caller, action="pool.price", target_kind="pool", target_id=pool, before=before,
                         after=after, clock=self.clock)
            s.commit()
        return after

    # ------------------------------------------------------------------ helpers
    def _scope(self, p: AuthPrincipal, department: Optional[str], project: Optional[str]) -> Optional[list[str]]:
        """Visible project ids for this report (None: everything)."""
        if project:
            self.authz.require_project(p, project, Action.PROJECT_USAGE_READ)
        if department:
            self.authz.require(p, Action.DEPARTMENT_USAGE_READ, Ref(Resource.DEPARTMENT, department=department),
                               hidden=department_not_found(department))
        scope = self.authz.scope(p, Resource.PROJECT)
        with Session(self.engine) as s:
            if department:
                in_dep = q.department_projects(s, department)
                if not in_dep and s.get(Department, department) is None:
                    raise department_not_found(department)
            else:
                in_dep = None
            visible = None if scope.all else q.visible_project_ids(s, scope.departments, scope.projects)
        ids = visible
        if in_dep is not None:
            ids = in_dep if ids is None else [x for x in ids if x in set(in_dep)]
        if project:
            ids = [project] if ids is None or project in ids else []
        return ids

    def _report(self, s: Session, group_by: str, period: str, a: float, b: float,
                projects: Optional[list[str]]) -> dict:
        uses = q.usage(s, a, b, projects)
        return build_report(
            group_by=group_by, period=period, start=a, end=b, intervals=q.intervals(s, a, b, projects),
            waits=q.waits(s, a, b, projects), uses=uses, jobs=q.job_dimensions(s, (u.job_id for u in uses)),
            nodes=q.node_flavors(s), prices=q.prices(s),
            services=self.service_counter(s, a, b, projects, group_by, period))


def price_public(p: PoolPrice) -> dict:
    return {"pool": p.pool, "gpu_hour": p.gpu_hour, "kwh": p.kwh, "currency": p.currency,
            "updated_at": p.updated_at, "updated_by": p.updated_by}
