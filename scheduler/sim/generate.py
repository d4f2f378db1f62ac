"""Seeded generator of mixed operation/innovation traces in the canonical format.

    python -m scheduler.sim.generate --seed 7 --projects 20 --operation-share 0.08 --load 0.9 \\
        --checkpointable-share 0.3 --days 7 --cluster-gpus 320 -o mixed.csv

Why: Philly has no operation work, no checkpointable jobs and no runtime requests, so the policy
questions of a regional unit (clinical inference that must never starve beside training that
should not be thrown away) need traces that have them. The same seed and parameters always
give the same file, byte for byte (one `random.Random(seed)`, fixed formatting), so a trace can
be named in a benchmark by its command line instead of being shipped.

The model (every number below is a module constant, to tune in one place):

- **Offered load.** Innovation jobs are drawn until their GPU-seconds (duration x GPUs) reach
  ``--load`` x ``--cluster-gpus`` x the days; operation jobs come on top (they are short: a
  fraction of a per cent of the work). Load 1.0 offers the cluster's capacity over the window; with the
  day peaks queues build at lower loads already.
- **Projects.** ``--projects`` projects; a fifth of them (at least one) are operation projects
  (``op-NN``), the rest innovation (``inno-NN``). Innovation activity is skewed like real
  tenants: project k (1-based, in a seeded order) submits with weight 1 / k^0.8.
- **Innovation jobs** (training, calibration, validation): GPUs 1 (70 %), 2 (10 %), 4 (9 %),
  8 (8 %), 16 (2 %), 32 (1 %); gangs above 8 GPUs are 8-GPU workers. Durations are lognormal
  (median 20 min, sigma 1.8: mean about 5x the median, as in Philly where median 1,144 s and
  mean 13,136 s), longer for larger gangs (median x (1 + log2(GPUs) / 2)), clipped to
  [1 min, 4 days]. Exactly ``--checkpointable-share`` of them (rounded) are checkpointable,
  drawn at random.
- **Operation jobs** (clinical inference and validation): short bursts, 1 GPU (80 %), 2 (15 %)
  or 4 (5 %); lognormal duration (median 5 min, sigma 0.8, clipped to [30 s, 2 h]); they arrive
  in bursts of 1 + geometric(mean 3) jobs within two minutes (a batch of studies), and make up
  ``--operation-share`` of the jobs (rounded; not of the work). Never checkpointable.
- **Diurnal and weekly rhythm.** Submit times follow a Poisson process whose rate is
  1 + 0.6 sin(...) peaking at 14:00 and lowest at 02:00, times 0.5 on days 6 and 7 of each week
  (the trace starts on a Monday at 00:00), drawn by thinning.
- **Runtime requests.** ``max_runtime`` is what users ask, never below the true duration:
  the duration times a lognormal factor (median 2.5, sigma 0.6, at least 1.1), rounded up to
  the next common walltime (15 min, 30 min, 1, 2, 4, 8, 12, 24, 48, 72 h, 7 days; never more
  than 7 days unless the job itself runs longer); 10 % of requests are 24 h (or the next
  walltime above the duration) whatever the job. The rounding makes short jobs' requests
  several times their run time, as in batch-system studies.

The canonical columns written: ``job_id,submit_time,duration,gpus,project,workers,class,
priority,max_runtime,checkpointable`` (see `scheduler.sim.traces`).
"""

from __future__ import annotations

import argparse
import bisect
import io
import math
import random
import sys
from dataclasses import dataclass, fields
from typing import NamedTuple, Sequence

DAY = 86400.0
OPERATION_PROJECT_FRACTION = 0.2
PROJECT_SKEW = 0.8
INNOVATION_GPUS = ((1, 70), (2, 10), (4, 9), (8, 8), (16, 2), (32, 1))
INNOVATION_MEDIAN_S, INNOVATION_SIGMA = 1200.0, 1.8
INNOVATION_CLIP_S = (60.0, 4 * DAY)
OPERATION_GPUS = ((1, 80), (2, 15), (4, 5))
OPERATION_MEDIAN_S, OPERATION_SIGMA = 300.0, 0.8
OPERATION_CLIP_S = (30.0, 7200.0)
BURST_MEAN_EXTRA, BURST_SPREAD_S = 3.0, 120.0
DIURNAL_AMPLITUDE, PEAK_HOUR, WEEKEND_FACTOR = 0.6, 14.0, 0.5
PAD_MEDIAN, PAD_SIGMA, PAD_MIN, FIXED_REQUEST_SHARE, FIXED_REQUEST_S = 2.5, 0.6, 1.1, 0.1, DAY
WALLTIMES_S = (900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, DAY, 2 * DAY, 3 * DAY, 7 * DAY)
GANG_WORKER_GPUS = 8
COLUMNS = ("job_id", "submit_time", "duration", "gpus", "project", "workers", "class", "priority", "max_runtime",
           "checkpointable")


