"""Job logs through the Executor port (`read_log`), whole or followed.

Logs are capped per worker (the runner keeps head and tail) and deleted `log_retention_days`
after the job ended (`remove_expired_logs`, a periodic task). A read says which applies: a
capped or failed log comes with `X-Log-Truncated` / `X-Log-Dropped-Bytes` / `X-Log-Error`
headers (the file itself carries marker lines too), and a log past its retention is refused
with 410 `LOG_EXPIRED` rather than an empty body that looks like a silent job.

Following polls the executor for new bytes and the DB for the attempt's end; it stops once the
attempt no longer holds resources (or the job moved to a later attempt) and a last read
returned nothing, so a client sees every byte the worker wrote before it exited.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from anyio import to_thread

from broker.errors import BrokerError, Invalid, Unavailable
from broker.models import HOLDING, TERMINAL, Job, JobStatus
from broker.services.jobs import JobService, logs_attempt
from broker.auth.authn import Principal

CHUNK = 256 * 1024
DAY_S = 86400.0
log = logging.getLogger("broker.logs")
_FINAL = tuple(s.value for s in TERMINAL)


@dataclass(frozen=True, slots=True)
class LogRead:
    """Bytes of one worker's log and what the reader should know about them (HTTP headers)."""

    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class LogService:
    def __init__(self, jobs: JobService, *, poll_s: float = 0.5, retention_days: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.jobs, self.poll_s = jobs, poll_s
        self.retention_days, self.clock = retention_days, clock

    def require_executor(self):
        if self.jobs.executor is None:
            raise Unavailable("logs are unavailable: no executor is attached to this broker", code="NO_EXECUTOR")
        return self.jobs.executor

    def locate(self, *, principal: Principal, job_id: str, worker: int, attempt: int | None) -> tuple[int, int]:
        """Check the job, worker and attempt exist; return (attempt, workers)."""
        job = self.jobs.job_row(job_id)
        self.jobs.authorize(principal, job, "job.logs")
        if not 0 <= worker < job.workers:
            raise Invalid(f"worker must be between 0 and {job.workers - 1}", code="BAD_WORKER")
        att = logs_attempt(job, attempt)
        if self.expired(job):
            raise BrokerError(f"the logs of job {job_id} were deleted: it ended more than "
                              f"{self.retention_days:g} days ago (log retention)", code="LOG_EXPIRED", status=410)
        return att, job.workers

    def expired(self, job: Job) -> bool:
        """Past retention: final, and ended longer ago than `retention_days` (0: never)."""
        return (self.retention_days > 0 and job.status in _FINAL and job.finished_at is not None
                and job.finished_at < self.clock() - self.retention_days * DAY_S)

    def read(self, *, principal: Principal, job_id: str, worker: int = 0, attempt: int | None = None,
             offset: int = 0, max_bytes: int = 1 << 20) -> LogRead:
        att, _ = self.locate(principal=principal, job_id=job_id, worker=worker, attempt=attempt)
        ex = self.require_executor()
        return LogRead(ex.read_log(job_id, att, worker, offset, max_bytes), self.headers(job_id, att, worker))

    def headers(self, job_id: str, attempt: int, worker: int) -> dict[str, str]:
        """`X-Log-*` headers for a capped or failed log ({} for a whole one)."""
        try:
            info = self.require_executor().log_info(job_id, attempt, worker) or {}
        except Exception:  # noqa: BLE001 - the log itself is still served
            log.warning("log info of %s/%s/%s unavailable", job_id, attempt, worker, exc_info=True)
            info = {}
        out = {}
        if info.get("truncated"):
            out["X-Log-Truncated"] = "true"
            out["X-Log-Dropped-Bytes"] = str(int(info.get("dropped") or 0))
            out["X-Log-Max-Bytes"] = str(int(info.get("max_bytes") or 0))
        if info.get("error"):
            out["X-Log-Error"] = str(info["error"]).encode("ascii", "replace").decode()[:200]
        return out

    async def follow(self, *, job_id: str, attempt: int, worker: int, offset: int = 0) -> AsyncIterator[bytes]:
        ex = self.require_executor()
        while True:
            data = await to_thread.run_sync(ex.read_log, job_id, attempt, worker, offset, CHUNK)
            if data:
                offset += len(data)
                yield data
                continue
            job = await to_thread.run_sync(self.jobs.job_row, job_id)
            ended = job.attempt != attempt or JobStatus(job.status) not in HOLDING | {JobStatus.PENDING}
            if ended:
                tail = await to_thread.run_sync(ex.read_log, job_id, attempt, worker, offset, CHUNK)
                if tail:
                    yield tail
                return
            await asyncio.sleep(self.poll_s)


def remove_expired_logs(engine: Engine, log_dir: Path, retention_days: float, now: float) -> list[str]:
    """Delete `<log_dir>/<job id>` of jobs final for longer than `retention_days` (and of jobs
    the database no longer knows whose folder was untouched that long); returns their ids.

    Why from the folders and not from the jobs table: the work is bounded by what is on disk,
    not by the history of every job ever run, and a job whose row was removed leaves nothing
    behind. Only what this broker sees is swept: `broker up`'s log dir, or a log dir every node
    shares; node-local log dirs of remote nodes are not (docs/OPERATIONS.md)."""
    if retention_days <= 0:
        return []
    try:
        dirs = {d.name: d for d in Path(log_dir).iterdir() if d.is_dir() and not d.is_symlink()}
    except FileNotFoundError:
        return []
    if not dirs:
        return []
    cutoff = now - retention_days * DAY_S
    with Session(engine) as s:
        known = {jid: (status, finished) for jid, status, finished in
                 s.execute(select(Job.id, Job.status, Job.finished_at).where(Job.id.in_(list(dirs))))}
    gone = []
    for jid, d in sorted(dirs.items()):
        if jid in known:
            status, finished = known[jid]
            old = status in _FINAL and finished is not None and finished < cutoff
        else:
            try:
                old = d.stat().st_mtime < cutoff
            except OSError:
                old = False
        if old:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(jid)
    if gone:
        log.info("removed the logs of %d job(s) past the %g-day retention", len(gone), retention_days)
    return gone
