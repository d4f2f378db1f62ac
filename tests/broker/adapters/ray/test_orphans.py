"""Orphans of a dead Ray head are found from the runners' records and ended, and nothing else.

Real processes and a real podman container: a worker process in its own session (as the runner
starts it) and a running container stand for what a previous `broker up` left behind; a record
whose pid now belongs to another process (pid reuse) must not be signalled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from broker.adapters.ray.local import kill_orphans
from broker.adapters.ray.runner import container_name, pid_path, process_start_ticks


def _record(log_dir, job, attempt, rank, pid, ticks, runtime, container="-"):
    log = log_dir / job / str(attempt) / f"worker-{rank}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_path(log).write_text(f"{pid} {ticks} {runtime} {container}\n")
    return pid_path(log)


def _gone(proc: subprocess.Popen, timeout_s: float = 10.0) -> bool:
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_a_process_worker_left_behind_is_ended(tmp_path):
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        rec = _record(tmp_path, "j1", 1, 0, orphan.pid, process_start_ticks(orphan.pid), "process")
        # a stale record: the pid is the bystander's now, with another start time
        stale = _record(tmp_path, "j2", 3, 1, bystander.pid, process_start_ticks(bystander.pid) - 1, "process")
        assert kill_orphans(tmp_path) == ["j1/1/0"]
        assert _gone(orphan) and bystander.poll() is None
        assert not rec.exists() and not stale.exists()
    finally:
        for p in (orphan, bystander):
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()


@pytest.mark.container
def test_a_container_left_behind_is_removed(tmp_path, busybox_image):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    name = container_name("orphan" + os.urandom(3).hex(), 2, 0)
    subprocess.run(["podman", "run", "-d", "--rm", "--name", name, busybox_image, "sleep", "300"],
                   check=True, capture_output=True)
    try:
        _record(tmp_path, name.split("-")[1], 2, 0, 999999, 1, "container", name)
        assert kill_orphans(tmp_path) == [f"{name.split('-')[1]}/2/0"]
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run(["podman", "ps", "-a", "--filter", f"name=^{name}$", "-q"],
                                 capture_output=True, text=True).stdout
            if not out.strip():
                break
            time.sleep(0.5)
        assert not out.strip(), "the orphaned container still exists"
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
