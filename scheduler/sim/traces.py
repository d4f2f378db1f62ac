"""Workload traces for the simulator: parse, validate, estimate max_runtime, split into workers.

Two formats are read:

- ``canonical`` CSV. Required columns ``job_id,submit_time,duration,gpus,project``
  (seconds from trace start); optional ``workers,cpus,memory_gb,gpu_model,class,priority,
  max_runtime,checkpointable``. ``gpus``, ``cpus`` and ``memory_gb`` are the job's totals over
  all its workers (split evenly across workers). ``class`` is ``operation`` or ``innovation``
  (default innovation); ``checkpointable`` is ``true/false/1/0/yes/no`` (default false); an
  empty optional cell means "use the default".
- ``philly-pollux``: the Pollux preprocessing of Microsoft's Philly trace
  (``timestamp,duration,num_gpus,gpu_time,cluster``). The project is the ``cluster`` column,
  submit times become seconds after the earliest timestamp, job ids are ``j<line>``.

Every bad row raises `TraceError` naming the 1-based file line (the header is line 1) and the
problem; the simulator CLI prints it and exits 2. Nothing is silently skipped.

max_runtime when the trace has none
-----------------------------------
The scheduler never sees a job's true duration, only its ``max_runtime`` (the limit the user
asks for; backfill reservations and budget reservations are computed from it). When the trace
gives none we model what users actually submit: a *walltime request* that is the real run time
padded by ``RUNTIME_FACTOR`` (2x) and rounded up to a ``RUNTIME_STEP`` (15 minute) boundary,
never below one step. Why this rather than a per-project quantile: a broker enforces
max_runtime, so an estimate below the real duration would mean the job is killed, and the
traces record jobs that ran to completion; studies of batch systems (Slurm, PBS) find requests
are typically two to several times the real run time and are given in round numbers. The 2x
padding keeps the information the scheduler gets honest (coarse, pessimistic), and the
simulator never shows the true duration to ``run_cycle``.

Worker split
------------
A job's GPUs must sit on one node per worker. When the trace gives no ``workers`` and the job
needs more GPUs than a node has, it is split into the fewest equal workers that fit a node:
``k = ceil(gpus / gpus_per_node)``, raised until ``k`` divides ``gpus`` (16 GPUs on 8-GPU nodes
= 2 x 8; 12 = 2 x 6; 24 = 3 x 8).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

from scheduler.model import Job, Resources, WorkloadClass

FORMATS: tuple[str, ...] = ("canonical", "philly-pollux")
CANONICAL_REQUIRED: tuple[str, ...] = ("job_id", "submit_time", "duration", "gpus", "project")
CANONICAL_OPTIONAL: tuple[str, ...] = (
    "workers", "cpus", "memory_gb", "gpu_model", "class", "priority", "max_runtime", "checkpointable",
)
PHILLY_COLUMNS: tuple[str, ...] = ("timestamp", "duration", "num_gpus", "gpu_time", "cluster")

RUNTIME_FACTOR = 2.0
RUNTIME_STEP_S = 900.0

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the line and the problem."""

    def __init__(self, line: int, problem: str, path: str = "") -> None:
        self.line = line
        self.problem = problem
        where = f"{path}: " if path else ""
        super().__init__(f"{where}line {line}: {problem}")


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace, validated. Totals are over all workers.

    Invariants: duration > 0, gpus >= 1, submit_time >= 0, max_runtime > 0,
    workers is None or divides gpus.
    """

    id: str
    submit_time: float
    duration: float
    gpus: int
    project: str
    workers: int | None = None  # None: split by the simulator's gpus-per-node
    cpus: float = 0.0
    memory_gb: float = 0.0
    gpu_model: str = ""
    workload_class: WorkloadClass = WorkloadClass.INNOVATION
    priority: int = 0
    max_runtime: float = 0.0
    checkpointable: bool = False
    line: int = 0

    @property
    def gpu_seconds(self) -> float:
        return self.duration * self.gpus


def estimate_max_runtime(duration: float) -> float:
    """The walltime a user would request: 2x the run time, rounded up to 15 minutes (>= 15 min)."""
    steps = math.ceil(duration * RUNTIME_FACTOR / RUNTIME_STEP_S)
    return max(1, steps) * RUNTIME_STEP_S


def split_workers(gpus: int, gpus_per_node: int, workers: int | None = None) -> tuple[int, int]:
    """(workers, gpus per worker) for a job of `gpus` total GPUs.

    With explicit `workers` it is kept (it must divide gpus). Otherwise the fewest workers
    k >= ceil(gpus / gpus_per_node) that divide gpus evenly.
    """
    if workers is not None:
        if workers < 1 or gpus % workers:
            raise ValueError(f"{workers} workers do not divide {gpus} GPUs evenly")
        return workers, gpus // workers
    if gpus_per_node < 1:
        raise ValueError("gpus_per_node must be >= 1")
    k = max(1, math.ceil(gpus / gpus_per_node))
    while gpus % k:
        k += 1
    return k, gpus // k


def to_job(tj: TraceJob, gpus_per_node: int) -> Job:
    """The scheduler's view of a trace job: no duration, only max_runtime."""
    workers, per_gpus = split_workers(tj.gpus, gpus_per_node, tj.workers)
    return Job(
        id=tj.id,
        project=tj.project,
        workload_class=tj.workload_class,
        priority=tj.priority,
        submit_time=tj.submit_time,
        workers=workers,
        per_worker=Resources(gpus=per_gpus, cpus=tj.cpus / workers, memory_gb=tj.memory_gb / workers),
        gpu_models=(tj.gpu_model,) if tj.gpu_model else (),
        max_runtime_s=tj.max_runtime,
        checkpointable=tj.checkpointable,
    )


