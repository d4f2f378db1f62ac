"""The Ray adapter's pure helpers: names, podman argv, worker env, node observations, bundles.

No Ray cluster is started here (the integration tests do that)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from broker.adapters.ray.executor import _bundle, node_observation  # noqa: E402
from broker.adapters.ray.local import ensure_token_file, loopback_shim, node_specs  # noqa: E402
from broker.adapters.ray.runner import (NAME_RE, PG_NAME_RE, _exit_code, actor_name,  # noqa: E402
                                        cdi_gpus_available, check_service_port, launch_env, log_path, pg_name,
                                        podman_argv, worker_env)


@pytest.mark.parametrize("job_id, attempt, rank", [
    ("plain", 1, 0),
    ("with-dashes-a1-r2", 12, 3),  # ids that look like the suffix still parse back exactly
    ("0b9e8c1a-6d1f-4a55-9c0e-2f1b7e1c9d2a", 2, 15),
])
def test_names_round_trip(job_id, attempt, rank):
    m = NAME_RE.match(actor_name(job_id, attempt, rank))
    assert (m["job"], int(m["attempt"]), int(m["rank"])) == (job_id, attempt, rank)
    m = PG_NAME_RE.match(pg_name(job_id, attempt))
    assert (m["job"], int(m["attempt"])) == (job_id, attempt)


def test_log_path_layout(tmp_path):
    assert log_path(tmp_path, "j", 2, 1) == tmp_path / "j" / "2" / "worker-1.log"


@pytest.mark.parametrize("case, real_gpus, gpu_ids, devices, cvd", [
    ("logical_gpus", False, [2, 3], [], "2,3"),
    ("cdi_gpus", True, [2, 3], ["nvidia.com/gpu=2", "nvidia.com/gpu=3"], "0,1"),
    ("no_gpus", False, [], [], ""),
])
def test_podman_argv_and_env(case, real_gpus, gpu_ids, devices, cvd):
    env = worker_env(job_id="j", attempt=1, rank=1, world_size=2, master_addr="10.0.0.1",
                     master_port=29500, gpu_ids=gpu_ids, real_gpus=real_gpus,
                     user_env={"RANK": "user-value", "FOO": "bar"})
    assert env["CUDA_VISIBLE_DEVICES"] == cvd, case
    assert env["BROKER_GPU_IDS"] == ",".join(map(str, gpu_ids))
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"], env["MASTER_PORT"]) == \
        ("1", "2", "10.0.0.1", "29500")  # the broker's values win over the user's
    assert env["FOO"] == "bar"
    argv = podman_argv(name="cb-j-a1-r1", job_id="j", attempt=1, image="img:1",
                       command=["sh", "-c", "echo hi"], env_file="/dev/fd/7", gpu_ids=gpu_ids,
                       real_gpus=real_gpus)
    assert argv[:4] == ["podman", "run", "--rm", "--name"] and argv[-4:] == ["img:1", "sh", "-c", "echo hi"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--device"] == devices
    assert "broker.job=j" in argv and "broker.attempt=1" in argv
    assert argv[argv.index("--env-file") + 1] == "/dev/fd/7" and "-e" not in argv
    assert not any("bar" in a or "FOO" in a for a in argv)  # values travel in the env file only


def test_cdi_detection(tmp_path):
    assert cdi_gpus_available([str(tmp_path / "missing")]) is False
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    assert cdi_gpus_available([str(tmp_path / "missing"), str(tmp_path)]) is True


@pytest.mark.parametrize("returncode, code", [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_signal_deaths_are_128_plus_signal(returncode, code):
    assert _exit_code(returncode) == code


def ray_node(labels=None, gpus=0, cpus=4.0, alive=True, node_id="ab" * 28):
    res = {"CPU": cpus, "memory": 8 * 2**30}
    if gpus:
        res["GPU"] = float(gpus)
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "10.0.0.5",
            "NodeManagerHostname": "gpu-5", "Labels": labels or {}, "Resources": res}


@pytest.mark.parametrize("case, node, expect", [
    ("labelled_gpu_node",
     ray_node({"broker.io/node": "op-1", "broker.io/pool": "operation", "broker.io/gpu-model": "H100"}, gpus=8),
     dict(id="op-1", pool="operation", gpu_model="H100", gpus=8)),
    ("unlabelled_gpu_node", ray_node(gpus=2), dict(id="ab" * 28, pool="innovation", gpu_model="generic", gpus=2)),
    ("cpu_node", ray_node(), dict(id="ab" * 28, pool="innovation", gpu_model="", gpus=0)),
])
def test_node_observation(case, node, expect):
    obs = node_observation(node)
    assert (obs.id, obs.pool, obs.gpu_model, obs.capacity.gpus) == \
        (expect["id"], expect["pool"], expect["gpu_model"], expect["gpus"]), case
    assert obs.capacity.memory_gb == 8.0 and obs.address == "10.0.0.5" and obs.alive
    assert obs.labels["ray.io/node-id"] == "ab" * 28  # the pinning fallback is always there


def test_empty_alive_head_is_not_a_node_but_a_dead_node_stays_visible():
    assert node_observation(ray_node(cpus=0)) is None
    dead = node_observation(ray_node({"broker.io/node": "n1"}, gpus=2, alive=False))
    assert dead is not None and dead.alive is False


@pytest.mark.parametrize("gpus, cpus, bundle", [
    (2, 4.0, {"GPU": 2.0, "CPU": 4.0}),
    (1, 0.0, {"GPU": 1.0}),
    (0, 0.0, {"CPU": 0.01}),  # Ray refuses empty bundles
    (0, 1.5, {"CPU": 1.5}),
])
def test_bundle(gpus, cpus, bundle):
    assert _bundle(gpus, cpus) == bundle


def test_node_specs_cycle_pools_and_number_per_pool():
    specs = node_specs(3, ("innovation", "innovation", "operation"), gpu_model="A100")
    assert [s["broker.io/node"] for s in specs] == ["innovation-0", "innovation-1", "operation-0"]
    assert [s["broker.io/pool"] for s in specs] == ["innovation", "innovation", "operation"]
    assert all(s["broker.io/gpu-model"] == "A100" for s in specs)
    assert [s["broker.io/node"] for s in node_specs(3, ("innovation", "operation"))] == \
        ["innovation-0", "operation-0", "innovation-1"]


def test_only_the_ray_adapter_modules_import_ray():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[4]
    offenders = []
    for pkg in ("broker", "scheduler", "quotas", "agents"):
        for path in (root / pkg).rglob("*.py"):
            if path.parent == root / "broker" / "adapters" / "ray":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                         else [])
                if any(n == "ray" or n.startswith("ray.") for n in names):
                    offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_job_environment_drops_ray_secrets_and_the_bind_shim():
    node = {"PATH": "/usr/bin", "CONTAINERS_CONF": "/etc/c.conf", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": "/data/ray-auth-token", "RAY_AUTH_TOKEN": "s3cret",
            "LD_PRELOAD": "/cache/bind_loopback-abc.so /opt/other.so"}
    env = launch_env(node)
    assert env == {"PATH": "/usr/bin", "CONTAINERS_CONF": "/etc/c.conf", "LD_PRELOAD": "/opt/other.so"}
    assert "LD_PRELOAD" not in launch_env({"LD_PRELOAD": "/cache/bind_loopback-abc.so"})


def test_cluster_token_file_is_private_and_kept(tmp_path):
    path = ensure_token_file(tmp_path / "d" / "ray-auth-token")
    token = path.read_text()
    assert len(bytes.fromhex(token)) == 32  # 256 bits
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_token_file(path).read_text() == token  # a restart keeps the secret
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        ensure_token_file(path)
    path.chmod(0o600)
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        ensure_token_file(path)


def test_loopback_shim_rewrites_wildcard_and_routable_binds(tmp_path):
    """The LD_PRELOAD shim the embedded Ray head runs under: a process that asks for 0.0.0.0,
    [::] (dual stack or IPv6-only), the machine's own address, or listens without binding at
    all ends up listening on loopback only (the port it asked for kept); a loopback bind is
    left alone."""
    import json
    import shutil
    import subprocess
    import sys

    import psutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    shim = loopback_shim(tmp_path / "lib")
    assert shim is not None and shim.exists()
    assert loopback_shim(tmp_path / "lib") == shim  # built once per source version
    own = next((a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family == 2 and not a.address.startswith("127.")), "0.0.0.0")
    probe = """
