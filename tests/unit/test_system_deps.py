"""scripts/system-deps.sh: installs what is missing as root with apt-get, otherwise says what is
missing and what it disables; never fails the build over it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-deps.sh"
ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")


def _run(*args: str, env: dict, as_nobody: bool = False) -> subprocess.CompletedProcess:
    argv = ["sh", str(SCRIPT), *args]
    if as_nobody:
        argv = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=30)


def test_bad_usage_is_exit_2():
    r = _run(env={})
    assert r.returncode == 2 and "usage:" in r.stderr


@pytest.mark.skipif(not ROOT or shutil.which("apt-get") is None, reason="needs root and apt-get")
def test_as_root_it_installs_what_is_missing():
    r = _run("test", env={"BUSYBOX": "/nonexistent/busybox", "DRY_RUN": "1"})
    assert r.returncode == 0 and "would install:" in r.stdout and "busybox-static" in r.stdout


@pytest.mark.skipif(not ROOT or SETPRIV is None, reason="needs root and setpriv to run as another user")
def test_without_root_it_says_what_is_missing_and_what_is_skipped():
    r = _run("test", env={"BUSYBOX": "/nonexistent/busybox"}, as_nobody=True)
    assert r.returncode == 0
    assert "note: busybox-static is missing" in r.stdout and "container tests" in r.stdout
