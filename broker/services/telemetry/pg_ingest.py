"""The PostgreSQL ingest fast path: one report in about four round trips, one transaction.

(Measured against a one-statement variant (data-modifying CTEs + json_populate_recordset, one
round trip): that one saved a quarter of the broker's CPU but cost PostgreSQL more than it
saved, and gave less throughput on the shared 2-core machine; binary COPY stays.)

Why a separate path: on a busy machine every round trip costs a scheduler wake-up of the
backend, and the generic SQLAlchemy path needs about nine (BEGIN, claim, COPY, watermark,
host row, node read, node write, COMMIT, pool reset). Here, on a raw psycopg connection of
the service's own pool:
  1. pipeline: BEGIN + the claim UPDATE, whose RETURNING also brings the health latch, the
     node's state and last heartbeat, and switches the transaction to asynchronous commit;
  2. binary COPY of the samples;
  3. pipeline: host row + node row (when needed) + COMMIT.
The invariants are those of `TelemetryService.ingest`: same claim, same health rules, all or
nothing. When the claim matches no row (the node's first report, or a duplicate) this path
rolls back and returns None, and the generic path decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents.schema import TelemetryAck, TelemetryReport
from broker.services.telemetry.rows import HOST_COLUMNS, SAMPLE_COLUMNS, SAMPLE_PG_TYPES, claim_params, host_row

if TYPE_CHECKING:  # the service calls in here lazily; only its type is needed
    from broker.services.telemetry.service import TelemetryService

_SETS = ("last_seq=%(seq)s, last_report_at=%(now)s, agent_version=%(ver)s, agent_started_at=%(started)s, "
         "gpu_backend=%(backend)s, cpu_only=%(cpu_only)s, cpu_only_reason=%(reason)s, driver_version=%(driver)s, "
         "cuda_version=%(cuda)s, device_count=%(devices)s, buffered_reports=%(buffered)s, "
         "dropped_reports=%(dropped)s, reports=reports+1, samples=samples+%(samples)s")
_RETURNING = ("RETURNING fatal_at, fatal_reason, "
              "(SELECT state FROM nodes WHERE id=%(n)s), (SELECT state_reason FROM nodes WHERE id=%(n)s), "
              "(SELECT last_heartbeat FROM nodes WHERE id=%(n)s), "
              "(SELECT count(*) FROM nodes WHERE id=%(n)s)")
_CLAIM = f"UPDATE agent_state SET {_SETS} WHERE node_id=%(n)s AND last_seq < %(seq)s {_RETURNING}"
_CLAIM_FATAL = (f"UPDATE agent_state SET {_SETS}, fatal_at=%(fatal_at)s, fatal_reason=%(fatal_reason)s "
                f"WHERE node_id=%(n)s AND last_seq < %(seq)s {_RETURNING}")
_ASYNC = "SELECT set_config('synchronous_commit', 'off', true)"
_COPY = f"COPY gpu_samples ({', '.join(SAMPLE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_HOST = f"INSERT INTO host_samples ({', '.join(HOST_COLUMNS)}) VALUES ({', '.join(['%s'] * len(HOST_COLUMNS))})"
_NODE = ("UPDATE nodes SET last_heartbeat=%(now)s, state=%(st)s, state_reason=%(rs)s, updated_at=%(now)s "
         "WHERE id=%(n)s AND state=%(old)s")


def ingest(svc: TelemetryService, report: TelemetryReport, rows: list[tuple], faults: list[str],
           now: float) -> TelemetryAck | None:
    fairy = svc.ingest_engine.raw_connection()
    try:
        conn = fairy.driver_connection
        if conn.autocommit:  # an injected AUTOCOMMIT pool: this path needs one transaction
            conn.autocommit = False
        try:
            params = claim_params(report, now, len(rows), faults)
            with conn.pipeline():
                if svc.config.async_commit:
                    conn.execute(_ASYNC)
                cur = conn.execute(_CLAIM_FATAL if faults else _CLAIM, params)
            got = cur.fetchone()
            if got is None:
                conn.rollback()
                return None
            fatal_at, fatal_reason, state, reason, last_hb, has_node = got
            if rows:
                with conn.cursor() as c, c.copy(_COPY) as cp:
                    cp.set_types(SAMPLE_PG_TYPES)
                    for row in rows:
                        cp.write_row(row)
                _mark_late(svc, conn, min(r[3] for r in rows), now)
            status = None
            write = False
            if has_node:
                status, new_reason, write = svc.node_transition(report, now, faults, (fatal_at, fatal_reason),
                                                                state, reason or "", last_hb)
            with conn.pipeline():
                h = host_row(report)
                if h is not None:
                    conn.execute(_HOST, h)
                if write:
                    conn.execute(_NODE, {"now": now, "st": status, "rs": new_reason, "n": report.node_id,
                                         "old": state})
                conn.commit()
        except BaseException:
            conn.rollback()
            raise
    finally:
        fairy.close()  # back to the pool
    return TelemetryAck(accepted=True, samples=len(rows), node_status=status)


def _mark_late(svc: TelemetryService, conn, min_ts: float, now: float) -> None:
    """As TelemetryService._mark_late, on the raw connection (rare: only for late samples)."""
    wm, at = svc._wm_cache
    if now - at > svc.config.mark_cache_s or now < at:
        row = conn.execute("SELECT value FROM telemetry_marks WHERE name='rollup_1m'").fetchone()
        wm = None if row is None else float(row[0])
        svc._wm_cache = (wm, now)
    if wm is None or min_ts >= wm:
        return
    bucket = min_ts - (min_ts % 60)
    conn.execute("INSERT INTO telemetry_marks (name, value) VALUES ('dirty_1m', %s) "
                 "ON CONFLICT (name) DO UPDATE SET value = LEAST(telemetry_marks.value, EXCLUDED.value)", (bucket,))
    conn.execute("INSERT INTO telemetry_marks (name, value) VALUES ('dirty_gen', 1) "
                 "ON CONFLICT (name) DO UPDATE SET value = telemetry_marks.value + 1")
