"""Human views of the API's data: tables sized to their content, times as people say them.

Pure functions of (data, now): no clock, no I/O, so tests render at a fixed `now` and compare
the text. Times from the API are epoch seconds; here they become local clock times and
"3 min ago" / "in ~12 min".
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

ACTIVE = ("ADMITTED", "STARTING", "RUNNING", "PREEMPTED")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def duration(seconds: float | None) -> str:
    """3 s, 12 min, 1 h 20 min, 2 d 3 h: the two largest units, rounded down."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def ago(ts: float | None, now: float) -> str:
    return "" if ts is None else f"{duration(now - ts)} ago"


def until(ts: float | None, now: float) -> str:
    """'in ~12 min' for a future time, 'now' when it has come."""
    if ts is None:
        return ""
    return "now" if ts <= now + 1 else f"in ~{duration(ts - now)}"


def clock(ts: float | None, now: float) -> str:
    """Local time: 16:42 today, 'Dec 05 16:42' on another day."""
    if ts is None:
        return ""
    t, n = time.localtime(ts), time.localtime(now)
    same_day = (t.tm_year, t.tm_yday) == (n.tm_year, n.tm_yday)
    return time.strftime("%H:%M" if same_day else "%b %d %H:%M", t)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[str] = ()) -> str:
    """Columns as wide as their widest cell, two spaces apart; `right` columns right-aligned."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = set(right)
    lines = []
    for r in [list(headers)] + rows:
        cells = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(r, widths, headers)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """'Key:  value' lines, keys padded to the longest; empty values left out."""
    pairs = [(k, v) for k, v in pairs if v not in (None, "", [])]
    w = max((len(k) for k, _ in pairs), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(w)}  {v}" for k, v in pairs)


def num(x: float | None) -> str:
    if x is None:
        return "-"
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


# -- jobs ---------------------------------------------------------------------------------------
def job_gpus(j: dict) -> int:
    """GPUs of the whole gang: per-worker GPUs times workers."""
    return int(j["resources"]["gpus"]) * int(j["workers"])


def job_nodes(j: dict) -> str:
    att = j.get("attempt")
    nodes = sorted({p["node"] for p in j.get("placements", []) if p.get("attempt") == att})
    return ",".join(nodes)


def job_start(j: dict, now: float) -> str:
    """When it started ('3 min ago'), or when it is expected to ('in ~12 min')."""
    if j.get("started_at"):
        return ago(j["started_at"], now)
    if j["status"] == "PENDING" and j.get("estimated_start"):
        return until(j["estimated_start"], now)
    return ""


def job_runtime(j: dict, now: float) -> str:
    start = j.get("started_at")
    if not start:
        return ""
    return duration((j.get("finished_at") or now) - start)


def jobs_table(items: list[dict], now: float) -> str:
    rows = []
    for j in items:
        why = (j.get("pending_reason") or {}).get("code", "") if j["status"] == "PENDING" else ""
        rows.append((j["id"], j["name"], j["project"], j["status"], job_gpus(j), j["workers"],
                     ago(j.get("submit_time") or j.get("created_at"), now), job_start(j, now),
                     job_runtime(j, now), job_nodes(j), why))
    if not rows:
        return "no jobs"
    return table(("ID", "NAME", "PROJECT", "STATUS", "GPUS", "WORKERS", "AGE", "START", "RUNTIME", "NODE",
                  "REASON"), rows, right=("GPUS", "WORKERS"))


def waiting_sentence(j: dict) -> str:
    """Why a pending job waits, in one sentence (the scheduler's message, else a plain default)."""
    pr = j.get("pending_reason") or {}
    msg = (pr.get("message") or "").strip()
    if msg:
        return msg if msg.endswith(".") else msg + "."
    if pr.get("code") == "NOT_YET_CONSIDERED" or not pr:
        return "Not yet considered by the scheduler (it looks at new jobs within seconds)."
    return pr["code"].replace("_", " ").capitalize() + "."


def job_summary(j: dict, now: float) -> str:
    """The few lines a person wants from `jobs get`: status, why, when, where, how it went."""
    st = j["status"]
    res = j["resources"]
    per = f"{res['gpus']} GPU, {num(res['cpus'])} CPU, {num(res['memory_gb'])} GiB"
    if res.get("gpu_model"):
        per += f" ({'/'.join(res['gpu_model'])})"
    resources = (f"{j['workers']} workers x ({per}) = {job_gpus(j)} GPUs" if j["workers"] > 1 else per)
    status = st
    if st == "PENDING":
        status += f" for {duration(now - (j.get('submit_time') or now))}"
        if j.get("queue_position"):
            status += f", position {j['queue_position']} in the queue"
    elif st in ACTIVE and j.get("started_at"):
        status += f" for {duration(now - j['started_at'])}"
    elif st in TERMINAL and j.get("finished_at"):
        status += f" {ago(j['finished_at'], now)}"
        if j.get("exit_code") is not None:
            status += f" (exit code {j['exit_code']})"
    pairs: list[tuple[str, Any]] = [
        ("Job", f"{j['id']}  {j['name']}"),
        ("Project", f"{j['project']}  ({j['class']}{', pool ' + j['pool'] if j.get('pool') else ''})"),
        ("Status", status),
    ]
    if st == "PENDING":
        pairs.append(("Why", waiting_sentence(j)))
        if j.get("estimated_start"):
            pairs.append(("Est. start", f"{clock(j['estimated_start'], now)} ({until(j['estimated_start'], now)})"))
    if j.get("message") and st != "PENDING":
        pairs.append(("Message", j["message"]))
    if j.get("cancel_requested_at") and st not in TERMINAL:
        pairs.append(("Cancel", f"requested {ago(j['cancel_requested_at'], now)}; workers are stopping"))
    pairs += [
        ("Resources", resources),
        ("Runtime", f"{j['runtime']}{'  image ' + j['image'] if j.get('image') else ''}"),
        ("Command", " ".join(j["command"])),
        ("Submitted", f"{clock(j.get('submit_time'), now)} ({ago(j.get('submit_time'), now)})"),
    ]
    if j.get("started_at"):
        pairs.append(("Started", f"{clock(j['started_at'], now)} ({ago(j['started_at'], now)}),"
                                 f" ran {job_runtime(j, now)}"))
    if j.get("borrowing") and st in ACTIVE:
        pairs.append(("Borrowing", "yes: above its quota, may be preempted when the owner needs it back"))
    text = kv(pairs)
    att = j.get("attempt")
    placements = [p for p in j.get("placements", []) if p.get("attempt") == att]
    if placements:
        text += "\n\n" + table(("RANK", "NODE", "GPUS"), [
            (p["rank"], p["node"], ",".join(map(str, p.get("gpu_indices") or [])) or "-") for p in placements])
    if j.get("attempts"):
        text += "\n\n" + table(("ATTEMPT", "STATUS", "STARTED", "ENDED", "EXIT", "REASON"), [
            (a["number"], a["status"], clock(a.get("started_at"), now), clock(a.get("ended_at"), now),
             "" if a.get("exit_code") is None else a["exit_code"], a.get("reason") or "")
            for a in j["attempts"]], right=("ATTEMPT",))
    return text


def job_line(j: dict, now: float) -> str:
    """One progress line while waiting: '16:42:01  PENDING  why...'."""
    st = j["status"]
    extra = ""
    if st == "PENDING":
        extra = waiting_sentence(j)
        if j.get("estimated_start"):
            extra += f" Expected {until(j['estimated_start'], now)}."
    elif st in ACTIVE:
        nodes = job_nodes(j)
        extra = f"on {nodes}" if nodes else ""
    elif j.get("exit_code") is not None:
        extra = f"exit code {j['exit_code']}"
    return f"{time.strftime('%H:%M:%S', time.localtime(now))}  {st:<9} {extra}".rstrip()