@dataclass(frozen=True, slots=True)
class GenSpec:
    """The generator's parameters; `seed` plus these determine the trace."""

    seed: int = 1
    projects: int = 20
    operation_share: float = 0.08  # of the jobs
    load: float = 0.9  # offered GPU-seconds / (cluster_gpus x days)
    checkpointable_share: float = 0.3  # of the innovation jobs
    days: float = 7.0
    cluster_gpus: int = 320

    def check(self) -> None:
        """Raise ValueError for parameters that describe no trace."""
        if self.projects < 2:
            raise ValueError("projects must be >= 2 (one operation, one innovation)")
        if not 0 <= self.operation_share < 1 or not 0 <= self.checkpointable_share <= 1:
            raise ValueError("operation-share must be in [0, 1) and checkpointable-share in [0, 1]")
        if self.load <= 0 or self.days <= 0 or self.cluster_gpus < 1:
            raise ValueError("load, days and cluster-gpus must be > 0")


def parse_spec(text: str) -> GenSpec:
    """'SEED:key=value,...' (keys as the flags, dashes or underscores), e.g.
    '7:projects=20,operation-share=0.08,load=0.9,checkpointable-share=0.3,days=7'."""
    seed, _, rest = text.partition(":")
    kw: dict[str, object] = {"seed": int(seed)}
    types = {f.name: f.type for f in fields(GenSpec)}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in types or key == "seed":
            raise ValueError(f"bad generator parameter {item!r} (known: {', '.join(k for k in types if k != 'seed')})")
        kw[key] = int(value) if types[key] in (int, "int") else float(value)
    spec = GenSpec(**kw)  # type: ignore[arg-type]
    spec.check()
    return spec


def spec_text(spec: GenSpec) -> str:
    """The 'SEED:key=value,...' form of a spec (parse_spec's inverse)."""
    return f"{spec.seed}:" + ",".join(f"{f.name.replace('_', '-')}={getattr(spec, f.name)}"
                                      for f in fields(GenSpec) if f.name != "seed")


def generate(spec: GenSpec) -> str:
    """The trace as canonical CSV text. Same spec -> same text."""
    spec.check()
    rng = random.Random(spec.seed)
    n_op_proj = max(1, round(spec.projects * OPERATION_PROJECT_FRACTION))
    op_projects = [f"op-{i:02d}" for i in range(1, n_op_proj + 1)]
    inno_projects = [f"inno-{i:02d}" for i in range(1, spec.projects - n_op_proj + 1)]
    order = inno_projects[:]
    rng.shuffle(order)
    inno_weights = [1.0 / (k + 1) ** PROJECT_SKEW for k in range(len(order))]
    horizon = spec.days * DAY
    target = spec.load * spec.cluster_gpus * horizon
    jobs: list[_Row] = []
    work = 0.0
    n_inno = 0
    while work < target:
        gpus = _pick(rng, INNOVATION_GPUS)
        duration = _lognormal(rng, INNOVATION_MEDIAN_S * (1 + math.log2(gpus) / 2), INNOVATION_SIGMA,
                              INNOVATION_CLIP_S)
        project = rng.choices(order, weights=inno_weights)[0]
        jobs.append(_Row(_submit(rng, horizon), duration, gpus, project, "innovation", _request(rng, duration)))
        work += duration * gpus
        n_inno += 1
    for i in rng.sample(range(n_inno), round(n_inno * spec.checkpointable_share)):
        jobs[i] = jobs[i]._replace(checkpointable=True)
    n_op = round(n_inno * spec.operation_share / (1 - spec.operation_share))
    while n_op > 0:
        start = _submit(rng, horizon)
        project = rng.choice(op_projects)
        size = min(n_op, 1 + _geometric(rng, BURST_MEAN_EXTRA))
        for _ in range(size):
            gpus = _pick(rng, OPERATION_GPUS)
            duration = _lognormal(rng, OPERATION_MEDIAN_S, OPERATION_SIGMA, OPERATION_CLIP_S)
            submit = min(horizon - 1, start + rng.uniform(0, BURST_SPREAD_S))
            jobs.append(_Row(submit, duration, gpus, project, "operation", _request(rng, duration)))
        n_op -= size
    jobs.sort(key=lambda j: (j.submit, j.project, j.duration))
    out = io.StringIO()
    out.write(",".join(COLUMNS) + "\n")
    for i, j in enumerate(jobs):
        workers = j.gpus // GANG_WORKER_GPUS if j.gpus > GANG_WORKER_GPUS else ""
        out.write(f"g{i:06d},{j.submit:.0f},{j.duration:.0f},{j.gpus},{j.project},{workers},{j.klass},0,"
                  f"{j.max_runtime:.0f},{'true' if j.checkpointable else 'false'}\n")
    return out.getvalue()


