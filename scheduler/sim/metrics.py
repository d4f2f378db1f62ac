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
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

SLOWDOWN_BOUND_S = 10.0
PERCENTILES: tuple[int, ...] = (50, 95, 99)


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


def metrics(outcomes: Sequence[JobOutcome], cluster_gpus: int) -> dict:
    """The simulator's summary figures (see module docstring)."""
    done = [o for o in outcomes if o.end is not None]
    out: dict = {"jobs": len(done), "unfinished": len(outcomes) - len(done)}
    if not done:
        out.update(avg_jct_s=0.0, avg_wait_s=0.0, utilization=0.0, makespan_s=0.0, jain_fairness=1.0,
                   avg_slowdown=0.0, **{f"p{q}_wait_s": 0.0 for q in PERCENTILES})
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
    ("p95_wait_s", "p95 wait (s)"), ("p99_wait_s", "p99 wait (s)"), ("utilization", "utilization"),
    ("makespan_s", "makespan (s)"), ("avg_slowdown", "average bounded slowdown"),
    ("jain_fairness", "Jain fairness (project slowdown)"), ("preemptions", "preemptions"),
    ("lost_gpu_s", "GPU-seconds lost to preemption"), ("cycles", "scheduling cycles"), ("wall_s", "wall time (s)"),
)


def render_table(m: dict) -> str:
    """A readable two-column table of the metrics."""
    width = max(len(label) for _, label in _ROWS)
    lines = [f"{label:<{width}}  {m[key]}" for key, label in _ROWS if key in m]
    return "\n".join(lines)
