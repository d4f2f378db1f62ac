"""Node health from telemetry: pure functions, no I/O.

Rules:
- no accepted report for `heartbeat_timeout_s` -> UNHEALTHY (no new placements);
- a fatal Xid (48, 63, 64, 74, 79, 92, 94, 95 by default), uncorrectable ECC errors, a
  failed or pending row remap -> DRAINING with the reason (running work may finish);
- recovery to READY when the node reports again and is healthy.

Why a latch for Xid: an Xid is an event, reported once; the next report looks healthy even
though the GPU still needs attention. So a fatal Xid latches `fatal_at`, and the node stays
DRAINING until `fatal_hold_s` has passed or the agent has restarted after it (a reboot or a
GPU reset restarts the agent). ECC counts and remap flags are states, not events: they stay
visible in every report until a GPU reset clears them, so they need no latch.

Ownership: telemetry only changes states it set itself, recognised by the reason prefix
"telemetry:". An admin's CORDONED node, or a node the Ray reconciler marked UNHEALTHY, is
left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from agents.schema import DeviceSample

READY, UNHEALTHY, DRAINING, CORDONED = "ready", "unhealthy", "draining", "cordoned"
PREFIX = "telemetry: "

DEFAULT_FATAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95})
XID_MEANING = {
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
}


@dataclass(frozen=True, slots=True)
class HealthConfig:
    heartbeat_timeout_s: float = 60.0
    fatal_hold_s: float = 3600.0
    fatal_xids: frozenset[int] = DEFAULT_FATAL_XIDS


def gpu_faults(samples: Iterable[DeviceSample], fatal_xids: frozenset[int] = DEFAULT_FATAL_XIDS) -> list[str]:
    """Human reasons for every fatal condition in these readings, one per (GPU, kind), sorted."""
    found: dict[tuple[int, str], str] = {}
    for s in samples:
        for e in s.xid_events:
            if e.xid in fatal_xids:
                found[(s.index, f"xid{e.xid}")] = f"GPU {s.index} Xid {e.xid} ({XID_MEANING.get(e.xid, 'fatal')})"
        if s.ecc_uncorrectable:
            found[(s.index, "ecc")] = f"GPU {s.index} uncorrectable ECC errors: {s.ecc_uncorrectable}"
        if s.remapped_rows_failure:
            found[(s.index, "remapf")] = f"GPU {s.index} row remapping failed"
        if s.remapped_rows_pending:
            found[(s.index, "remapp")] = f"GPU {s.index} row remap pending (GPU reset needed)"
    return [found[k] for k in sorted(found)]


def owned(state: str, reason: str) -> bool:
    """True when telemetry may change this node's state (it is ready, or telemetry set it)."""
    return state == READY or (state in (UNHEALTHY, DRAINING) and (reason or "").startswith(PREFIX))


def on_report(
    state: str,
    reason: str,
    faults: list[str],
    fatal_at: float | None,
    fatal_reason: str,
    agent_started_at: float,
    now: float,
    cfg: HealthConfig,
) -> tuple[str, str]:
    """(state, reason) of a node after an accepted report. Unowned states are returned unchanged."""
    if not owned(state, reason):
        return state, reason
    if faults:
        return DRAINING, (PREFIX + "; ".join(faults))[:500]
    latched = fatal_at is not None and now - fatal_at < cfg.fatal_hold_s and agent_started_at < fatal_at
    if latched:
        return DRAINING, (PREFIX + fatal_reason)[:500]
    return READY, ""


def on_silence(state: str, reason: str, last_report_at: float, now: float, cfg: HealthConfig) -> tuple[str, str]:
    """(state, reason) of a node whose agent has not reported since `last_report_at`."""
    silent = now - last_report_at
    if silent < cfg.heartbeat_timeout_s or not owned(state, reason) or state == UNHEALTHY:
        return state, reason
    return UNHEALTHY, f"{PREFIX}no heartbeat for {int(silent)} s (timeout {int(cfg.heartbeat_timeout_s)} s)"
