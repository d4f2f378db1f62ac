"""Telemetry use cases: ingest a report, check heartbeats, summarise a job's GPU use.

Ingest is the hot path (a region of 1,000 nodes x 8 GPUs pushes 8,000 samples a second), so:
- the body is validated once by pydantic straight from bytes (`model_validate_json`);
- samples become plain tuples and go into the DB in one statement per report: PostgreSQL
  binary `COPY ... FROM STDIN` (on the fast path of `pg_ingest`: about four round trips per
  report, asynchronous commit, a pool of its own), SQLite `executemany`;
- one transaction per report holds: claim the seq, insert samples, insert the host reading,
  update node health. Claiming is write-first (`UPDATE agent_state SET last_seq = :seq WHERE
  node_id = :n AND last_seq < :seq`), so two copies of one report racing each other store it
  once, with no read-then-write upgrade (SQLITE_BUSY) and with the node's row lock held until
  commit.

Invariants: a report is stored at most once per (node, seq); a report is accepted only from
an agent token bound to the report's node; a duplicate is acknowledged (the agent drops it)
without touching any table.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from agents.schema import TelemetryAck, TelemetryReport
from broker.errors import Forbidden, Invalid
from broker.ports import Clock
from broker.services.telemetry import health
from broker.services.telemetry.health import HealthConfig
from broker.services.telemetry.rows import (HOST_COLUMNS, JOB_INDEX, PROJECT_INDEX, SAMPLE_COLUMNS, SAMPLE_PG_TYPES,
                                            claim_params, host_row, parse_report, sample_row)

log = logging.getLogger("broker.telemetry")

@dataclass(frozen=True)
class TelemetryConfig:
    raw_retention_s: float = 7 * 86400.0
    minute_retention_s: float = 31 * 86400.0
    hour_retention_s: float = 400 * 86400.0
    rollup_lateness_s: float = 120.0  # minutes younger than this are not rolled up yet
    max_future_s: float = 86400.0  # a sample further in the future means a broken clock: 422
    # PostgreSQL: commit ingest transactions with synchronous_commit=off. Why: a WAL flush per
    # report is the ingest bottleneck; the price is that a PostgreSQL crash (not a broker
    # crash) can lose the last ~0.6 s of acknowledged samples (3 x wal_writer_delay). Only
    # telemetry transactions are affected: jobs, quotas and tokens stay synchronous.
    async_commit: bool = True
    heartbeat_write_s: float = 5.0  # nodes.last_heartbeat is rewritten at most this often
    mark_cache_s: float = 10.0
    # At most this many ingest threads per process. Why: ingest is mostly Python (validation,
    # COPY rows) and holds the GIL; forty threads fighting over it cost more CPU than they
    # overlap waiting on the database. Requests beyond the limit wait in the event loop.
    ingest_threads: int = 4
    health: HealthConfig = HealthConfig()

    @classmethod
    def from_settings(cls, settings: Any) -> "TelemetryConfig":
        """Read BROKER_TELEMETRY_* knobs where Settings has them; defaults otherwise."""
        g = lambda name, default: getattr(settings, name, default)  # noqa: E731
        return cls(
            raw_retention_s=g("telemetry_raw_retention_s", cls.raw_retention_s),
            minute_retention_s=g("telemetry_minute_retention_s", cls.minute_retention_s),
            hour_retention_s=g("telemetry_hour_retention_s", cls.hour_retention_s),
            ingest_threads=g("telemetry_ingest_threads", cls.ingest_threads),
            health=HealthConfig(
                heartbeat_timeout_s=g("heartbeat_timeout_s", 60.0),
                fatal_hold_s=g("telemetry_fatal_hold_s", 3600.0),
            ),
        )


class TelemetryService:
    def __init__(self, engine: Engine, config: TelemetryConfig = TelemetryConfig(),
                 clock: Clock = time.time, ingest_engine: Engine | None = None) -> None:
        self.engine, self.config, self.clock = engine, config, clock
        self.dialect = engine.dialect.name
        self._ingest_engine = ingest_engine
        self._own_ingest_engine = False
        self._wm_cache: tuple[float | None, float] = (None, -1e18)
        self._limiter: anyio.CapacityLimiter | None = None
        self._projects: dict[str, str] = {}

    @property
    def ingest_engine(self) -> Engine:
        """PostgreSQL: a pool of its own for the ingest path, without pre-ping.

        Why: pre-ping costs a round trip and two autocommit switches per checkout, a quarter
        of a report's time; and a flood of telemetry must not take the connections the job
        API needs. A connection that died is invalidated on its first error (the agent
        retries, its data stays buffered). SQLite: the app's engine.
        """
        if self._ingest_engine is None:
            if self.dialect == "postgresql":
                from sqlalchemy import create_engine

                size = max(2, getattr(self.engine.pool, "size", lambda: 5)())
                self._ingest_engine = create_engine(self.engine.url, pool_size=size, max_overflow=size,
                                                    pool_pre_ping=False, pool_recycle=600,
                                                    pool_timeout=self.engine.pool.timeout(),
                                                    connect_args={"connect_timeout": 5})
                self._own_ingest_engine = True
            else:
                self._ingest_engine = self.engine
        return self._ingest_engine

    def close(self) -> None:
        if self._own_ingest_engine and self._ingest_engine is not None:
            self._ingest_engine.dispose()
        self._ingest_engine, self._own_ingest_engine = None, False

    # ------------------------------------------------------------------ ingest
    async def ingest_async(self, *, agent_node_id: str | None, body: bytes) -> TelemetryAck:
        """`ingest_bytes` in a worker thread, at most `config.ingest_threads` at once."""
        if self._limiter is None:  # created on first use: it belongs to the running event loop
            self._limiter = anyio.CapacityLimiter(self.config.ingest_threads)
        return await anyio.to_thread.run_sync(partial(self.ingest_bytes, agent_node_id=agent_node_id, body=body),
                                              limiter=self._limiter)

    def ingest_bytes(self, *, agent_node_id: str | None, body: bytes, now: float | None = None) -> TelemetryAck:
        return self.ingest(agent_node_id=agent_node_id, report=parse_report(body), now=now)

    def ingest(self, *, agent_node_id: str | None, report: TelemetryReport, now: float | None = None) -> TelemetryAck:
        now = self.clock() if now is None else now
        if not agent_node_id or report.node_id != agent_node_id:
            raise Forbidden(f"this agent token may only push telemetry for node {agent_node_id!r}",
                            code="NODE_MISMATCH", details={"token_node": agent_node_id, "report_node": report.node_id})
        if report.gpus and max(s.ts for s in report.gpus) > now + self.config.max_future_s:
            raise Invalid("sample timestamps are more than a day in the future: check the node's clock",
                          code="CLOCK_SKEW")
        oldest_kept = now - self.config.raw_retention_s
        rows = self._with_projects([sample_row(report.node_id, s) for s in report.gpus if s.ts >= oldest_kept])
        faults = health.gpu_faults(report.gpus, self.config.health.fatal_xids)
        if self.dialect == "postgresql":
            from broker.services.telemetry import pg_ingest

            ack = pg_ingest.ingest(self, report, rows, faults, now)
            if ack is not None:
                return ack  # else: first report of this node or a duplicate: the generic path decides
        with Session(self.ingest_engine) as s:
            try:
                latch = self._claim(s, report, now, len(rows), faults)
                if latch is None:
                    s.rollback()
                    return TelemetryAck(accepted=True, duplicate=True, samples=0)
                if rows:
                    self._insert_samples(s, rows)
                    self._mark_late(s, min(r[3] for r in rows), now)
                if report.host is not None:
                    s.execute(text(f"INSERT INTO host_samples ({', '.join(HOST_COLUMNS)}) VALUES "
                                   f"({', '.join(':' + c for c in HOST_COLUMNS)})"),
                              dict(zip(HOST_COLUMNS, host_row(report))))
                status = self._update_node(s, report, now, faults, latch)
                s.commit()
            except BaseException:
                s.rollback()
                raise
        return TelemetryAck(accepted=True, samples=len(rows), node_status=status)

    def _with_projects(self, rows: list[tuple]) -> list[tuple]:
        """Set project_id of attributed rows from the jobs table (the agent may not know it).

        The DB's answer wins over the agent's: the job's project is the broker's fact. Known
        answers are cached (a job never changes project); unknown job ids keep what the agent
        said and are asked again next time."""
        jobs = {r[JOB_INDEX] for r in rows if r[JOB_INDEX] is not None}
        if not jobs:
            return rows
        missing = [j for j in jobs if j not in self._projects]
        if missing:
            with Session(self.engine) as s:
                found = s.execute(text("SELECT id, project_id FROM jobs WHERE id IN :ids")
                                  .bindparams(bindparam("ids", expanding=True)), {"ids": missing}).all()
            if len(self._projects) > 50_000:
                self._projects.clear()
            self._projects.update({j: p for j, p in found})
        out = []
        for r in rows:
            p = self._projects.get(r[JOB_INDEX]) if r[JOB_INDEX] is not None else None
            out.append(r if p is None or p == r[PROJECT_INDEX] else r[:PROJECT_INDEX] + (p,) + r[PROJECT_INDEX + 1:])
        return out

    def _claim(self, s: Session, r: TelemetryReport, now: float, n: int, faults: list[str]) -> tuple | None:
        """Take `seq` for this node. Returns the health latch (fatal_at, fatal_reason), or None
        when the seq is not newer than the stored one (a duplicate)."""
        params = claim_params(r, now, n, faults)
        sets = ("last_seq=:seq, last_report_at=:now, agent_version=:ver, agent_started_at=:started, "
                "gpu_backend=:backend, cpu_only=:cpu_only, cpu_only_reason=:reason, driver_version=:driver, "
                "cuda_version=:cuda, device_count=:devices, buffered_reports=:buffered, dropped_reports=:dropped, "
                "reports=reports+1, samples=samples+:samples")
        if faults:
            sets += ", fatal_at=:fatal_at, fatal_reason=:fatal_reason"
        # PostgreSQL: this transaction commits asynchronously (see `TelemetryConfig.async_commit`);
        # set_config in RETURNING costs no extra round trip.
        extra = (", set_config('synchronous_commit', 'off', true)"
                 if self.dialect == "postgresql" and self.config.async_commit else "")
        row = s.execute(text(f"UPDATE agent_state SET {sets} WHERE node_id=:n AND last_seq < :seq "
                             f"RETURNING fatal_at, fatal_reason{extra}"), params).first()
        if row is not None:
            return (row[0], row[1] or "")
        exists = s.execute(text("SELECT 1 FROM agent_state WHERE node_id=:n"), {"n": r.node_id}).first()
        if exists:
            return None  # seq already stored: a replayed duplicate
        res = s.execute(text(
            "INSERT INTO agent_state (node_id, last_seq, last_report_at, agent_version, agent_started_at, gpu_backend, "
            "cpu_only, cpu_only_reason, driver_version, cuda_version, device_count, buffered_reports, dropped_reports, "
            "reports, samples, fatal_at, fatal_reason) VALUES (:n, :seq, :now, :ver, :started, :backend, :cpu_only, "
            ":reason, :driver, :cuda, :devices, :buffered, :dropped, 1, :samples, :fatal_at, :fatal_reason) "
            "ON CONFLICT (node_id) DO NOTHING"), params)
        return (params["fatal_at"], params["fatal_reason"]) if res.rowcount == 1 else None

    def _insert_samples(self, s: Session, rows: list[tuple]) -> None:
        conn = s.connection()
        if self.dialect == "postgresql":
            # binary COPY in the same transaction: about half the cost of text COPY
            raw = conn.connection.driver_connection
            with raw.cursor() as cur, cur.copy(f"COPY gpu_samples ({', '.join(SAMPLE_COLUMNS)}) "
                                               "FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(SAMPLE_PG_TYPES)
                for row in rows:
                    cp.write_row(row)
            return
        marks = ", ".join("?" for _ in SAMPLE_COLUMNS)
        conn.exec_driver_sql(f"INSERT INTO gpu_samples ({', '.join(SAMPLE_COLUMNS)}) VALUES ({marks})", rows)

    def _mark_late(self, s: Session, min_ts: float, now: float) -> None:
        """A sample older than the minute watermark makes its bucket dirty for the next rollup.

        The watermark is cached for `mark_cache_s`: a stale (lower) watermark can only miss
        samples younger than it, and the rollup redoes the last minutes before its watermark
        on every run (rollup._REWIND_S > mark_cache_s + the rollup interval)."""
        from broker.services.telemetry import rollup

        wm, at = self._wm_cache
        if now - at > self.config.mark_cache_s or now < at:
            wm = rollup.watermark(s)
            self._wm_cache = (wm, now)
        if wm is not None and min_ts < wm:
            rollup.mark_dirty_if_late(s, min_ts)

    def _update_node(self, s: Session, r: TelemetryReport, now: float, faults: list[str],
                     latch: tuple) -> str | None:
        row = s.execute(text("SELECT state, state_reason, last_heartbeat FROM nodes WHERE id=:n"),
                        {"n": r.node_id}).first()
        if row is None:
            return None  # not in the inventory yet: samples are kept, health starts when it appears
        new_state, new_reason, write = self.node_transition(r, now, faults, latch, row[0], row[1] or "", row[2])
        if write:
            s.execute(text("UPDATE nodes SET last_heartbeat=:now, state=:st, state_reason=:rs, updated_at=:now "
                           "WHERE id=:n AND state=:old"),
                      {"now": now, "st": new_state, "rs": new_reason, "n": r.node_id, "old": row[0]})
        return new_state

    def node_transition(self, r: TelemetryReport, now: float, faults: list[str], latch: tuple, state: str,
                        reason: str, last_hb: float | None) -> tuple[str, str, bool]:
        """(new state, new reason, whether the node row must be written) after an accepted report."""
        new_state, new_reason = health.on_report(state, reason, faults, latch[0], latch[1] or "",
                                                 r.heartbeat.started_at, now, self.config.health)
        if (new_state, new_reason) != (state, reason):
            log.warning("node %s: %s -> %s (%s)", r.node_id, state, new_state, new_reason or "healthy again")
            return new_state, new_reason, True
        fresh = last_hb is not None and 0 <= now - last_hb < self.config.heartbeat_write_s
        return new_state, new_reason, not fresh  # a heartbeat written moments ago spares the row update

    # ------------------------------------------------------------------ heartbeats
    def check_heartbeats(self, now: float | None = None) -> list[tuple[str, str, str]]:
        """Mark nodes whose agent went silent UNHEALTHY; returns [(node, new_state, reason)]."""
        now = self.clock() if now is None else now
        cutoff = now - self.config.health.heartbeat_timeout_s
        changed = []
        with Session(self.engine) as s:
            rows = s.execute(text(
                "SELECT n.id, n.state, n.state_reason, a.last_report_at FROM nodes n "
                "JOIN agent_state a ON a.node_id = n.id WHERE a.last_report_at < :cutoff AND n.state <> :unhealthy"),
                {"cutoff": cutoff, "unhealthy": health.UNHEALTHY}).all()
            for node_id, state, reason, last in rows:
                new_state, new_reason = health.on_silence(state, reason or "", last, now, self.config.health)
                if (new_state, new_reason) == (state, reason):
                    continue
                res = s.execute(text("UPDATE nodes SET state=:st, state_reason=:rs, updated_at=:now "
                                     "WHERE id=:n AND state=:old"),
                                {"st": new_state, "rs": new_reason, "now": now, "n": node_id, "old": state})
                if res.rowcount:
                    log.warning("node %s: %s -> %s (%s)", node_id, state, new_state, new_reason)
                    changed.append((node_id, new_state, new_reason))
            s.commit()
        return changed
