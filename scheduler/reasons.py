"""Pending reasons: one code, the numbers behind it, one plain sentence.

Why a module of its own: the wording is read by clinician-researchers ("why is my job not
running?"), so it lives in one place and every code has exactly one sentence template.
With `Policy.explain=False` the cycle calls `bare` instead: a shared per-code instance, no
strings, numbers or queue position.
"""

from __future__ import annotations

from typing import Mapping

from scheduler.model import PendingReason, ReasonCode

_BARE: dict[ReasonCode, PendingReason] = {c: PendingReason(c, "") for c in ReasonCode}


def bare(code: ReasonCode) -> PendingReason:
    """A reason with only its code (explain=False): one shared instance per code, no
    allocation, no queue position (bulk replays need the code only)."""
    return _BARE[code]


def _n(x: object) -> str:
    if isinstance(x, float):
        if x == float("inf"):
            return "unlimited"
        return str(int(x)) if x.is_integer() else f"{x:.1f}"
    return str(x)


def message(code: ReasonCode, d: Mapping[str, object], position: int | None = None) -> str:
    """One sentence for a code, filled from the details (and the queue position)."""
    unit = d.get("resource", "GPUs")
    if code is ReasonCode.QUOTA_LIMIT:
        if d.get("level") == "borrow":
            return (f"Project {d.get('project')} already uses {_n(d.get('in_use'))} of its {_n(d.get('nominal'))} "
                    f"nominal {unit} and only {_n(d.get('available'))} idle {unit} can be borrowed, "
                    f"but the job needs {_n(d.get('requested'))}.")
        if d.get("level") == "reserved":
            return (f"The job needs {_n(d.get('requested'))} {unit}, but the idle capacity is held for other "
                    f"projects' guarantees ({_n(d.get('available'))} {unit} may be used).")
        who = "department" if d.get("level") == "department" else "project"
        return (f"The {who} {d.get('owner')} uses {_n(d.get('in_use'))} of its limit of {_n(d.get('limit'))} "
                f"{unit}, and this job needs {_n(d.get('requested'))} more.")
    if code is ReasonCode.BUDGET_EXHAUSTED:
        return (f"The GPU-hour budget of {d.get('owner')} has {_n(d.get('left'))} of {_n(d.get('budget'))} "
                f"GPU-hours left (running jobs reserve their maximum runtime), and this job needs "
                f"{_n(d.get('requested'))}.")
    if code is ReasonCode.NO_CAPACITY:
        if "binding_free" in d:  # CPUs or memory bind, not GPUs
            return (f"The job needs {_n(d.get('binding_requested'))} {unit} but only {_n(d.get('binding_free'))} "
                    f"are free on healthy nodes it may use (its {_n(d.get('requested'))} GPUs are not what "
                    f"it waits for).")
        return (f"The job needs {_n(d.get('requested'))} GPUs but only {_n(d.get('free'))} are free on "
                f"healthy nodes it may use ({_n(d.get('in_use'))} in use).")
    if code is ReasonCode.FRAGMENTED:
        if "binding_free" in d:
            return (f"{_n(d.get('binding_free'))} {unit} are free in total, but no node with the GPUs for one "
                    f"worker has {_n(d.get('binding_per_worker'))} {unit} free with them (at most "
                    f"{_n(d.get('binding_largest_free'))} on one such node).")
        return (f"{_n(d.get('free'))} GPUs are free in total, but no node has {_n(d.get('per_worker'))} "
                f"free GPUs together for one worker of this job.")
    if code is ReasonCode.GPU_MODEL_UNAVAILABLE:
        return (f"No healthy node with the requested GPU model ({', '.join(d.get('gpu_models', ()))}) "
                f"is available in the pools this job may use.")
    if code is ReasonCode.DATA_UNAVAILABLE:
        return (f"The data this job mounts is only on {', '.join(d.get('nodes', ()))}, and none of them is a ready "
                "node of the pools it may use; it starts when one is.")
    if code is ReasonCode.WAITING_FOR_HIGHER_PRIORITY:
        return (f"The job is number {position} in the queue and waits for the jobs "
                f"ahead of it to start first.")
    if code is ReasonCode.BACKFILL_RESERVATION:
        return ("The job would fit now, but starting it would delay a larger job ahead of it that "
                "has the next free capacity reserved.")
    if code is ReasonCode.PREEMPTING:
        return (f"{_n(d.get('victims'))} job(s) are being stopped to make room for this job; it starts "
                f"once they have stopped.")
    if code is ReasonCode.NEVER_FITS:
        return (f"The job asks for {_n(d.get('per_worker'))} GPUs per worker, but no node in the pools "
                f"it may use has that many ({_n(d.get('largest_node'))} at most), so it can never start.")
    return str(code.value)


_new = object.__new__
_SET = tuple(PendingReason.__dict__[f].__set__
             for f in ("code", "message", "details", "queue_position", "estimated_start"))


def make_reason(code: ReasonCode, text: str, details: Mapping[str, object], position: int | None,
                estimated_start: float | None) -> PendingReason:
    """PendingReason(code, text, details, position, estimated_start), built through the slots'
    own setters: the frozen dataclass __init__ (object.__setattr__ per field) costs twice as
    much, and a deep queue builds one reason per pending job. Same fields, same object."""
    r = _new(PendingReason)
    s_code, s_text, s_details, s_pos, s_est = _SET
    s_code(r, code)
    s_text(r, text)
    s_details(r, details)
    s_pos(r, position)
    s_est(r, estimated_start)
    return r


def explained(code: ReasonCode, details: Mapping[str, object], position: int | None,
              estimated_start: float | None = None, text: str | None = None) -> PendingReason:
    """A full reason; `text` reuses a message already built for identical details.

    The queue position is the reason's own field, not a detail, so identical jobs (memoised
    in the cycle) share one details mapping: it must not be changed once handed over.
    """
    return make_reason(code, text if text is not None else message(code, details, position), details, position,
                       estimated_start)
