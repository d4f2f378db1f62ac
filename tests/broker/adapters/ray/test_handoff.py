"""The runner's side of an image pod, without a container (`broker.adapters.ray.handoff`).

The run script is executed for real by every POSIX shell found here (dash, busybox sh, bash):
each argv element and env value must arrive byte for byte, nothing in it expanded. The claim
and the readers of tenant-written files are exercised against what a tenant can do to the
shared directory (symlinks, FIFOs, oversized files, a renamed `ctl`). The real pod, with
podman playing the job container, is tests/integration/test_pod_handoff.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from broker.adapters.ray import handoff
from broker.adapters.ray.handoff import Handoff, HandoffRefused, parse_exit, quote, read_small, run_script

SHELLS = [s for s in (["dash"], ["busybox", "sh"], ["bash", "--posix"]) if shutil.which(s[0])]

TRICKY = {
    "single quote": "it's",
    "quotes": "a'b\"c'\\''d",
    "spaces": "  two  spaces  ",
    "newlines": "line1\nline2\n",
    "command substitution": "$(touch PWNED)",
    "backticks": "`touch PWNED`",
    "variables": "$HOME ${PATH} $0 $@ $$",
    "glob": "* ? [a-z]",
    "separators": "; touch PWNED && echo x | cat > PWNED",
    "leading dash": "-i",
    "empty": "",
    "backslashes": "\\n\\\\ \\'",
    "unicode": "blåbærsyltetøj ✓",
    "assignment-like": "A=B",
}

_PRINT = "import json, os, sys; print(json.dumps([sys.argv[1:], dict(os.environ)]))"


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("case", sorted(TRICKY))
def test_run_script_passes_every_word_literally(tmp_path, shell, case):
    value = TRICKY[case]
    env = {"LC_ALL": "C.UTF-8", "V": value, "-dash": value, "X_" + "Y": "1"}
    script = tmp_path / "run.sh"
    script.write_text(run_script([sys.executable, "-c", _PRINT, value, "second", value], env))
    r = subprocess.run([*shell, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                       env={"RUNNER_SECRET": "s3cret", "PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    argv, seen = json.loads(r.stdout)
    assert argv == [value, "second", value]
    assert seen == env  # exactly what was given: not the shell's, not the caller's (RUNNER_SECRET)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("word", sorted(TRICKY.values()))
def test_quote_round_trips_through_sh(word):
    r = subprocess.run(["sh", "-c", f"printf %s {quote(word)}"], capture_output=True, timeout=10)
    assert r.stdout.decode() == word


@pytest.mark.parametrize("case, argv, env", [
    ("empty command", [], {}),
    ("empty first word", [""], {}),
    ("first word with '='", ["A=B", "x"], {}),
    ("NUL in an argument", ["true", "a\x00b"], {}),
    ("NUL in a value", ["true"], {"A": "a\x00b"}),
    ("'=' in a name", ["true"], {"A=B": "c"}),
    ("empty name", ["true"], {"": "c"}),
])
def test_run_script_refuses_what_it_cannot_say(case, argv, env):
    with pytest.raises(ValueError):
        run_script(argv, env)


@pytest.mark.parametrize("data, code", [(b"0\n", 0), (b"3", 3), (b"137\n", 137), (b"255\n", 255)])
def test_parse_exit_accepts_a_status(data, code):
    assert parse_exit(data) == code


@pytest.mark.parametrize("data", [b"", b"\n", b"256\n", b"-1\n", b"3\n\n", b"3 \n", b" 3", b"0x3", b"1000",
                                  b"3\nRAY_AUTH_TOKEN=x"])
def test_parse_exit_refuses_anything_else(data):
    with pytest.raises(ValueError):
        parse_exit(data)


@pytest.fixture
def shared(tmp_path):
    d = tmp_path / "handoff"
    d.mkdir()
    return d


def test_read_small_refuses_a_symlink_a_fifo_and_a_big_file(tmp_path, shared):
    secret = tmp_path / "runner-secret"
    secret.write_text("7\n")  # would even parse as a status
    (shared / "link").symlink_to(secret)
    os.mkfifo(shared / "fifo")  # opening it for reading must not block
    (shared / "big").write_bytes(b"1" * (handoff.SMALL_MAX + 1))
    (shared / "ok").write_bytes(b"3\n")
    fd = os.open(shared, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("link", "fifo", "big"):
            with pytest.raises(ValueError):
                read_small(fd, name)
        assert read_small(fd, "missing") is None
        assert read_small(fd, "ok") == b"3\n"
    finally:
        os.close(fd)


def test_exit_record_through_a_symlink_is_not_believed(tmp_path, shared):
    (tmp_path / "x").write_text("0\n")
    h = Handoff(shared)
    (shared / "exit").symlink_to(tmp_path / "x")
    code, message = h.exit_status()
    assert code == handoff.EXIT_INVALID and "symbolic link" in message


def test_a_pod_is_claimed_once(tmp_path, shared):
    private = tmp_path / "private-claim"
    Handoff(shared).claim(private, "j 1 0")
    assert (shared / "ctl" / "claim").read_text() == "j 1 0\n"
    with pytest.raises(HandoffRefused, match="already ran an attempt"):
        Handoff(shared).claim(private, "j 2 0")


def test_a_tenant_renaming_ctl_away_does_not_free_the_pod(tmp_path, shared):
    """The shared directory is the tenant's to write: the private claim is what holds."""
    private = tmp_path / "private-claim"
    Handoff(shared).claim(private, "j 1 0")
    (shared / "ctl").rename(shared / "old")
    with pytest.raises(HandoffRefused, match="already ran an attempt"):
        Handoff(shared).claim(private, "k 1 0")


