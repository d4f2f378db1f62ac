"""An image pod, played with a real container: the runner hands one job to the `job` container.

The pod of docs/SECURITY.md ("Tenant containers on KubeRay: the in-pod path"): the runner (here
in this process, as root, like a runner on a node) has `BROKER_HANDOFF_DIR` and a fake Ray token
in its environment; the `job` container is a podman container of the busybox test image as user
20001 with no env of ours, the handoff directory (group 20001, setgid: the pod's fsGroup)
mounted at /broker/handoff and k8s/base/launch.sh mounted read-only at
/broker/launch/launch.sh, command `/bin/sh /broker/launch/launch.sh`. They share that directory
only (not even the network: `--network none`).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from broker.adapters.ray.runner import WorkerRunner, log_path
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.container, pytest.mark.timeout(120)]

LAUNCHER = Path(__file__).resolve().parents[2] / "k8s" / "base" / "launch.sh"
JOB_UID = FS_GROUP = 20001
# the job container's own environment besides the image's: an ENV of the image, and what
# Kubernetes adds to every container (the launcher drops the latter)
CONTAINER_ENV = {"MODEL_HOME": "/opt/model", "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                 "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1"}
HANDOFF_IN_POD = "/broker/handoff"


class Pod:
    """The handoff directory and the job container of one pod."""

    def __init__(self, root: Path, image: str) -> None:
        self.dir, self.image = root / "handoff", image
        self.dir.mkdir()
        os.chown(self.dir, 0, FS_GROUP)
        self.dir.chmod(0o2770)  # what Kubernetes makes of an emptyDir with an fsGroup
        self.logs = root / "logs"
        self.name = f"cb-pod-{uuid.uuid4().hex[:8]}"
        self.started = False

    def start(self) -> None:
        argv = ["podman", "run", "-d", "--name", self.name, "--user", f"{JOB_UID}:{FS_GROUP}",
                *(f"--env={k}={v}" for k, v in CONTAINER_ENV.items()),
                "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "-v", f"{self.dir}:{HANDOFF_IN_POD}:rw", "-v", f"{LAUNCHER}:/broker/launch/launch.sh:ro",
                self.image, "/bin/sh", "/broker/launch/launch.sh"]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        self.started = True

    def restart(self, hard: bool = False) -> None:
        """Restart the job container: SIGTERM to its PID 1 (the launcher) first, or SIGKILL."""
        if hard:
            subprocess.run(["podman", "kill", "-s", "KILL", self.name], check=True, capture_output=True, timeout=60)
            subprocess.run(["podman", "wait", self.name], capture_output=True, timeout=60)
            subprocess.run(["podman", "start", self.name], check=True, capture_output=True, timeout=60)
        else:
            subprocess.run(["podman", "restart", "-t", "5", self.name], check=True, capture_output=True, timeout=60)

    def output(self) -> str:
        """What the launcher itself printed (its container's log)."""
        r = subprocess.run(["podman", "logs", self.name], capture_output=True, text=True, timeout=30)
        return r.stdout + r.stderr

    def remove(self) -> None:
        if self.started:
            subprocess.run(["podman", "rm", "-f", "-t", "0", self.name], capture_output=True, timeout=60)

    def runner(self, command, *, env=None, attempt=1, grace_s=2.0, max_runtime_s=0, **job) -> WorkerRunner:
        return WorkerRunner(node="pod", log_dir=str(self.logs), namespace="t", job=dict(
            job_id="pj", attempt=attempt, rank=0, world_size=1, image=self.image, command=list(command),
            env=dict(env or {}), runtime="container", max_runtime_s=max_runtime_s, grace_s=grace_s,
            gpu_ids=[], handoff_start_timeout_s=30, **job))

    def log(self, runner: WorkerRunner) -> str:
        return runner.read_log().decode(errors="replace")


@pytest.fixture
def pod(tmp_path, busybox_image, monkeypatch):
    """A pod whose runner holds a Ray token in its environment (the job must never see it)."""
    monkeypatch.setenv("BROKER_HANDOFF_DIR", str(tmp_path / "handoff"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-c0ffee")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    p = Pod(tmp_path, busybox_image)
    yield p
    p.remove()


def ended(runner: WorkerRunner, timeout_s: float = 30.0) -> dict:
    assert runner._done.wait(timeout_s), f"the attempt did not end: {runner.status()}"
    return runner.status()


def test_the_jobs_output_and_exit_code_are_the_attempts(pod):
    pod.start()
    r = pod.runner(["sh", "-c", "echo hello from the job; echo to stderr >&2; id -u; exit 3"])
    st = ended(r)
    log = pod.log(r)
    assert st["exit_code"] == 3, (st, log)
    assert st["started_at"] is not None and st["message"] == ""
    assert "hello from the job\n" in log and "to stderr\n" in log and f"{JOB_UID}\n" in log
    assert log_path(pod.logs, "pj", 1, 0).read_text() == log  # the runner's normal log file


def test_the_job_sees_its_env_and_nothing_of_the_runners(pod):
    pod.start()
    r = pod.runner(["env"], env={"FOO": "bar baz", "QUOTE": "it's $(x) `y`"})
    st = ended(r)
    log = pod.log(r)
    assert st["exit_code"] == 0, log
    seen = dict(line.split("=", 1) for line in log.splitlines())
    assert seen["FOO"] == "bar baz" and seen["QUOTE"] == "it's $(x) `y`"
    assert "ray-token-c0ffee" not in log and not any(k.startswith("RAY_") for k in seen)
    given = {"FOO", "QUOTE", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "LOCAL_RANK",
             "MASTER_ADDR", "MASTER_PORT", "BROKER_JOB_ID", "BROKER_ATTEMPT", "BROKER_GPU_IDS",
             "BROKER_NOTICE_FILE"}
    assert given <= set(seen)
    # the rest is the job container's own, as podman gives any container: its image's ENV (here
    # MODEL_HOME, as a CUDA image's LD_LIBRARY_PATH), HOME, HOSTNAME...; not what Kubernetes adds
    assert seen["MODEL_HOME"] == "/opt/model" and not [k for k in seen if k.startswith("KUBERNETES_")]
    assert set(seen) - given <= {"MODEL_HOME", "PATH", "HOME", "HOSTNAME", "TERM", "container", "SHLVL", "PWD"}
    # the runner's path: a real pod mounts the directory at the same path in both containers
    assert seen["BROKER_NOTICE_FILE"] == str(pod.dir / "ctl" / "notice.json")


def test_stop_delivers_the_notice_then_sigterm_within_grace(pod):
    pod.start()
    trap = (f"trap 'cat {HANDOFF_IN_POD}/ctl/notice.json > {HANDOFF_IN_POD}/seen-notice; echo got-term; exit 7' TERM; "
            "echo ready; while :; do sleep 0.1; done")
    r = pod.runner(["sh", "-c", trap], grace_s=10.0)
    wait_for(lambda: "ready" in pod.log(r))
    assert r.status()["state"] == "running"
    t0 = time.monotonic()
    r.stop(10.0, "preempted by an operation job", "preempted")
    st = ended(r, 15.0)
    assert time.monotonic() - t0 < 5.0  # the job ended on SIGTERM, not at the grace's SIGKILL
    assert st["exit_code"] == 7 and "got-term" in pod.log(r)
    notice = (pod.dir / "seen-notice").read_text()
    assert '"reason": "preempted"' in notice and "preempted by an operation job" in notice


def test_max_runtime_kills_a_job_that_ignores_sigterm(pod):
    pod.start()
    r = pod.runner(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.2; done"],
                   max_runtime_s=1.0, grace_s=1.0)
    st = ended(r, 30.0)
    assert st["exit_code"] == 137 and "max_runtime" in st["message"], st
    assert "ready" in pod.log(r)


def test_a_second_attempt_on_the_same_pod_is_refused(pod):
    pod.start()
    first = ended(pod.runner(["true"]))
    assert first["exit_code"] == 0
    second = pod.runner(["sh", "-c", "echo second > /broker/handoff/second-ran"], attempt=2)
    st = ended(second)
    assert st["exit_code"] == 125 and "already ran an attempt" in st["message"], st
    time.sleep(1.0)
    assert not (pod.dir / "second-ran").exists()


def test_a_restarted_job_container_does_not_run_the_job_again(pod):
    pod.start()
    r = pod.runner(["sh", "-c", f"echo ran >> {HANDOFF_IN_POD}/runs"])
    assert ended(r)["exit_code"] == 0
    pod.restart()
    wait_for(lambda: "already started" in pod.output())
    time.sleep(1.0)
    assert (pod.dir / "runs").read_text() == "ran\n"


@pytest.mark.parametrize("hard, code, message", [
    ("sigterm", 143, ""),  # the launcher passes the kubelet's SIGTERM on and records the end
    ("sigkill", 137, "restarted while the job ran"),  # the launcher died: the next one says "lost"
])
def test_a_container_restart_during_the_job_ends_the_attempt_and_does_not_rerun_it(pod, hard, code, message):
    pod.start()
    r = pod.runner(["sh", "-c", f"echo ran >> {HANDOFF_IN_POD}/runs; echo ready; sleep 60"])
    wait_for(lambda: "ready" in pod.log(r))
    pod.restart(hard=hard == "sigkill")
    st = ended(r, 30.0)
    assert st["exit_code"] == code and message in st["message"], st
    time.sleep(1.0)
    assert (pod.dir / "runs").read_text() == "ran\n"


def test_the_job_cannot_write_the_runners_directory(pod):
    pod.start()
    r = pod.runner(["sh", "-c", f"echo x > {HANDOFF_IN_POD}/ctl/run.sh || echo refused; "
                                f"touch {HANDOFF_IN_POD}/ctl/new || echo refused-new"])
    assert ended(r)["exit_code"] == 0
    log = pod.log(r)
    assert "refused\n" in log and "refused-new\n" in log
    assert not (pod.dir / "ctl" / "new").exists()


@pytest.mark.parametrize("target", ["secret-file", "environ"])
def test_a_symlinked_out_log_is_not_followed(pod, tmp_path, target):
    """The tenant points out.log at a file of the runner's: its content never reaches the log."""
    secret = tmp_path / "runner-secret"
    secret.write_text("TOPSECRET-4711\n")
    link = secret if target == "secret-file" else Path("/proc/self/environ")
    (pod.dir / "out.log").symlink_to(link)  # made before the launcher: the tenant's image ran first
    pod.start()
    r = pod.runner(["sh", "-c", "echo job-output"])
    st = ended(r)
    log = pod.log(r)
    assert "TOPSECRET" not in log and "ray-token-c0ffee" not in log and "RAY_ADDRESS" not in log
    assert "out.log is a symbolic link" in log, log
    assert st["ended_at"] is not None


def test_what_the_job_leaves_behind_ends_with_it(pod):
    """As when a podman container's main process exits: a daemon in its own session goes too."""
    pod.start()
    r = pod.runner(["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo daemon started"])
    assert ended(r)["exit_code"] == 0 and "daemon started" in pod.log(r)
    ps = subprocess.run(["podman", "exec", pod.name, "ps", "-o", "pid,args"], capture_output=True, text=True,
                        timeout=30).stdout
    assert "sleep 300" not in ps, ps
