"""Simulator metrics: their definitions in one place, computed from per-job outcomes.

Definitions (all in seconds of trace time; only completed jobs enter the averages):

- ``jct``: job completion time = completion - submit.
- ``wait``: submit -> *first* start (a preempted job's later waits are in its JCT, not here).
- ``pNN_wait_s``: nearest-rank percentile of the waits (the smallest wait w such that at least
  NN% of the jobs waited <= w).
- ``makespan_s``: first submit -> last completion.
- ``utilization``: the jobs' useful GPU-seconds (duration x GPUs; work lost to preemption does
  not count) / (cluster GPUs x makespan), in [0, 1].
- ``slowdown``: per job JCT / max(duration, 10 s) (bounded slowdown, Feitelson's bound of 10 s
  keeps very short jobs from dominating).
- ``jain_fairness``: Jain's index (sum x)^2 / (n sum x^2) over the projects' *mean bounded
  slowdown*: 1.0 when every project is slowed down by the same factor, 1/n when one project
  bears all the delay. Slowdown rather than share because most projects demand less than their
  share most of the time; what a tenant feels is how much longer its jobs take than they run.
- ``max_wait_s``: the longest wait (starvation shows here first, not in the percentiles).
- ``lost_fraction``: GPU-seconds lost to preemption / the GPU-seconds of work in the replay
  (duration x GPUs of every replayed job, finished or not).
- ``per_class`` (``operation``, ``innovation``, always both) and ``per_project``: ``jobs``,
  ``avg_wait_s``, ``p50/p95/p99_wait_s``, ``max_wait_s`` and ``avg_jct_s`` over that group's
  completed jobs; ``per_project`` adds ``gpu_share``, the project's share of the GPU-seconds
  the cluster gave out (held by its jobs, lost work and stopping time included), to compare
  with its nominal share.
- ETA accuracy (only with ``--explain``): over the jobs that waited more than
  ``ETA_MIN_WAIT_S`` (10 minutes), ``eta_jobs`` is their number, ``eta_coverage`` the share
  that got an estimated start at their first cycle, and over those with one ``eta_error_p50``
  / ``eta_error_p90`` are percentiles of |estimated - actual first start| / actual wait and
  ``eta_late_share`` the share that started later than estimated. The *first* estimate is
  what a user sees on submit, so that is the one judged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

SLOWDOWN_BOUND_S = 10.0
PERCENTILES: tuple[int, ...] = (50, 95, 99)
ETA_MIN_WAIT_S = 600.0
CLASSES: tuple[str, ...] = ("operation", "innovation")


@dataclass(frozen=True, slots=True)
class JobOutcome:
    id: str
    project: str
    submit: float
    duration: float
    gpus: int
    first_start: float | None
    end: float | None  # None: never completed in the replay
    preemptions: int = 0
    lost_gpu_s: float = 0.0
    workload_class: str = "innovation"
    held_gpu_s: float = 0.0  # GPU-seconds its attempts held (lost work and stopping time included)
    first_estimate: float | None = None  # estimated start given at its first cycle (--explain)

    @property
    def jct(self) -> float:
        assert self.end is not None
        return self.end - self.submit

    @property
    def wait(self) -> float:
        assert self.first_start is not None
        return self.first_start - self.submit

    @property
    def slowdown(self) -> float:
        return self.jct / max(self.duration, SLOWDOWN_BOUND_S)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (0 for an empty list)."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(1, math.ceil(q / 100.0 * len(s)))
    return s[k - 1]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index of non-negative values (1.0 for an empty or all-zero list)."""
    sq = sum(v * v for v in values)
    if not values or sq == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * sq)


def group_figures(done: Sequence[JobOutcome]) -> dict:
    """Wait and JCT figures of a group of completed jobs (zeros for an empty group)."""
    waits = [o.wait for o in done]
    n = len(done)
    return {
        "jobs": n,
        "avg_wait_s": round(sum(waits) / n, 1) if n else 0.0,
        **{f"p{q}_wait_s": round(percentile(waits, q), 1) for q in PERCENTILES},
        "max_wait_s": round(max(waits), 1) if n else 0.0,
        "avg_jct_s": round(sum(o.jct for o in done) / n, 1) if n else 0.0,
    }


def eta_figures(done: Sequence[JobOutcome]) -> dict:
    """ETA accuracy of the first estimates (see module docstring)."""
    waited = [o for o in done if o.wait > ETA_MIN_WAIT_S]
    est = [o for o in waited if o.first_estimate is not None]
    errors = [abs(o.first_estimate - o.first_start) / o.wait for o in est]  # type: ignore[operator]
    return {
        "eta_jobs": len(waited),
        "eta_coverage": round(len(est) / len(waited), 4) if waited else 1.0,
        "eta_error_p50": round(percentile(errors, 50), 4),
        "eta_error_p90": round(percentile(errors, 90), 4),
        "eta_late_share": round(sum(o.first_start > o.first_estimate for o in est) / len(est), 4) if est else 0.0,  # type: ignore[operator]
    }


