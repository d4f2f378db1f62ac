"""Rows -> public dicts (the JSON the API returns). Pure functions, no session.

Why dicts and not `JobPublic(...)`: the submit hot path serializes with orjson straight from
the row it just inserted; building a pydantic model per response costs more than the rest of
the request. Tests validate these dicts against the `broker.schemas` models, so the OpenAPI
document and the bodies cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from broker.models import Attempt, JobEvent, Placement


def job_public(j: Any, *, attempts: Iterable[Attempt] = (), placements: Iterable[Placement] = ()) -> dict:
    """`j` is a Job row or a mapping with the Job columns."""
    g = j.__getitem__ if type(j) is dict else (j.get if isinstance(j, Mapping) else j.__getattribute__)
    # Why it waits, its place and expected start describe a PENDING job only; a job that left the
    # queue (admitted, cancelled, ended) keeps the last values in its row, never shown as current.
    pending = g("status") == "PENDING"
    code = g("pending_code") if pending else None
    models = g("gpu_models") or None
    fpool = g("flavor_pool")
    return {
        "id": g("id"),
        "name": g("name"),
        "project": g("project_id"),
        "class": g("workload_class"),
        "image": g("image"),
        "command": g("command"),
        "env": g("env"),
        "resources": {"gpus": g("gpus"), "cpus": g("cpus"), "memory_gb": g("memory_gb"), "gpu_model": models},
        "workers": g("workers"),
        "max_runtime_s": g("max_runtime_s"),
        "priority": g("priority"),
        "runtime": g("runtime"),
        "max_retries": g("max_retries"),
        "checkpointable": bool(g("checkpointable")),
        "secrets": list(_opt(j, "secrets") or ()),
        "mounts": list(_opt(j, "mounts") or ()),
        "pool": g("pool"),
        "status": g("status"),
        "attempt": g("attempt"),
        "version": g("version"),
        "pending_reason": (
            {"code": code, "message": g("pending_message") or "", "details": g("pending_details") or {}}
            if code else None
        ),
        "queue_position": g("queue_position") if pending else None,
        "estimated_start": g("estimated_start") if pending else None,
        "submit_time": g("submit_time"),
        "created_at": g("created_at"),
        "admitted_at": g("admitted_at"),
        "started_at": g("started_at"),
        "finished_at": g("finished_at"),
        "cancel_requested_at": g("cancel_requested_at"),
        "exit_code": g("exit_code"),
        "message": g("message") or "",
        "borrowing": bool(g("borrowing")),
        "flavor": {"pool": fpool, "gpu_model": g("flavor_gpu_model")} if fpool else None,
        "attempts": [attempt_public(a) for a in attempts],
        "placements": [placement_public(p) for p in placements],
    }


def attempt_public(a: Attempt) -> dict:
    return {"number": a.number, "status": a.status, "admitted_at": a.admitted_at, "started_at": a.started_at,
            "ended_at": a.ended_at, "exit_code": a.exit_code, "reason": a.reason}


def placement_public(p: Placement) -> dict:
    return {"attempt": p.attempt, "rank": p.rank, "node": p.node_id, "gpu_indices": list(p.gpu_indices or []),
            "cuda_visible_devices": p.cuda_visible_devices}


AUDIT_KEY = "audit"  # who/where of a submit, for the audit log only (not shown with the job's events)


def event_public(e: JobEvent) -> dict:
    return {"id": e.id, "ts": e.ts, "kind": e.kind, "from_status": e.from_status, "to_status": e.to_status,
            "attempt": e.attempt, "message": e.message,
            "details": {k: v for k, v in (e.details or {}).items() if k != AUDIT_KEY}}


def _opt(j: Any, name: str) -> Any:
    """A column that rows built before it existed (and some test rows) may lack."""
    return j.get(name) if isinstance(j, Mapping) else getattr(j, name, None)