class _Row(NamedTuple):
    """One generated job before it is written."""

    submit: float
    duration: float
    gpus: int
    project: str
    klass: str
    max_runtime: float
    checkpointable: bool = False


def _pick(rng: random.Random, table: Sequence[tuple[int, int]]) -> int:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def _lognormal(rng: random.Random, median: float, sigma: float, clip: tuple[float, float]) -> float:
    return float(round(min(clip[1], max(clip[0], median * math.exp(rng.gauss(0.0, sigma))))))


def _geometric(rng: random.Random, mean: float) -> int:
    """Failures before the first success with success probability 1 / (1 + mean)."""
    p = 1.0 / (1.0 + mean)
    return int(math.log(1.0 - rng.random()) / math.log(1.0 - p))


def _rate(t: float) -> float:
    """Relative submit rate at trace second t (max 1 + DIURNAL_AMPLITUDE)."""
    hour = (t % DAY) / 3600.0
    r = 1.0 + DIURNAL_AMPLITUDE * math.cos(2 * math.pi * (hour - PEAK_HOUR) / 24.0)
    return r * (WEEKEND_FACTOR if int(t // DAY) % 7 >= 5 else 1.0)


def _submit(rng: random.Random, horizon: float) -> float:
    """One submit time in [0, horizon) from the diurnal rate, by thinning."""
    while True:
        t = rng.uniform(0.0, horizon)
        if rng.random() * (1.0 + DIURNAL_AMPLITUDE) <= _rate(t):
            return t


def _request(rng: random.Random, duration: float) -> float:
    """The max_runtime a user asks for a job that really runs `duration` seconds."""
    if rng.random() < FIXED_REQUEST_SHARE:
        wanted = max(FIXED_REQUEST_S, duration)
    else:
        wanted = duration * max(PAD_MIN, PAD_MEDIAN * math.exp(rng.gauss(0.0, PAD_SIGMA)))
    i = bisect.bisect_left(WALLTIMES_S, wanted)
    if i < len(WALLTIMES_S):
        return WALLTIMES_S[i]
    return max(WALLTIMES_S[-1], math.ceil(duration / DAY) * DAY)  # the longest walltime a cluster grants


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.sim.generate", description=__doc__.split("\n")[0])
    d = GenSpec()
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--projects", type=int, default=d.projects)
    ap.add_argument("--operation-share", type=float, default=d.operation_share, help="share of the jobs")
    ap.add_argument("--load", type=float, default=d.load, help="offered GPU-seconds / cluster capacity")
    ap.add_argument("--checkpointable-share", type=float, default=d.checkpointable_share,
                    help="share of the innovation jobs")
    ap.add_argument("--days", type=float, default=d.days)
    ap.add_argument("--cluster-gpus", type=int, default=d.cluster_gpus, help="GPUs the load is relative to")
    ap.add_argument("-o", "--output", required=True, help="file to write ('-': stdout)")
    args = ap.parse_args(argv)
    spec = GenSpec(seed=args.seed, projects=args.projects, operation_share=args.operation_share, load=args.load,
                   checkpointable_share=args.checkpointable_share, days=args.days, cluster_gpus=args.cluster_gpus)
    try:
        text = generate(spec)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
