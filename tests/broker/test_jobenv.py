"""The job environment rules: nothing of a job's env steers a host process."""

from __future__ import annotations

import pytest

from broker.jobenv import SAFE_PATH, env_file, host_unsafe, process_env
from broker.auth.limits import env_problems

# Every name a tenant could use to run code on the host through a process's environment.
DANGEROUS = ["PATH", "HOME", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "ld_preload", "GCONV_PATH",
             "GLIBC_TUNABLES", "LOCPATH", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "PS4", "PROMPT_COMMAND",
             "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONBREAKPOINT", "PERL5LIB", "PERL5OPT",
             "RUBYOPT", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "OPENSSL_CONF", "GIT_SSH_COMMAND",
             "BASH_FUNC_x", "TMPDIR"]
HARMLESS = ["FOO", "PYTHONUNBUFFERED", "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "NCCL_DEBUG", "MY_PATH"]


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_names_never_reach_a_process_job(name):
    assert host_unsafe(name)
    env = process_env({"PATH": "/home/broker/.venv/bin:/usr/bin", "HOME": "/home/broker",
                       "LD_PRELOAD": "/data/lib/bind_loopback.so", "RAY_AUTH_TOKEN": "secret"},
                      {name: "/tmp/evil", "FOO": "bar"})
    assert env["PATH"] == SAFE_PATH
    assert env.get(name) != "/tmp/evil"
    assert "LD_PRELOAD" not in env and "RAY_AUTH_TOKEN" not in env  # nothing of the node's leaks
    assert env["FOO"] == "bar"


@pytest.mark.parametrize("name", HARMLESS)
def test_ordinary_names_pass(name):
    assert not host_unsafe(name)
    assert process_env({}, {name: "1"})[name] == "1"


@pytest.mark.parametrize("name", DANGEROUS)
def test_submit_refuses_dangerous_names_for_process_jobs_only(name):
    (p,) = env_problems({name: "/tmp/evil"}, runtime="process")
    assert p.code == "ENV_NAME_UNSAFE" and p.field == f"env.{name}"
    assert env_problems({name: "/tmp/evil"}, runtime="container") == []  # inside a container: fine


@pytest.mark.parametrize("value", ["a\nB=1", "a\rB=1", "\n"])
def test_container_values_with_line_breaks_are_refused(value):
    (p,) = env_problems({"A": value}, runtime="container")
    assert p.code == "ENV_VALUE_INVALID" and "line break" in p.message
    with pytest.raises(ValueError, match="line break"):
        env_file({"A": value})
    assert env_problems({"A": value}, runtime="process") == []  # a process gets it verbatim


def test_env_file_is_one_variable_per_line_with_values_verbatim():
    assert env_file({"A": "one", "B": " two = three ", "C": ""}) == b"A=one\nB= two = three \nC=\n"


@pytest.mark.parametrize("name", ["A*", "A=B", "", "A\nB"])
def test_env_file_refuses_names_podman_would_misread(name):
    with pytest.raises(ValueError):
        env_file({name: "x"})