def metrics(outcomes: Sequence[JobOutcome], cluster_gpus: int, explain: bool = False) -> dict:
    """The simulator's summary figures (see module docstring)."""
    done = [o for o in outcomes if o.end is not None]
    out: dict = {"jobs": len(done), "unfinished": len(outcomes) - len(done)}
    work_all = sum(o.duration * o.gpus for o in outcomes)
    out["lost_fraction"] = round(sum(o.lost_gpu_s for o in outcomes) / work_all, 4) if work_all else 0.0
    by_class: dict[str, list[JobOutcome]] = {c: [] for c in CLASSES}
    done_by_project: dict[str, list[JobOutcome]] = defaultdict(list)
    for o in done:
        by_class[o.workload_class].append(o)
        done_by_project[o.project].append(o)
    out["per_class"] = {c: group_figures(by_class[c]) for c in CLASSES}
    held: dict[str, float] = defaultdict(float)
    for o in outcomes:
        held[o.project] += o.held_gpu_s
    total_held = sum(held.values())
    out["per_project"] = {
        p: {**group_figures(done_by_project[p]), "gpu_share": round(held[p] / total_held, 4) if total_held else 0.0}
        for p in sorted(held)
    }
    if explain:
        out.update(eta_figures(done))
    if not done:
        out.update(avg_jct_s=0.0, avg_wait_s=0.0, utilization=0.0, makespan_s=0.0, jain_fairness=1.0,
                   avg_slowdown=0.0, max_wait_s=0.0, **{f"p{q}_wait_s": 0.0 for q in PERCENTILES})
        return out
    waits = [o.wait for o in done]
    first = min(o.submit for o in outcomes)
    makespan = max(o.end for o in done) - first
    work = sum(o.duration * o.gpus for o in done)
    by_project: dict[str, list[float]] = defaultdict(list)
    for o in done:
        by_project[o.project].append(o.slowdown)
    per_project = [sum(v) / len(v) for _, v in sorted(by_project.items())]
    out.update(
        avg_jct_s=round(sum(o.jct for o in done) / len(done), 1),
        avg_wait_s=round(sum(waits) / len(done), 1),
        **{f"p{q}_wait_s": round(percentile(waits, q), 1) for q in PERCENTILES},
        max_wait_s=round(max(waits), 1),
        makespan_s=round(makespan, 1),
        utilization=round(work / (cluster_gpus * makespan), 4) if makespan > 0 else 0.0,
        avg_slowdown=round(sum(o.slowdown for o in done) / len(done), 3),
        jain_fairness=round(jain(per_project), 4),
        projects=len(by_project),
    )
    return out


_ROWS: tuple[tuple[str, str], ...] = (
    ("policy", "policy"), ("gpus", "cluster GPUs"), ("jobs", "jobs completed"), ("unfinished", "jobs unfinished"),
    ("avg_jct_s", "average JCT (s)"), ("avg_wait_s", "average wait (s)"), ("p50_wait_s", "p50 wait (s)"),
    ("p95_wait_s", "p95 wait (s)"), ("p99_wait_s", "p99 wait (s)"), ("max_wait_s", "max wait (s)"),
    ("utilization", "utilization"),
    ("makespan_s", "makespan (s)"), ("avg_slowdown", "average bounded slowdown"),
    ("jain_fairness", "Jain fairness (project slowdown)"), ("preemptions", "preemptions"),
    ("lost_gpu_s", "GPU-seconds lost to preemption"), ("lost_fraction", "share of the work lost to preemption"),
    ("eta_jobs", "jobs that waited > 10 min"), ("eta_coverage", "  share with an estimate at their first cycle"),
    ("eta_error_p50", "  median |estimate error| / wait"), ("eta_error_p90", "  p90 |estimate error| / wait"),
    ("eta_late_share", "  share started later than estimated"), ("cycles", "scheduling cycles"), ("wall_s", "wall time (s)"),
)


def render_table(m: dict) -> str:
    """A readable two-column table of the metrics."""
    width = max(len(label) for _, label in _ROWS)
    lines = [f"{label:<{width}}  {m[key]}" for key, label in _ROWS if key in m]
    for c, g in m.get("per_class", {}).items():
        if g["jobs"]:
            lines.append(f"{c + ' wait avg/p50/p95/p99/max (s)':<{width}}  {g['avg_wait_s']} / {g['p50_wait_s']} / "
                         f"{g['p95_wait_s']} / {g['p99_wait_s']} / {g['max_wait_s']}; avg JCT {g['avg_jct_s']}")
    return "\n".join(lines)
