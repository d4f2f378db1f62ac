"""SharedFakeExecutor: the fake executor whose attempts live in a file several processes share.

Why: a real executor (a Ray cluster) outlives the broker. A test that kills a broker with
`kill -9`, restarts it, or runs two brokers against one database needs an executor that
outlives them too, and keeps a record of every call from every process so that a history
checker can prove what happened (`broker.bench.history`). `broker.adapters.fake.FakeExecutor`
lives in one process's memory; this one keeps its state in a SQLite file (stdlib `sqlite3`,
one short transaction per call), so any number of broker processes see one executor.

A worker's life is driven by the clock and the job's command: `["sleep", "<seconds>"]` runs
that long and exits 0, `["fail", "<seconds>"]` exits 1 after that long, anything else runs
`default_run_s` (None: until stopped). `stop` ends the workers at once with 143 (SIGTERM).

Invariants (those of the real adapter): launch is idempotent per (job_id, attempt) (a second
call, from any process, only records itself in `launches` with created=0); status of an
unknown or released attempt has exists=False; read_log never raises.

Tables, for the checker: `attempts` (one row per attempt ever launched, with launch, end and
release times), `launches` (every launch call: pid, time, created), `stops` (every stop call).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Sequence

from broker.ports import AttemptStatus, Clock, LaunchSpec, NodeObservation, WorkerState, WorkerStatus

START_S = 0.05  # STARTING this long after launch, then RUNNING

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, launched_at REAL NOT NULL, run_s REAL,
    exit_code INTEGER NOT NULL, stopped_at REAL, released_at REAL, workers TEXT NOT NULL, pid INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt));
CREATE TABLE IF NOT EXISTS launches (job_id TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL,
    ts REAL NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stops (job_id TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL,
    ts REAL NOT NULL, reason TEXT NOT NULL);
"""


class SharedFakeExecutor:
    def __init__(self, path: Path | str, nodes: Sequence[NodeObservation] = (), *, clock: Clock = time.time,
                 default_run_s: float | None = None) -> None:
        self.path = str(path)
        self._nodes = list(nodes)
        self.clock = clock
        self.default_run_s = default_run_s
        with self._db() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(_SCHEMA)

    def _db(self) -> "_Closing":
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        c.execute("PRAGMA busy_timeout=30000")
        return _Closing(c)

    # -- Executor ------------------------------------------------------------------------------
    def nodes(self) -> Sequence[NodeObservation]:
        return list(self._nodes)

    def launch(self, spec: LaunchSpec) -> None:
        now = self.clock()
        run_s, code = _outcome(spec.command, self.default_run_s)
        workers = [[w.rank, w.node, ",".join(str(i) for i in w.gpu_indices)] for w in spec.workers]
        with self._db() as c:
            c.execute("BEGIN IMMEDIATE")
            exists = c.execute("SELECT 1 FROM attempts WHERE job_id = ? AND attempt = ?",
                               (spec.job_id, spec.attempt)).fetchone() is not None
            if not exists:
                c.execute("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, ?)",
                          (spec.job_id, spec.attempt, now, run_s, code, json.dumps(workers), os.getpid()))
            c.execute("INSERT INTO launches VALUES (?, ?, ?, ?, ?)",
                      (spec.job_id, spec.attempt, os.getpid(), now, 0 if exists else 1))
            c.execute("COMMIT")

    def status(self, job_id: str, attempt: int) -> AttemptStatus:
        with self._db() as c:
            row = c.execute("SELECT launched_at, run_s, exit_code, stopped_at, released_at, workers FROM attempts "
                            "WHERE job_id = ? AND attempt = ?", (job_id, attempt)).fetchone()
        if row is None or row[4] is not None:
            return AttemptStatus(job_id, attempt, (), exists=False)
        launched, run_s, code, stopped, _, workers = row
        now = self.clock()
        return AttemptStatus(job_id, attempt, tuple(_worker(r, n, cuda, launched, run_s, code, stopped, now)
                                                    for r, n, cuda in json.loads(workers)))

    def stop(self, job_id: str, attempt: int, grace_s: float, message: str = "", reason: str = "stopped") -> None:
        now = self.clock()
        with self._db() as c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO stops VALUES (?, ?, ?, ?, ?)", (job_id, attempt, os.getpid(), now, reason))
            row = c.execute("SELECT launched_at, run_s FROM attempts WHERE job_id = ? AND attempt = ? "
                            "AND stopped_at IS NULL", (job_id, attempt)).fetchone()
            if row is not None and not (row[1] is not None and now >= row[0] + START_S + row[1]):
                c.execute("UPDATE attempts SET stopped_at = ? WHERE job_id = ? AND attempt = ?", (now, job_id, attempt))
            c.execute("COMMIT")

    def release(self, job_id: str, attempt: int) -> None:
        with self._db() as c:
            c.execute("UPDATE attempts SET released_at = ? WHERE job_id = ? AND attempt = ? AND released_at IS NULL",
                      (self.clock(), job_id, attempt))

    def attempts(self) -> Sequence[tuple[str, int]]:
        with self._db() as c:
            return [(j, a) for j, a in c.execute("SELECT job_id, attempt FROM attempts WHERE released_at IS NULL")]

    def read_log(self, job_id: str, attempt: int, rank: int, offset: int = 0, max_bytes: int = 1 << 20) -> bytes:
        return b""

    def shutdown(self) -> None:
        """Nothing: the shared executor outlives every broker, as a Ray cluster does."""


def _outcome(command: Sequence[str], default_run_s: float | None) -> tuple[float | None, int]:
    if len(command) == 2 and command[0] in ("sleep", "fail"):
        try:
            return max(0.0, float(command[1])), 0 if command[0] == "sleep" else 1
        except ValueError:
            pass
    return default_run_s, 0


def _worker(rank: int, node: str, cuda: str, launched: float, run_s: float | None, code: int,
            stopped: float | None, now: float) -> WorkerStatus:
    started = launched + START_S
    base = WorkerStatus(rank=rank, state=WorkerState.STARTING, node=node, cuda_visible_devices=cuda)
    natural_end = started + run_s if run_s is not None else None
    if stopped is not None and (natural_end is None or stopped < natural_end):
        return WorkerStatus(rank=rank, state=WorkerState.EXITED, node=node, cuda_visible_devices=cuda, exit_code=143,
                            started_at=min(started, stopped), ended_at=stopped, message="stopped")
    if natural_end is not None and now >= natural_end:
        return WorkerStatus(rank=rank, state=WorkerState.EXITED, node=node, cuda_visible_devices=cuda, exit_code=code,
                            started_at=started, ended_at=natural_end)
    if now >= started:
        return WorkerStatus(rank=rank, state=WorkerState.RUNNING, node=node, cuda_visible_devices=cuda,
                            started_at=started)
    return base


class _Closing:
    """`with` closes the connection (sqlite3's own context manager only ends a transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc) -> None:
        self.conn.close()