import json, socket, sys
out = []
for family, addr, v6only in ((socket.AF_INET, "0.0.0.0", 0), (socket.AF_INET6, "::", 0),
                             (socket.AF_INET6, "::", 1), (socket.AF_INET, sys.argv[1], 0),
                             (socket.AF_INET, "127.0.0.1", 0), (socket.AF_INET, None, 0)):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    if addr is not None:
        s.bind((addr, 0))
    s.listen()  # the last one listens without bind(): the kernel would pick 0.0.0.0
    out.append(s.getsockname()[0])
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", probe, own], capture_output=True, text=True, timeout=30,
                         env={"LD_PRELOAD": str(shim), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["127.0.0.1", "::ffff:127.0.0.1", "::1", "127.0.0.1", "127.0.0.1", "127.0.0.1"]


def test_loopback_shim_is_not_taken_from_a_directory_others_can_write(tmp_path):
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert loopback_shim(shared) is None  # neither built there nor loaded from there


def test_exposed_listeners_names_a_process_listening_beyond_loopback():
    """The fail-closed check `start_local_cluster` runs on the head's process tree."""
    import subprocess
    import sys
    import time

    from broker.adapters.ray.local import exposed_listeners

    code = ("import socket, sys, time\n"
            "a = socket.socket(); a.bind(('0.0.0.0', 0)); a.listen()\n"
            "b = socket.socket(); b.bind(('127.0.0.1', 0)); b.listen()\n"
            "print(a.getsockname()[1], flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        deadline = time.time() + 10
        found = exposed_listeners(proc.pid)
        while not found and time.time() < deadline:
            time.sleep(0.1)
            found = exposed_listeners(proc.pid)
        assert [(ip, p) for _, ip, p in found] == [("0.0.0.0", port)]  # the loopback one is fine
    finally:
        proc.kill()
        proc.wait()


def test_notice_is_written_whole_and_readable(tmp_path):
    import json

    from broker.adapters.ray.runner import NOTICE_NAME, notice_dir, write_notice

    d = notice_dir(tmp_path, "j", 2, 1)
    assert d == tmp_path / "j" / "2" / "notice-1"
    d.mkdir(parents=True)
    write_notice(d, {"reason": "preempted", "deadline": 12.5})
    write_notice(d, {"reason": "cancelled", "deadline": 13.0})  # replaced, never appended
    assert json.loads((d / NOTICE_NAME).read_text()) == {"reason": "cancelled", "deadline": 13.0}
    assert (d / NOTICE_NAME).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in d.iterdir()] == [NOTICE_NAME]  # no temporary file left behind


def test_worker_env_and_mounts_for_notice_and_checkpoint():
    env = worker_env(job_id="j", attempt=1, rank=0, world_size=1, master_addr="a", master_port=1,
                     gpu_ids=[], real_gpus=False, user_env={},
                     notice_file="/broker/notice/notice.json", checkpoint_dir="/broker/checkpoint")
    assert env["BROKER_NOTICE_FILE"] == "/broker/notice/notice.json"
    assert env["BROKER_CHECKPOINT_DIR"] == "/broker/checkpoint"
    assert "BROKER_CHECKPOINT_DIR" not in worker_env(job_id="j", attempt=1, rank=0, world_size=1,
                                                     master_addr="a", master_port=1, gpu_ids=[],
                                                     real_gpus=False, user_env={})
    argv = podman_argv(name="n", job_id="j", attempt=1, image="img", command=["true"],
                       env_file="/dev/fd/3", gpu_ids=[], real_gpus=False,
                       mounts=[("/logs/j/1/notice-0", "/broker/notice", "ro"),
                               ("/ckpt/p/j", "/broker/checkpoint", "rw")])
    vols = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert vols == ["/logs/j/1/notice-0:/broker/notice:ro", "/ckpt/p/j:/broker/checkpoint:rw"]
    assert argv.index("-v") < argv.index("img")  # options before the image


def test_a_process_replica_never_starts_on_a_port_another_process_listens_on():
    """The broker picks a process replica's PORT before placement; on the node the runner
    refuses to start it when something else listens there (probes and the proxy would reach
    that process instead)."""
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"PORT {port} is in use on node n1"):
            check_service_port({"BROKER_SERVICE": "ouh-liver/echo", "PORT": str(port)}, "n1")
        check_service_port({"PORT": str(port)}, "n1")  # not a service replica: not the broker's port
    check_service_port({"BROKER_SERVICE": "ouh-liver/echo", "PORT": str(port)}, "n1")  # free again
