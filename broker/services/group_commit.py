"""Group commit: concurrent submits share transactions.

Why: a transaction per request pays a round trip and a WAL flush per job; at hundreds of
submits per second the database spends its time flushing. Each request hands its rows to an
asyncio queue and awaits a future; the dispatcher takes whatever has queued up (up to
`batch_max`) as soon as one of `writers` writer threads is free, and that thread writes the
batch (one pipelined transaction on PostgreSQL, see `broker.services.job_queries.store_jobs`) and
commits. While all
writers are busy the queue grows, so batches grow with load and the cost per job falls. On
PostgreSQL the writers are psycopg async connections driven by the event loop itself (no
thread hand-off and no GIL ping-pong per batch); elsewhere they are threads.

The write function may refuse single rows (a project over its pending cap): it returns
{position in the batch: exception}, stores the others, and each refused request gets its
exception while the rest of the batch succeeds.

Invariants: a future resolves successfully only after the transaction holding its rows
committed (a 201 always means durably stored); if a batch fails, each of its items is retried
alone so one bad row (e.g. a project deleted a moment ago) fails only its own request; each
writer thread keeps its own connection (no pool checkout or pre-ping per batch) and drops it
after an error, so the retry reconnects. SQLite gets one writer (it has one anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from sqlalchemy.engine import Engine

log = logging.getLogger("broker.group_commit")

Item = tuple[dict, dict]  # (job row, event row)


class GroupCommitWriter:
    def __init__(self, engine: Engine, write: Callable, *, batch_max: int = 256, wait_s: float = 0.0,
                 writers: int = 2, write_async: Callable | None = None, connect_timeout_s: int = 5,
                 lock: Callable = lambda conn: contextlib.nullcontext()) -> None:
        self._engine = engine
        self._connect_timeout_s = connect_timeout_s
        self._lock = lock  # held around each thread-side transaction (SQLite: count + insert)
        self._write = write  # write(conn, job_rows, event_rows) -> {position: refusal} | None
        # PostgreSQL: await write_async(psycopg AsyncConnection, jobs, events) on the event loop
        self._write_async = write_async if engine.dialect.name == "postgresql" else None
        self._aconns: list = []  # idle async connections (autocommit)
        self._aconns_all: list = []
        self._batch_max = max(1, batch_max)
        self._wait_s = wait_s
        self._writers = 1 if engine.dialect.name == "sqlite" else max(1, writers)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starts = 0
        self._local = threading.local()  # each writer thread's own connection
        self._conns: list = []
        self._conns_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self._writers, thread_name_prefix="group-commit")
        self.batches = 0
        self.items = 0

    async def start(self) -> None:
        """Start the dispatcher on the running loop (counted: an app served by two loops at
        once, as in tests with two clients, keeps one; the other loop commits directly)."""
        self._starts += 1
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop (when the last starter stops, on the writer's loop)."""
        self._starts = max(0, self._starts - 1)
        if self._task is None or self._starts > 0 or asyncio.get_running_loop() is not self._loop:
            return
        await self._queue.put(None)
        await self._task
        self._task, self._loop = None, None
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except Exception:  # closing a broken connection: nothing to release
                pass
        self._local = threading.local()
        aconns, self._aconns_all, self._aconns = self._aconns_all, [], []
        for c in aconns:
            try:
                await c.close()
            except Exception:  # closing a broken connection: nothing to release
                pass

    async def submit(self, job_row: dict, event_row: dict) -> None:
        """Resolve once the rows are committed; raise what the insert raised."""
        loop = asyncio.get_running_loop()
        if self._task is None or loop is not self._loop:
            # not started here (a tool using the service directly, or a second event loop)
            refused = await loop.run_in_executor(self._pool, self._commit, [(job_row, event_row)])
            if refused:
                raise refused[0]
            return
        fut = loop.create_future()
        self._queue.put_nowait(((job_row, event_row), fut))
        await fut

    async def _run(self) -> None:
        q = self._queue
        free = asyncio.Semaphore(self._writers)
        inflight: set[asyncio.Task] = set()
        stopping = False
        while not stopping:
            first = await q.get()
            if first is None:
                break
            await free.acquire()  # wait for a writer first: the batch grows meanwhile
            if self._wait_s > 0:
                await asyncio.sleep(self._wait_s)
            batch = [first]
            while len(batch) < self._batch_max and not q.empty():
                nxt = q.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            t = asyncio.create_task(self._flush(batch, free))
            inflight.add(t)
            t.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight)

    async def _flush(self, batch, free: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                refused = await self._commit_here(loop, [it for it, _ in batch])
            except Exception:
                log.warning("group commit of %d jobs failed; retrying one by one", len(batch), exc_info=True)
                await self._one_by_one(loop, batch)
                return
            self.batches += 1
            self.items += len(batch) - len(refused)
            for i, (_, fut) in enumerate(batch):
                if fut.done():
                    continue
                if i in refused:
                    fut.set_exception(refused[i])
                else:
                    fut.set_result(None)
        finally:
            free.release()

    async def _one_by_one(self, loop, batch) -> None:
        for item, fut in batch:
            try:
                refused = await self._commit_here(loop, [item])
                if not fut.done():
                    if refused:
                        fut.set_exception(refused[0])
                    else:
                        fut.set_result(None)
            except Exception as e:  # handed to the request that owns the row
                if not fut.done():
                    fut.set_exception(e)

    async def _commit_here(self, loop, items: list[Item]) -> dict:
        """Commit on the event loop (PostgreSQL, async driver) or on a writer thread; returns
        the refused positions."""
        if self._write_async is None:
            return await loop.run_in_executor(self._pool, self._commit, items)
        conn = self._aconns.pop() if self._aconns else await self._connect_async()
        try:
            refused = await self._write_async(conn, [j for j, _ in items], [e for _, e in items]) or {}
        except Exception:
            if conn.broken or conn.closed:  # a constraint error leaves an autocommit connection usable
                self._aconns_all.remove(conn)
                try:
                    await conn.close()
                except Exception:  # already broken: nothing left to release
                    pass
            else:
                self._aconns.append(conn)
            raise
        self._aconns.append(conn)
        return refused

    async def _connect_async(self):
        import psycopg

        url = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=self._connect_timeout_s)
        self._aconns_all.append(conn)
        return conn

    def _commit(self, items: list[Item]) -> dict:
        """Runs on a writer thread, with that thread's connection; returns the refused positions."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._engine.connect()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        jobs, events = [j for j, _ in items], [e for _, e in items]
        try:
            with self._lock(conn), conn.begin():
                refused = self._write(conn, jobs, events) or {}
        except Exception:
            self._local.conn = None
            with self._conns_lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # already broken: nothing left to release
                pass
            raise
        return refused
