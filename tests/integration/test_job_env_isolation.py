"""A job's env reaches the job, never a host process (real Ray, real podman).

The attack these tests replay: a member submits env that would make the runner's host-side
process run their program (`PATH` pointing at a directory with a fake `podman` or `sh`,
`LD_PRELOAD` naming a library, shell and interpreter start-up variables). Each fake program
here leaves a marker file if it ever runs on the host. Adapter level, so the submit-time
checks are bypassed on purpose: the runner itself must hold the line.
"""

from __future__ import annotations

import pytest

from broker.jobenv import SAFE_PATH
from broker.ports import WorkerState
from tests.integration.test_ray_executor import log_fields, spec, until_state

pytestmark = [pytest.mark.ray, pytest.mark.container, pytest.mark.timeout(180)]

FAKES = ("podman", "sh", "bash", "busybox", "python3", "env", "conmon", "runc")


@pytest.fixture
def trap(tmp_path):
    """A directory of fake programs that record their run in `ran`, and the hostile env."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "ran"
    bin_dir.mkdir()
    for name in FAKES:
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\necho {name} >> {marker}\nexit 0\n")
        fake.chmod(0o755)
    rc = tmp_path / "rc"
    rc.write_text(f"echo rc >> {marker}\n")
    so = tmp_path / "evil.so"
    so.write_bytes(b"not a library")
    hostile = {"PATH": str(bin_dir), "LD_PRELOAD": str(so), "LD_LIBRARY_PATH": str(bin_dir),
               "LD_AUDIT": str(so), "GCONV_PATH": str(bin_dir), "BASH_ENV": str(rc), "ENV": str(rc),
               "PYTHONPATH": str(bin_dir), "PYTHONSTARTUP": str(rc), "HOME": str(tmp_path),
               "GLIBC_TUNABLES": "glibc.malloc.check=3", "NODE_OPTIONS": f"--require {rc}",
               "FOO": "bar"}
    return bin_dir, marker, hostile


def test_container_env_goes_into_the_container_only(ray_executor, busybox_image, job_id, trap):
    bin_dir, marker, hostile = trap
    cmd = ["/bin/busybox", "sh", "-c", "echo inside_path=$PATH inside_preload=$LD_PRELOAD foo=$FOO"]
    ray_executor.launch(spec(job_id, cmd, image=busybox_image, env=hostile))
    (w,) = until_state(ray_executor, job_id, WorkerState.EXITED).workers
    log = ray_executor.read_log(job_id, 1, 0).decode()
    assert w.exit_code == 0, log
    assert not marker.exists(), f"a fake program ran on the host: {marker.read_text()}"
    fields = log_fields(ray_executor, job_id, 0)
    # the values did reach the container (a static busybox ignores LD_PRELOAD)
    assert fields["inside_path"] == str(bin_dir) and fields["foo"] == "bar"
    assert fields["inside_preload"] == hostile["LD_PRELOAD"]
    assert "preloaded" not in log and "ld.so" not in log  # the host's loader never saw it


def test_process_job_starts_from_a_fixed_environment(ray_executor, job_id, trap):
    _, marker, hostile = trap
    cmd = ("sh", "-c", "echo path=$PATH preload=[$LD_PRELOAD] bashenv=[$BASH_ENV] home=$HOME "
                       "ray=[$RAY_AUTH_MODE] foo=$FOO")
    ray_executor.launch(spec(job_id, cmd, runtime="process", env=hostile))
    (w,) = until_state(ray_executor, job_id, WorkerState.EXITED).workers
    log = ray_executor.read_log(job_id, 1, 0).decode()
    assert w.exit_code == 0, log
    assert not marker.exists(), f"a fake program ran on the host: {marker.read_text()}"
    fields = log_fields(ray_executor, job_id, 0)
    assert fields["path"] == SAFE_PATH and fields["foo"] == "bar"
    assert fields["preload"] == fields["bashenv"] == fields["ray"] == "[]"
    assert fields["home"] != hostile["HOME"]


def test_container_env_value_with_a_line_break_is_refused(ray_executor, busybox_image, job_id):
    """A line break would add a variable of the user's choosing to the env file."""
    ray_executor.launch(spec(job_id, ["/bin/busybox", "true"], image=busybox_image,
                             env={"A": "x\nCUDA_VISIBLE_DEVICES=0,1,2,3"}))
    (w,) = until_state(ray_executor, job_id, WorkerState.EXITED).workers
    assert w.exit_code == 125 and "line break" in w.message
