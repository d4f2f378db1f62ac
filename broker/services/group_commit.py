"""Group commit: one writer batches concurrent submits into one transaction.

Why: a transaction per request pays one round trip and one fsync (WAL flush) per job; with
hundreds of submits per second the database spends its time flushing. Here each request
hands its rows to an asyncio queue and awaits a future; a single writer task takes whatever
has queued up (up to `batch_max`), inserts it with one multi-row INSERT per table in ONE
transaction on a dedicated thread, and resolves every future only after COMMIT returned.

Invariants: a future resolves successfully only after the transaction holding its rows
committed (so a 201 always means durably stored); if a batch fails, every item is retried
alone so one bad row (e.g. a project deleted a moment ago) fails only its own request; the
writer never runs more than one transaction at a time (SQLite has one writer anyway).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from sqlalchemy.engine import Engine

log = logging.getLogger("broker.group_commit")

Item = tuple[dict, dict]  # (job row, event row)


class GroupCommitWriter:
    def __init__(self, engine: Engine, write: Callable, *, batch_max: int = 256, wait_s: float = 0.0) -> None:
        self._engine = engine
        self._write = write  # write(conn, job_rows, event_rows): the repo's multi-row insert
        self._batch_max = max(1, batch_max)
        self._wait_s = wait_s
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starts = 0
        self._conn = None  # the writer thread's own connection
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        self.batches = 0
        self.items = 0

    async def start(self) -> None:
        """Start the writer on the running loop (counted: an app served by two loops at once,
        as in tests with two clients, keeps one writer; the other loop commits directly)."""
        self._starts += 1
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Finish what is queued, then stop (when the last starter stops, on the writer's loop)."""
        self._starts = max(0, self._starts - 1)
        if self._task is None or self._starts > 0 or asyncio.get_running_loop() is not self._loop:
            return
        await self._queue.put(None)
        await self._task
        self._task, self._loop = None, None
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_conn)

    async def submit(self, job_row: dict, event_row: dict) -> None:
        """Resolve once the rows are committed; raise what the insert raised."""
        if self._task is None or asyncio.get_running_loop() is not self._loop:
            # not started here (a tool using the service directly, or a second event loop)
            await asyncio.get_running_loop().run_in_executor(self._thread, self._commit, [(job_row, event_row)])
            return
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(((job_row, event_row), fut))
        await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._queue
        stopping = False
        while not stopping:
            first = await q.get()
            if first is None:
                break
            batch = [first]
            if self._wait_s > 0:
                await asyncio.sleep(self._wait_s)
            while len(batch) < self._batch_max and not q.empty():
                nxt = q.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            items = [it for it, _ in batch]
            try:
                await loop.run_in_executor(self._thread, self._commit, items)
                self.batches += 1
                self.items += len(items)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
            except Exception:
                await self._one_by_one(loop, batch)

    async def _one_by_one(self, loop, batch) -> None:
        for item, fut in batch:
            try:
                await loop.run_in_executor(self._thread, self._commit, [item])
                if not fut.done():
                    fut.set_result(None)
            except Exception as e:  # handed to the request that owns the row
                if not fut.done():
                    fut.set_exception(e)

    def _commit(self, items: list[Item]) -> None:
        """Runs on the writer thread only. Keeps one connection checked out (no pool checkout or
        pre-ping per batch); a failed batch drops it, so the retry reconnects."""
        if self._conn is None:
            self._conn = self._engine.connect()
            if self._engine.dialect.name == "postgresql":
                # the batch is one statement: autocommit makes it one round trip and one commit
                self._conn = self._conn.execution_options(isolation_level="AUTOCOMMIT")
        conn = self._conn
        try:
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                self._write(conn, [j for j, _ in items], [e for _, e in items])
            else:
                with conn.begin():
                    self._write(conn, [j for j, _ in items], [e for _, e in items])
        except Exception:
            self._conn = None
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # already broken: nothing left to release
                pass
            raise

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
