"""The PostgreSQL ingest fast path: one report in ONE statement, one round trip.

Why: on a busy machine every round trip costs a scheduler wake-up of the backend, and the
generic SQLAlchemy path needs about nine (BEGIN, claim, COPY, watermark, host row, node read,
node write, COMMIT, pool reset). Here, on an autocommit connection of the service's own pool,
a single statement (its own transaction) does it all with data-modifying CTEs:

    claim    UPDATE agent_state ... WHERE last_seq < seq RETURNING the health latch (and,
             through set_config, makes this transaction commit asynchronously)
    samples  INSERT ... SELECT FROM json_populate_recordset(rows) WHERE the claim matched
    host     the same for the host reading
    result   the latch joined with the node's state and last heartbeat

The sample rows travel as one JSON array (orjson on our side, C on PostgreSQL's), cheaper
than COPY's per-row Python calls. The node row is written by a second statement only when
its state changes or its heartbeat is older than `heartbeat_write_s`; a crash between the
two costs one heartbeat, never a sample (the next report writes it).

Invariants are those of `TelemetryService.ingest`: same claim (samples stored at most once
per (node, seq), all or nothing), same health rules. When the claim matches no row (the
node's first report, or a duplicate) nothing was written and this returns None: the generic
path decides.
"""

from __future__ import annotations

import orjson

from agents.schema import TelemetryAck, TelemetryReport
from broker.telemetry.service import HOST_COLUMNS, SAMPLE_COLUMNS, TelemetryService, claim_params, host_row

_SETS = ("last_seq=%(seq)s, last_report_at=%(now)s, agent_version=%(ver)s, agent_started_at=%(started)s, "
         "gpu_backend=%(backend)s, cpu_only=%(cpu_only)s, cpu_only_reason=%(reason)s, driver_version=%(driver)s, "
         "cuda_version=%(cuda)s, device_count=%(devices)s, buffered_reports=%(buffered)s, "
         "dropped_reports=%(dropped)s, reports=reports+1, samples=samples+%(samples)s")
_S_COLS = ", ".join(SAMPLE_COLUMNS)
_H_COLS = ", ".join(HOST_COLUMNS)


def _statement(fatal: bool) -> str:
    sets = _SETS + (", fatal_at=%(fatal_at)s, fatal_reason=%(fatal_reason)s" if fatal else "")
    return f"""
WITH claim AS (
    UPDATE agent_state SET {sets}
    WHERE node_id = %(n)s AND last_seq < %(seq)s
    RETURNING fatal_at, fatal_reason, set_config('synchronous_commit', %(sync)s, true) AS sync
), samples AS (
    INSERT INTO gpu_samples ({_S_COLS})
    SELECT {_S_COLS} FROM json_populate_recordset(NULL::gpu_samples, %(rows)s::json)
    WHERE EXISTS (SELECT 1 FROM claim)
), host AS (
    INSERT INTO host_samples ({_H_COLS})
    SELECT {_H_COLS} FROM json_populate_recordset(NULL::host_samples, %(hosts)s::json)
    WHERE EXISTS (SELECT 1 FROM claim)
)
SELECT c.fatal_at, c.fatal_reason, n.state, n.state_reason, n.last_heartbeat, n.id IS NOT NULL
FROM claim c LEFT JOIN nodes n ON n.id = %(n)s"""


_INGEST, _INGEST_FATAL = _statement(False), _statement(True)
_NODE = ("UPDATE nodes SET last_heartbeat=%(now)s, state=%(st)s, state_reason=%(rs)s, updated_at=%(now)s "
         "WHERE id=%(n)s AND state=%(old)s")


def rows_json(rows: list[tuple]) -> str:
    return orjson.dumps([dict(zip(SAMPLE_COLUMNS, r)) for r in rows]).decode()


def ingest(svc: TelemetryService, report: TelemetryReport, rows: list[tuple], faults: list[str],
           now: float) -> TelemetryAck | None:
    params = claim_params(report, now, len(rows), faults)
    params["sync"] = "off" if svc.config.async_commit else "on"
    params["rows"] = rows_json(rows)
    h = host_row(report)
    params["hosts"] = orjson.dumps([dict(zip(HOST_COLUMNS, h))] if h is not None else []).decode()
    fairy = svc.ingest_engine.raw_connection()
    try:
        conn = fairy.driver_connection
        got = conn.execute(_INGEST_FATAL if faults else _INGEST, params).fetchone()
        if not conn.autocommit:  # an injected engine without AUTOCOMMIT: commit each step ourselves
            conn.commit()
        if got is None:
            return None
        fatal_at, fatal_reason, state, reason, last_hb, has_node = got
        status = None
        if has_node:
            status, new_reason, write = svc.node_transition(report, now, faults, (fatal_at, fatal_reason),
                                                            state, reason or "", last_hb)
            if write:
                conn.execute(_NODE, {"now": now, "st": status, "rs": new_reason, "n": report.node_id, "old": state})
        if rows:
            _mark_late(svc, conn, min(r[3] for r in rows), now)
        if not conn.autocommit:
            conn.commit()
    finally:
        fairy.close()  # back to the pool
    return TelemetryAck(accepted=True, samples=len(rows), node_status=status)


def _mark_late(svc: TelemetryService, conn, min_ts: float, now: float) -> None:
    """As TelemetryService._mark_late, on the raw connection (rare: only for late samples).

    Runs after the samples committed: the rollup that could have missed them is the one that
    read the watermark before; the dirty mark makes the next one redo their minutes."""
    wm, at = svc._wm_cache
    if now - at > svc.config.mark_cache_s or now < at:
        row = conn.execute("SELECT value FROM telemetry_marks WHERE name='rollup_1m'").fetchone()
        wm = None if row is None else float(row[0])
        svc._wm_cache = (wm, now)
    if wm is None or min_ts >= wm:
        return
    bucket = min_ts - (min_ts % 60)
    with conn.transaction():
        conn.execute("INSERT INTO telemetry_marks (name, value) VALUES ('dirty_1m', %s) ON CONFLICT (name) "
                     "DO UPDATE SET value = LEAST(telemetry_marks.value, EXCLUDED.value)", (bucket,))
        conn.execute("INSERT INTO telemetry_marks (name, value) VALUES ('dirty_gen', 1) "
                     "ON CONFLICT (name) DO UPDATE SET value = telemetry_marks.value + 1")
