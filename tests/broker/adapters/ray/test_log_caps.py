"""Worker log caps and a full log disk, on the runner itself (no Ray cluster, `runtime: process`).

The runner class is plain Python until the executor wraps it with `ray.remote`, so these tests
create it directly, run a real process, and read the log file it wrote.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from broker.adapters.ray.runner import LOG_TAIL_MAX, LogPump, WorkerRunner, log_path


class _Sink:
    """A log file on a disk that fills up after `room` bytes (ENOSPC from then on)."""

    def __init__(self, room: int) -> None:
        self.room, self.data = room, bytearray()

    def write(self, b) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(b), self.room)
        self.data += bytes(b[:n])
        self.room -= n
        return n

    def close(self) -> None:
        pass


def _pump(tmp_path, max_bytes, room=None) -> tuple[LogPump, _Sink | None]:
    sink = _Sink(room) if room is not None else None
    pump = LogPump(tmp_path / "w.log", max_bytes, opener=(lambda _p: sink) if sink else None)
    assert pump.open()
    return pump, sink


@pytest.mark.parametrize("case, max_bytes, chunks, head, tail", [
    ("under the cap: all of it", 1000, [b"a" * 300, b"b" * 300], b"a" * 300 + b"b" * 300, b""),
    ("no cap", 0, [b"x" * 5000], b"x" * 5000, b""),
    ("over the cap: head and tail", 1000, [b"a" * 700, b"b" * 700, b"c" * 700], b"a" * 700 + b"b" * 50, b"c" * 250),
    ("one big write", 400, [bytes(range(256)) * 4], (bytes(range(256)) * 4)[:300], (bytes(range(256)) * 4)[-100:]),
])
def test_capped_log_keeps_head_and_tail_with_markers(tmp_path, case, max_bytes, chunks, head, tail):
    pump, _ = _pump(tmp_path, max_bytes)
    for c in chunks:
        pump.feed(c)
    pump.close()
    data = (tmp_path / "w.log").read_bytes()
    total = sum(map(len, chunks))
    assert data.startswith(head)
    if not tail:
        assert data == head and pump.stats()["truncated"] is False and pump.written == total
        return
    assert data.endswith(tail)
    assert b"[broker] log capped at %d bytes per worker" % max_bytes in data
    assert b"[broker] log truncated: %d bytes dropped" % (total - len(head) - len(tail)) in data
    assert pump.written == len(head) + len(tail) <= max_bytes
    assert pump.stats() == {"bytes": len(head) + len(tail), "dropped": total - len(head) - len(tail),
                            "truncated": True, "max_bytes": max_bytes, "error": ""}


def test_tail_is_bounded_in_memory(tmp_path):
    pump, _ = _pump(tmp_path, 100 * LOG_TAIL_MAX)
    assert pump.tail_max == LOG_TAIL_MAX and pump.head_max == 99 * LOG_TAIL_MAX


@pytest.mark.parametrize("case, room", [("disk full from the start", 0), ("disk fills mid-write", 150)])
def test_full_disk_ends_the_logging_not_the_copy(tmp_path, case, room):
    pump, sink = _pump(tmp_path, 0, room=room)
    for _ in range(10):
        pump.feed(b"y" * 100)  # never raises: the job's output keeps being drained
    pump.close()
    assert bytes(sink.data) == b"y" * room
    assert "No space left on device" in pump.stats()["error"]
    assert pump.written + pump.dropped == 1000


def test_unopenable_log_is_an_error_not_an_exception(tmp_path):
    def refuse(_p):
        raise OSError(errno.ENOSPC, "No space left on device")

    pump = LogPump(tmp_path / "w.log", 10, opener=refuse)
    assert pump.open() is False and "No space left" in pump.error
    pump.feed(b"z" * 100)
    pump.close()
    assert pump.dropped == 100


def _run_worker(tmp_path, command, *, max_bytes=0, opener=None, timeout=30.0) -> tuple[WorkerRunner, Path]:
    cls = type("Runner", (WorkerRunner,), {"log_opener": staticmethod(opener)} if opener else {})
    job_id = f"j{uuid.uuid4().hex[:8]}"
    runner = cls(node="n", log_dir=str(tmp_path), namespace="t",
                 job=dict(job_id=job_id, attempt=1, rank=0, world_size=1, image="", command=command, env={},
                          runtime="process", max_runtime_s=0, grace_s=1.0, gpu_ids=[], log_max_bytes=max_bytes))
    assert runner._done.wait(timeout), "the worker did not end"
    return runner, log_path(tmp_path, job_id, 1, 0)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_runner_caps_a_chatty_worker_and_the_job_succeeds(tmp_path):
    code = "import sys\nfor i in range(20000): sys.stdout.write('line %06d\\n' % i)\nprint('the end')"
    runner, path = _run_worker(tmp_path, _py(code), max_bytes=40_000)
    st = runner.status()
    assert st["exit_code"] == 0
    data = path.read_bytes()
    assert data.startswith(b"line 000000\n") and data.endswith(b"the end\n")
    assert b"[broker] log truncated" in data and len(data) < 40_000 + 400
    assert st["log"]["truncated"] and st["log"]["dropped"] == 12 * 20000 + 8 - st["log"]["bytes"]


def test_runner_whose_log_disk_is_full_still_runs_the_job(tmp_path):
    def full(_p):
        return _Sink(0)

    runner, path = _run_worker(tmp_path, _py("print('x' * 100000); raise SystemExit(3)"), opener=full)
    st = runner.status()
    assert st["exit_code"] == 3, st  # the job ran to its own end
    assert "No space left on device" in st["log"]["error"]


def test_runner_starts_the_job_when_the_log_cannot_be_created(tmp_path):
    def refuse(_p):
        raise OSError(errno.ENOSPC, "No space left on device")

    runner, _ = _run_worker(tmp_path, _py("print('hello')"), opener=refuse)
    st = runner.status()
    assert st["exit_code"] == 0 and st["message"] == "" and "log not written" in st["log"]["error"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs, where this machine lets the tests mount one (root, no container limits)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:100]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_runner_on_a_real_full_tmpfs_keeps_running(small_tmpfs):
    code = "import sys\nfor i in range(5000): sys.stdout.write('x' * 99 + '\\n')\nraise SystemExit(7)"
    runner, path = _run_worker(small_tmpfs, _py(code))
    st = runner.status()
    assert st["exit_code"] == 7, st
    assert "No space left on device" in st["log"]["error"]
    assert 0 < path.stat().st_size <= 64 * 1024
