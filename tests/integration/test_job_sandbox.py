"""The container sandbox on real Ray + podman: secrets on tmpfs, masked logs, network isolation,
a gang's private network, limits and OOM, scratch removal (adapter level: the RayExecutor of
the session's cluster, `isolation=True` by default)."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from broker.adapters.ray import netpool, sandbox
from broker.adapters.ray.runner import cdi_gpus_available, container_name
from broker.ports import WorkerState
from tests.integration.conftest import wait_for
from tests.integration.test_ray_executor import log_fields, spec, until_state

pytestmark = [pytest.mark.ray, pytest.mark.container, pytest.mark.timeout(180)]

SECRET = "s3cr3t-hospital-db-pass"


def run(ray_executor, launch, timeout_s: float = 60.0):
    ray_executor.launch(launch)
    st = until_state(ray_executor, launch.job_id, WorkerState.EXITED, timeout_s=timeout_s)
    logs = [ray_executor.read_log(launch.job_id, 1, w.rank).decode() for w in st.workers]
    return st.workers, logs


def test_secret_is_a_tmpfs_file_masked_in_the_log_and_scratch_is_removed(ray_executor, busybox_image, job_id,
                                                                        tmp_path):
    cmd = ("echo value=$(cat /run/secrets/db-pass); echo mode=$(stat -c %a /run/secrets/db-pass) "
           "fs=$(awk '$2==\"/run/secrets\"{print $3}' /proc/mounts) envhits=$(env | grep -c hospital) "
           "dir=$BROKER_SECRETS_DIR; echo data > $BROKER_SCRATCH_DIR/x && echo kept > $BROKER_RESULTS_DIR/r "
           "&& echo wrote=yes")
    launch = replace(spec(job_id, cmd, image=busybox_image), secrets={"db-pass": SECRET},
                     scratch_dir=str(tmp_path / "scratch" / job_id), results_dir=str(tmp_path / "results"))
    (w,), (log,) = run(ray_executor, launch)
    assert w.exit_code == 0, log
    assert SECRET not in log and "value=[MASKED]" in log  # read inside, masked on its way to the log
    f = log_fields(ray_executor, job_id, 0)
    assert (f["mode"], f["fs"], f["envhits"], f["dir"], f["wrote"]) == ("400", "tmpfs", "0", "/run/secrets", "yes")
    name = container_name(job_id, 1, 0)
    assert not (Path("/dev/shm") / "cb-secrets" / name).exists()  # the tmpfs file is gone with the worker
    assert not (tmp_path / "scratch" / job_id).exists()  # scratch: removed when the job ended
    assert (tmp_path / "results" / "r").read_text() == "kept\n"  # results: survive the job


@pytest.fixture
def listeners():
    """TCP listeners on the node: one on 127.0.0.1 (like the broker API and PostgreSQL) and one
    on 0.0.0.0 (like a Ray port or an exporter bound to every address). Returns their ports and
    whether any connection ever arrived."""
    socks, hits = [], []

    def serve(s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            hits.append(s.getsockname())
            c.close()

    ports = {}
    for name, addr in (("loopback", "127.0.0.1"), ("any", "0.0.0.0")):
        s = socket.socket()
        s.bind((addr, 0))
        s.listen(8)
        socks.append(s)
        ports[name] = s.getsockname()[1]
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    yield ports, hits
    for s in socks:
        s.close()


def _host_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_container_cannot_reach_the_nodes_services(ray_executor, ray_cluster, busybox_image, job_id, listeners):
    ports, hits = listeners
    gcs_host, gcs_port = ray_cluster.address.rsplit(":", 1)
    host_ip = _host_ip()
    targets = {"postgres": ("127.0.0.1", 5432), "gcs": ("127.0.0.1", gcs_port), "gcs_ip": (host_ip, gcs_port),
               "api_loopback": ("127.0.0.1", ports["loopback"]), "any_on_host_ip": (host_ip, ports["any"])}
    probes = " ".join(f"nc -w 2 {h} {p} </dev/null >/dev/null 2>&1 && echo {k}=open || echo {k}=closed;"
                      for k, (h, p) in targets.items())
    gw = ("GW=$(ip route | awk '/default/{print $3}'); [ -z \"$GW\" ] && GW=$(ip route | awk '{print $NF; exit}' "
          f"| sed 's/[0-9]*$/1/'); nc -w 2 $GW {ports['any']} </dev/null >/dev/null 2>&1 && echo gateway=open "
          "|| echo gateway=closed; echo gw=$GW;")
    (w,), (log,) = run(ray_executor, spec(job_id, probes + gw, image=busybox_image))
    assert w.exit_code == 0, log
    f = log_fields(ray_executor, job_id, 0)
    for k in (*targets, "gateway"):
        assert f[k] == "closed", (k, log)
    assert not hits, f"a connection reached the node: {hits}"
    # the same probe on the host network does connect (the test can fail)
    check = spec(job_id + "-h", f"nc -w 2 127.0.0.1 {ports['loopback']} </dev/null && echo reached=yes",
                 image=busybox_image)
    from broker.adapters.ray.executor import RayExecutor
    from tests.integration.conftest import NAMESPACE

    host_ex = RayExecutor(ray_cluster.address, log_dir=Path(ray_executor.log_dir), namespace=NAMESPACE,
                          isolation=False, warm_runners=0)
    (w2,), (log2,) = run(host_ex, check)
    assert "reached=yes" in log2, log2


def test_gang_on_one_node_talks_over_two_ports(ray_executor, busybox_image, job_id):
    # busybox `nc -l` with stdin at its end may close before it reads (a race: 4 of 20 on the
    # node's own loopback): keep its stdin open and wait for the data instead
    server = ("sleep 60 | nc -l -p $MASTER_PORT > /tmp/a & sleep 60 | nc -l -p 29601 > /tmp/b & "
              "i=0; until [ -s /tmp/a ] && [ -s /tmp/b ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done; "
              "echo got=$(cat /tmp/a)+$(cat /tmp/b)")
    client = ("for p in $MASTER_PORT 29601; do i=0; until echo hello-$p | nc -w 2 $MASTER_ADDR $p; do "
              "i=$((i+1)); [ $i -gt 100 ] && exit 9; sleep 0.1; done; done; echo sent=yes")
    cmd = f'if [ "$RANK" = 0 ]; then {server}; else {client}; fi'
    launch = spec(job_id, cmd, image=busybox_image, nodes=("innovation-0", "innovation-0"))
    workers, logs = run(ray_executor, launch)
    assert [w.exit_code for w in workers] == [0, 0], logs
    port = log_fields(ray_executor, job_id, 0)
    assert port["got"].startswith("hello-") and port["got"].endswith("+hello-29601"), logs
    assert "sent=yes" in logs[1]
    # the gang's network is gone with it (removed right after the workers reported their end)
    import subprocess

    wait_for(lambda: subprocess.run(["podman", "network", "exists", sandbox.gang_network(job_id, 1)]).returncode != 0,
             15)


def test_limits_read_only_root_no_capabilities_and_air_gap(ray_executor, busybox_image, job_id):
    cmd = ("touch /etc/x 2>/dev/null && echo rootfs=rw || echo rootfs=ro; touch /tmp/x && echo tmp=rw; "
           "echo cap=$(awk '/CapEff/{print $2}' /proc/self/status) nnp=$(awk '/NoNewPrivs/{print $2}' "
           "/proc/self/status) pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max) "
           "ifaces=$(ls /sys/class/net | tr '\\n' ,)")
    launch = replace(spec(job_id, cmd, image=busybox_image), no_egress=True)
    (w,), (log,) = run(ray_executor, launch)
    assert w.exit_code == 0, log
    f = log_fields(ray_executor, job_id, 0)
    assert (f["rootfs"], f["tmp"], f["cap"], f["nnp"]) == ("ro", "rw", "0000000000000000", "1"), log
    assert f["pids"] == str(ray_executor.pids_limit)
    assert f["ifaces"] == "lo,", log  # air-gapped pool, one worker: no network at all


def test_memory_hog_is_killed_and_reported_as_oom(ray_executor, busybox_image, job_id):
    launch = spec(job_id, "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived", image=busybox_image)
    launch = replace(launch, workers=tuple(replace(w, memory_gb=0.05) for w in launch.workers))
    (w,), (log,) = run(ray_executor, launch)
    assert w.exit_code == 137 and "survived" not in log
    assert w.message.startswith("OOM") and "0.05 GiB" in w.message


@pytest.mark.skipif(not cdi_gpus_available(), reason="no NVIDIA CDI spec on this node (no real GPUs)")
def test_container_sees_only_its_admitted_gpu(ray_executor, busybox_image, job_id):
    cmd = "ls /dev | grep -c '^nvidia[0-9]' ; for d in /dev/nvidia[0-9]*; do echo dev=$d; done"
    launch = spec(job_id, cmd, image=busybox_image, gpus=1, gpu_indices=[(0,)])
    (w,), (log,) = run(ray_executor, launch)
    assert w.exit_code == 0, log
    assert log.splitlines()[0].strip() == "1", log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_jobs_cannot_reach_each_others_containers(ray_executor, busybox_image, job_id):
    """Two listening jobs, one in a pooled namespace and one on its own bridge (a published
    port, as a service replica has), and two probing jobs of both kinds: no job reaches the
    other jobs' containers (netavark alone would forward between bridges)."""
    listen = ("IP=$(ip -4 addr show eth0 | awk '/inet /{print $2}' | cut -d/ -f1); echo ip=$IP; "
              "while true; do nc -l -p 7000 -e echo reached; done")
    listeners = {"slot": replace(spec(job_id + "-ls", listen, image=busybox_image, gpus=0), max_runtime_s=60),
                 "bridge": replace(spec(job_id + "-lb", listen, image=busybox_image, gpus=0), max_runtime_s=60,
                                   publish=((_free_port(), 7000),))}
    ips = {}
    for kind, launch in listeners.items():
        ray_executor.launch(launch)
        ips[kind] = wait_for(lambda: log_fields(ray_executor, launch.job_id, 0).get("ip"), 60)
    assert ips["slot"] != ips["bridge"]
    probes = " ".join(f"nc -w 2 {ip} 7000 </dev/null | grep -q reached && echo {k}=open || echo {k}=closed;"
                      for k, ip in ips.items())
    for kind, extra in (("slot", {}), ("bridge", {"publish": ((_free_port(), 7001),)})):
        probe = replace(spec(f"{job_id}-p{kind[0]}", probes, image=busybox_image, gpus=0), **extra)
        (w,), (log,) = run(ray_executor, probe)
        assert w.exit_code == 0, log
        f = log_fields(ray_executor, probe.job_id, 0)
        assert (f["slot"], f["bridge"]) == ("closed", "closed"), (kind, log)
    # from the node itself both answer (so the probes above can fail)
    for ip in ips.values():
        with socket.create_connection((ip, 7000), timeout=5) as c:
            assert c.recv(16).startswith(b"reached")


@pytest.mark.skipif(not netpool.NetPool.available(), reason="the namespace pool needs root, ip and iptables")
def test_an_attempts_namespace_is_leased_while_it_runs_and_recycled_after(ray_executor, busybox_image, job_id):
    pool = netpool.default_pool()
    owner = f"{job_id}/1"
    launch = spec(job_id, "echo gw=$(ip route | awk '/default/{print $3}'); sleep 3", image=busybox_image, gpus=0)
    ray_executor.launch(launch)
    leased = wait_for(lambda: [k for k, s in pool.slots().items() if s["owner"] == owner and s["state"] == "leased"], 60)
    assert len(leased) == 1  # one slot for the attempt
    until_state(ray_executor, job_id, WorkerState.EXITED)
    assert log_fields(ray_executor, job_id, 0)["gw"] == pool.gateway_ip(leased[0])  # it ran in that slot
    wait_for(lambda: pool.slots()[leased[0]]["state"] == "clean", 30)  # recycled once the worker ended
    assert not [s for s in pool.slots().values() if s["owner"] == owner]