def load_trace(path: str, fmt: str = "canonical") -> list[TraceJob]:
    """Read and validate a trace file; jobs sorted by (submit_time, line)."""
    if fmt not in FORMATS:
        raise TraceError(0, f"unknown trace format {fmt!r} (use one of {', '.join(FORMATS)})", path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise TraceError(0, f"cannot read trace: {e.strerror or e}", path) from None
    except UnicodeDecodeError as e:
        raise TraceError(0, f"not UTF-8 text ({e.reason})", path) from None
    try:
        jobs = parse_lines(lines, fmt)
    except TraceError as e:
        raise TraceError(e.line, e.problem, path) from None
    return jobs


def parse_lines(lines: Sequence[str], fmt: str = "canonical") -> list[TraceJob]:
    """Parse CSV text lines (header first). Raises TraceError naming the bad line."""
    rows = _rows(lines)
    if fmt == "philly-pollux":
        jobs = _parse_philly(rows)
    elif fmt == "canonical":
        jobs = _parse_canonical(rows)
    else:
        raise TraceError(0, f"unknown trace format {fmt!r}")
    if not jobs:
        raise TraceError(1, "the trace has a header but no jobs")
    jobs.sort(key=lambda j: (j.submit_time, j.line))
    return jobs


# -- helpers ---------------------------------------------------------------------------------


def _rows(lines: Sequence[str]) -> Iterable[tuple[int, list[str]]]:
    """(line number, cells) for non-blank lines; line numbers are 1-based file lines."""
    numbered = [(i + 1, s) for i, s in enumerate(lines) if s.strip()]
    reader = csv.reader([s for _, s in numbered])
    for (lineno, _), cells in zip(numbered, reader):
        yield lineno, [c.strip() for c in cells]


def _header(rows: Iterable[tuple[int, list[str]]], required: Sequence[str], known: Sequence[str]):
    it = iter(rows)
    try:
        lineno, header = next(it)
    except StopIteration:
        raise TraceError(1, "empty trace: expected a header line") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise TraceError(lineno, f"header lacks required column(s) {', '.join(missing)}; got {', '.join(header)}")
    unknown = [c for c in header if c not in known]
    if unknown:
        raise TraceError(lineno, f"unknown column(s) {', '.join(unknown)}; known: {', '.join(known)}")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise TraceError(lineno, f"duplicate column(s) {', '.join(dup)}")
    return header, it


def _cells(lineno: int, header: list[str], cells: list[str]) -> dict[str, str]:
    if len(cells) != len(header):
        raise TraceError(lineno, f"expected {len(header)} fields, found {len(cells)}")
    return dict(zip(header, cells))


def _number(lineno: int, name: str, text: str, *, minimum: float | None = None, strict: bool = False) -> float:
    try:
        x = float(text)
    except ValueError:
        raise TraceError(lineno, f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(x):
        raise TraceError(lineno, f"{name} must be finite, got {text!r}")
    if minimum is not None and (x <= minimum if strict else x < minimum):
        op = ">" if strict else ">="
        raise TraceError(lineno, f"{name} must be {op} {minimum:g}, got {text!r}")
    return x


def _integer(lineno: int, name: str, text: str, *, minimum: int | None = None) -> int:
    try:
        x = int(text)
    except ValueError:
        raise TraceError(lineno, f"{name} must be a whole number, got {text!r}") from None
    if minimum is not None and x < minimum:
        raise TraceError(lineno, f"{name} must be >= {minimum}, got {text!r}")
    return x


def _parse_canonical(rows: Iterable[tuple[int, list[str]]]) -> list[TraceJob]:
    header, it = _header(rows, CANONICAL_REQUIRED, CANONICAL_REQUIRED + CANONICAL_OPTIONAL)
    seen: set[str] = set()
    jobs: list[TraceJob] = []
    for lineno, cells in it:
        r = _cells(lineno, header, cells)
        jid = r["job_id"]
        if not jid:
            raise TraceError(lineno, "job_id is empty")
        if jid in seen:
            raise TraceError(lineno, f"duplicate job_id {jid!r}")
        seen.add(jid)
        project = r["project"]
        if not project:
            raise TraceError(lineno, "project is empty")
        duration = _number(lineno, "duration", r["duration"], minimum=0, strict=True)
        gpus = _integer(lineno, "gpus", r["gpus"], minimum=1)
        workers = None
        if r.get("workers"):
            workers = _integer(lineno, "workers", r["workers"], minimum=1)
            if gpus % workers:
                raise TraceError(lineno, f"gpus ({gpus}) must split evenly over workers ({workers})")
        klass = r.get("class") or WorkloadClass.INNOVATION.value
        try:
            wclass = WorkloadClass(klass)
        except ValueError:
            raise TraceError(lineno, f"class must be operation or innovation, got {klass!r}") from None
        ckpt = (r.get("checkpointable") or "").lower()
        if ckpt not in _TRUE | _FALSE:
            raise TraceError(lineno, f"checkpointable must be true or false, got {r['checkpointable']!r}")
        max_rt = r.get("max_runtime") or ""
        jobs.append(TraceJob(
            id=jid,
            submit_time=_number(lineno, "submit_time", r["submit_time"], minimum=0),
            duration=duration,
            gpus=gpus,
            project=project,
            workers=workers,
            cpus=_number(lineno, "cpus", r["cpus"], minimum=0) if r.get("cpus") else 0.0,
            memory_gb=_number(lineno, "memory_gb", r["memory_gb"], minimum=0) if r.get("memory_gb") else 0.0,
            gpu_model=r.get("gpu_model") or "",
            workload_class=wclass,
            priority=_integer(lineno, "priority", r["priority"]) if r.get("priority") else 0,
            max_runtime=(_number(lineno, "max_runtime", max_rt, minimum=0, strict=True) if max_rt
                         else estimate_max_runtime(duration)),
            checkpointable=ckpt in _TRUE,
            line=lineno,
        ))
    return jobs


def _parse_philly(rows: Iterable[tuple[int, list[str]]]) -> list[TraceJob]:
    header, it = _header(rows, PHILLY_COLUMNS, PHILLY_COLUMNS)
    raw: list[tuple[int, datetime, float, int, str]] = []
    for lineno, cells in it:
        r = _cells(lineno, header, cells)
        try:  # fromisoformat is ~10x faster than strptime; the length check keeps the format strict
            if len(r["timestamp"]) != 19:
                raise ValueError
            ts = datetime.fromisoformat(r["timestamp"])
        except ValueError:
            raise TraceError(lineno, f"timestamp must be YYYY-MM-DD HH:MM:SS, got {r['timestamp']!r}") from None
        duration = _number(lineno, "duration", r["duration"], minimum=0, strict=True)
        gpus = _integer(lineno, "num_gpus", r["num_gpus"], minimum=1)
        _number(lineno, "gpu_time", r["gpu_time"], minimum=0)
        if not r["cluster"]:
            raise TraceError(lineno, "cluster is empty")
        raw.append((lineno, ts, duration, gpus, r["cluster"]))
    if not raw:
        return []
    t0 = min(ts for _, ts, _, _, _ in raw)
    return [
        TraceJob(
            id=f"j{lineno}",
            submit_time=(ts - t0).total_seconds(),
            duration=duration,
            gpus=gpus,
            project=cluster,
            max_runtime=estimate_max_runtime(duration),
            line=lineno,
        )
        for lineno, ts, duration, gpus, cluster in raw
    ]
