"""Job logs through the Executor port (`read_log`), whole or followed.

Following polls the executor for new bytes and the DB for the attempt's end; it stops once the
attempt no longer holds resources (or the job moved to a later attempt) and a last read
returned nothing, so a client sees every byte the worker wrote before it exited.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from anyio import to_thread

from broker.errors import Invalid, Unavailable
from broker.models import HOLDING, JobStatus
from broker.services.jobs import JobService, logs_attempt
from broker.auth.authn import Principal

CHUNK = 256 * 1024


class LogService:
    def __init__(self, jobs: JobService, *, poll_s: float = 0.5) -> None:
        self.jobs, self.poll_s = jobs, poll_s

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
        return logs_attempt(job, attempt), job.workers

    def read(self, *, principal: Principal, job_id: str, worker: int = 0, attempt: int | None = None,
             offset: int = 0, max_bytes: int = 1 << 20) -> bytes:
        att, _ = self.locate(principal=principal, job_id=job_id, worker=worker, attempt=attempt)
        return self.require_executor().read_log(job_id, att, worker, offset, max_bytes)

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
