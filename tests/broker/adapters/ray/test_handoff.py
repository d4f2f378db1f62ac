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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.adapters.ray import handoff
from broker.adapters.ray.handoff import Handoff, HandoffRefused, parse_exit, quote, read_small, run_script

LAUNCHER = Path(__file__).resolve().parents[4] / "k8s" / "base" / "launch.sh"
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
    # the caller is the launcher: its environment is the job container's own (the image's ENV)
    container = {"IMAGE_HOME": "/opt/model", "V": "the image's", "PATH": os.environ["PATH"]}
    r = subprocess.run([*shell, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                       env=container)
    assert r.returncode == 0, r.stderr
    argv, seen = json.loads(r.stdout)
    assert argv == [value, "second", value]
    for shell_own in ("PWD", "SHLVL"):  # what bash and busybox sh export themselves
        seen.pop(shell_own, None)
    assert seen == {**container, **env}  # the image's ENV under the job's variables, literally
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


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_the_runners_files_get_the_directorys_group_without_setgid(tmp_path, shared):
    os.chown(shared, 0, 20001)
    shared.chmod(0o770)  # no setgid: the group is not passed on by the file system
    h = Handoff(shared)
    h.claim(tmp_path / "private-claim", "j 1 0")
    h.submit(["true"], {})
    assert (shared / "ctl").stat().st_gid == (shared / "ctl" / "run.sh").stat().st_gid == 20001


# --- launch.sh on this host's shells (no container: not PID 1, so no container-wide kill) ----

LAUNCH_SHELLS = [s for s in (["dash"], ["busybox", "sh"]) if shutil.which(s[0])]
# the job container's own environment: its image's ENV and what Kubernetes adds to every container
JOB_CONTAINER_ENV = {"PATH": os.environ["PATH"], "MODEL_HOME": "/opt/model", "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
                     "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                     "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1"}


@pytest.fixture(params=LAUNCH_SHELLS, ids=lambda s: s[0])
def host_pod(request, tmp_path, monkeypatch):
    """(handoff dir, start a launcher, run a job through a runner) with the launcher run by
    dash or busybox sh as a plain process, and a Ray token in the runner's environment."""
    from broker.adapters.ray.runner import WorkerRunner

    d = tmp_path / "handoff"
    d.mkdir()
    monkeypatch.setenv(handoff.HANDOFF_ENV, str(d))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-c0ffee")
    launchers: list[subprocess.Popen] = []

    def launch() -> subprocess.Popen:
        """Start a launcher; what it prints goes to `launcher-<n>.out` beside the directory."""
        with open(tmp_path / f"launcher-{len(launchers)}.out", "wb") as out:
            p = subprocess.Popen([*request.param, str(LAUNCHER), str(d)], stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
                                 env=JOB_CONTAINER_ENV)
        launchers.append(p)
        return p

    def run(command, **job):
        job = dict(dict(job_id="hj", attempt=1, rank=0, world_size=1, image="img", command=command, env={},
                        runtime="container", max_runtime_s=0, grace_s=5.0, gpu_ids=[],
                        handoff_start_timeout_s=20), **job)
        return WorkerRunner(node="pod", log_dir=str(tmp_path / "logs"), namespace="t", job=job)

    yield d, launch, run
    for p in launchers:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def _ended(r, timeout_s=20.0):
    assert r._done.wait(timeout_s), r.status()
    return r.status(), r.read_log().decode()


def test_launcher_runs_the_job_with_its_image_env_and_its_own(host_pod):
    _, launch, run = host_pod
    launch()
    st, log = _ended(run(["env"], env={"FOO": "a b"}))
    assert st["exit_code"] == 0, log
    seen = dict(line.split("=", 1) for line in log.splitlines())
    assert seen["FOO"] == "a b" and "ray-token-c0ffee" not in log  # the runner's environment: never
    # the image's ENV is kept (a CUDA image's libraries), what Kubernetes adds is not
    assert seen["MODEL_HOME"] == "/opt/model" and seen["LD_LIBRARY_PATH"] == "/usr/local/cuda/lib64"
    assert not [k for k in seen if k.startswith("KUBERNETES_")]
    st, log = _ended(run(["true"], attempt=2))  # a second attempt in this pod
    assert st["exit_code"] == 125 and "already ran an attempt" in st["message"]


def test_launcher_stops_the_job_with_its_notice(host_pod):
    d, launch, run = host_pod
    launch()
    script = ('trap \'cat "$BROKER_NOTICE_FILE" > notice-seen; echo got-term; exit 7\' TERM; '
              'echo ready; while :; do sleep 0.1; done')
    r = run(["sh", "-c", script])
    deadline = time.monotonic() + 20  # its output may show before the runner has seen `started`
    while not (b"ready" in r.read_log() and r.status()["state"] == "running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.status()["state"] == "running"
    r.stop(5.0, "cancelled by its owner", "cancelled")
    st, log = _ended(r, 10.0)
    assert st["exit_code"] == 7 and "got-term" in log, log
    assert json.loads((d.parent / "notice-seen").read_text())["reason"] == "cancelled"


def test_launcher_exit_code_and_no_second_run_after_a_relaunch(host_pod):
    d, launch, run = host_pod
    first = launch()
    st, log = _ended(run(["sh", "-c", "echo ran >> runs; echo out; echo err >&2; exit 3"]))
    assert st["exit_code"] == 3 and "out\n" in log and "err\n" in log
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    launch()
    out = d.parent / "launcher-1.out"
    deadline = time.monotonic() + 10
    while b"already started" not in out.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"already started" in out.read_bytes()
    time.sleep(0.5)
    assert (d.parent / "runs").read_text() == "ran\n" and not (d / "lost").exists()


def test_handoff_imports_only_the_standard_library_and_jobenv():
    """It travels to Ray nodes by value: a node has Ray, not the broker package."""
    import ast

    tree = ast.parse(Path(handoff.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {n for n in names if n.split(".")[0] not in sys.stdlib_module_names} <= {"broker.jobenv"}
