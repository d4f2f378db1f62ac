"""Attribution against a fake /proc tree and a fake `podman inspect`."""

from pathlib import Path

import pytest

from agents.attribution import Attributor, Owner, container_id_from_cgroup
from tests.agents.builders import device, proc

CID_A = "a" * 64
CID_B = "b" * 12 + "0123456789" * 5 + "cd"


def write_proc(root: Path, pid: int, env: dict | None = None, cgroup: str | None = None, env_readable: bool = True) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    if env is not None:
        p = d / "environ"
        p.write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")
        if not env_readable:
            p.unlink()
            p.mkdir()  # reading a directory raises IsADirectoryError, an OSError like EACCES
    if cgroup is not None:
        (d / "cgroup").write_text(cgroup)


@pytest.mark.parametrize(
    "name,text,expected",
    [
        ("cgroup v2 podman", f"0::/machine.slice/libpod-{CID_A}.scope/container\n", CID_A),
        ("cgroup v1 hybrid podman", f"12:memory:/machine.slice/libpod-{CID_A}.scope\n1:name=systemd:/user.slice\n", CID_A),
        ("podman cgroupfs manager", f"0::/libpod_parent/libpod-{CID_B}\n", CID_B),
        ("docker", f"0::/system.slice/docker-{CID_A}.scope\n", CID_A),
        ("plain process", "0::/user.slice/user-1000.slice/session-2.scope\n", None),
        ("empty", "", None),
    ],
)
def test_container_id_from_cgroup(name, text, expected):
    assert container_id_from_cgroup(text) == expected


class FakeInspect:
    def __init__(self, labels: dict[str, dict[str, str] | None]):
        self.labels, self.calls = labels, []

    def __call__(self, cid: str):
        self.calls.append(cid)
        return self.labels.get(cid)


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    write_proc(tmp_path, 100, env={"PATH": "/bin", "BROKER_JOB_ID": "job-1", "BROKER_ATTEMPT": "2", "RANK": "1",
                                   "BROKER_PROJECT": "ouh-liver"})
    write_proc(tmp_path, 200, env={"PATH": "/bin"}, cgroup=f"0::/machine.slice/libpod-{CID_A}.scope/container\n")
    write_proc(tmp_path, 201, env={}, env_readable=False, cgroup=f"0::/machine.slice/libpod-{CID_A}.scope/container\n")
    write_proc(tmp_path, 300, env={"PATH": "/bin"}, cgroup="0::/user.slice/session-1.scope\n")
    write_proc(tmp_path, 400, env={"PATH": "/bin"}, cgroup=f"0::/machine.slice/libpod-{CID_B}.scope\n")
    return tmp_path


LABELS = {CID_A: {"broker.job": "job-9", "broker.attempt": "0", "broker.rank": "3", "broker.project": "slb-ct"},
          CID_B: {"io.other": "x"}}


@pytest.mark.parametrize(
    "name,pid,expected",
    [
        ("environ of the worker", 100, Owner("job-1", 2, 1, "ouh-liver")),
        ("container labels via cgroup", 200, Owner("job-9", 0, 3, "slb-ct")),
        ("environ unreadable, cgroup works", 201, Owner("job-9", 0, 3, "slb-ct")),
        ("not in a container, no env", 300, None),
        ("container without broker labels", 400, None),
        ("process already gone", 999, None),
    ],
)
def test_owner(proc_root, name, pid, expected):
    assert Attributor(proc_root, inspect=FakeInspect(LABELS)).owner(pid) == expected


def test_inspect_cached_per_container(proc_root):
    inspect = FakeInspect(LABELS)
    a = Attributor(proc_root, inspect=inspect)
    for _ in range(3):
        a.owner(200), a.owner(201)
    assert inspect.calls == [CID_A]


def test_inspect_failure_is_not_cached(proc_root):
    inspect = FakeInspect({})  # podman answers nothing (busy, or container gone)
    a = Attributor(proc_root, inspect=inspect)
    assert a.owner(200) is None and a.owner(200) is None
    assert inspect.calls == [CID_A, CID_A]


def test_attribute_fills_processes_of_samples(proc_root):
    a = Attributor(proc_root, inspect=FakeInspect(LABELS))
    samples = [device(0, processes=[proc(100), proc(300)]), device(1, processes=[proc(200)]), device(2)]
    out = a.attribute(samples)
    got = [[(p.pid, p.job_id, p.attempt, p.rank, p.project) for p in s.processes] for s in out]
    assert got == [
        [(100, "job-1", 2, 1, "ouh-liver"), (300, None, None, None, None)],
        [(200, "job-9", 0, 3, "slb-ct")],
        [],
    ]
    assert out[2] is samples[2]