def test_a_ctl_made_by_the_tenant_is_refused(tmp_path, shared):
    (shared / "ctl").mkdir()  # before any runner came: the tenant's run.sh would be run
    with pytest.raises(HandoffRefused, match="tampered"):
        Handoff(shared).claim(tmp_path / "private-claim", "j 1 0")


def test_writes_go_into_the_claimed_ctl_even_after_it_is_swapped(tmp_path, shared):
    """A tenant who replaces `ctl` with a symlink to the runner's files redirects no write."""
    victim = tmp_path / "runner-dir"
    victim.mkdir()
    h = Handoff(shared)
    h.claim(tmp_path / "private-claim", "j 1 0")
    (shared / "ctl").rename(shared / "moved")
    (shared / "ctl").symlink_to(victim)
    h.submit(["true"], {"A": "b"})
    h.write_notice({"reason": "preempted"})
    h.request(handoff.STOP)
    assert os.listdir(victim) == []
    assert sorted(os.listdir(shared / "moved")) == ["claim", "notice.json", "run.sh", "stop"]


def test_what_the_runner_writes_is_group_readable_not_group_writable(tmp_path, shared):
    h = Handoff(shared)
    h.claim(tmp_path / "private-claim", "j 1 0")
    h.submit(["true"], {})
    assert (shared / "ctl").stat().st_mode & 0o777 == 0o750
    assert (shared / "ctl" / "run.sh").stat().st_mode & 0o777 == 0o640


def _runner(tmp_path, monkeypatch, runtime, **job):
    from broker.adapters.ray.runner import WorkerRunner

    monkeypatch.setenv(handoff.HANDOFF_ENV, str(tmp_path / "handoff"))
    (tmp_path / "handoff").mkdir(exist_ok=True)
    r = WorkerRunner(node="pod", log_dir=str(tmp_path / "logs"), namespace="t", job=dict(
        job_id="pj", attempt=1, rank=0, world_size=1, image="img", command=["sh", "-c", "touch ran"],
        env={}, runtime=runtime, max_runtime_s=0, grace_s=1.0, gpu_ids=[], handoff_start_timeout_s=0.5, **job))
    assert r._done.wait(10), r.status()
    return r.status()


def test_a_process_job_is_not_run_in_an_image_pod(tmp_path, monkeypatch):
    """It would run in the ray-worker container, beside the Ray token."""
    monkeypatch.chdir(tmp_path)
    st = _runner(tmp_path, monkeypatch, "process")
    assert st["exit_code"] == 125 and "not run in an image pod" in st["message"]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("job", [{"secrets": {"token": "s3cret-value"}}, {"mounts": [["/data", "/data", "ro"]]}])
def test_secrets_and_mounts_are_refused_in_an_image_pod(tmp_path, monkeypatch, job):
    st = _runner(tmp_path, monkeypatch, "container", **job)
    assert st["exit_code"] == 125 and "not delivered to image pods" in st["message"]
    assert not (tmp_path / "handoff" / "ctl").exists()


def test_a_job_the_launcher_never_starts_fails_and_is_never_started_later(tmp_path, monkeypatch):
    st = _runner(tmp_path, monkeypatch, "container")
    assert st["exit_code"] == 125 and "did not start the job" in st["message"]
    assert (tmp_path / "handoff" / "ctl" / "kill").exists()  # a late launcher finds it and does not start
