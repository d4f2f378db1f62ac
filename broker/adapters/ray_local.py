"""Local Ray clusters for `broker up`, demos, tests and the dispatch benchmark.

Two shapes:
- one node (`nodes=1`): `ray start --head --block` in its own process session; stop() signals
  that process group (SIGTERM, then SIGKILL: gcs_server and raylet may outlive a SIGTERM).
  Never `ray stop`, which would kill every Ray on the machine.
- several nodes (`nodes>1`): `ray.cluster_utils.Cluster` with an empty head (0 CPU, 0 GPU) and
  `nodes` worker raylets in this process tree; stop() shuts it down.

Every node the broker may schedule on gets the labels the RayExecutor pins and reads:
`broker.io/node=<pool>-<i>`, `broker.io/pool=<pool>` and, when given, `broker.io/gpu-model`.
Pools cycle over the nodes: `pools=("innovation", "innovation", "operation")` with 3 nodes
gives innovation-0, innovation-1, operation-0. The one-node head advertises 127.0.0.1 and every
port is picked free, so two local clusters (a test and a demo) never collide. The multi-node
`Cluster` uses the machine's address (Ray derives its GCS address from the node IP, and a
driver must reach raylets on the same IP) with random ports; token auth guards it.

Token authentication (Ray 2.60): `ray.init()` starting its own local cluster turns it on by
default, but `ray start --head` (used here) and `Cluster` turn it on only when
`RAY_AUTH_MODE=token` is set or a token already exists (`~/.ray/auth_token`, or
`RAY_AUTH_TOKEN` / `RAY_AUTH_TOKEN_PATH`); otherwise Ray logs "Token authentication is
disabled". We pass the environment through unchanged, so `RAY_AUTH_MODE=token broker up`
(with a token from `ray get-auth-token --generate`) runs the local cluster with auth, and the
broker's driver, which inherits the same variables, presents the token. Note that the one-node
head only *advertises* 127.0.0.1 (and its dashboard binds it): gcs_server and raylet still
listen on all interfaces, so on a shared network run it with token auth or behind a firewall.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

NODE_LABEL, POOL_LABEL, GPU_MODEL_LABEL = "broker.io/node", "broker.io/pool", "broker.io/gpu-model"
HOST = "127.0.0.1"


@dataclass
class LocalCluster:
    address: str  # GCS address, for RayExecutor(address=...)
    node_names: tuple[str, ...]
    dashboard_url: str | None
    stop: Callable[[], None] = field(repr=False)


def node_specs(nodes: int, pools: Sequence[str], gpu_model: str = "") -> list[dict[str, str]]:
    """Labels for each node: names `<pool>-<i>` numbered per pool, pools cycling."""
    counts: dict[str, int] = {}
    specs = []
    for i in range(nodes):
        pool = pools[i % len(pools)]
        k = counts.get(pool, 0)
        counts[pool] = k + 1
        labels = {NODE_LABEL: f"{pool}-{k}", POOL_LABEL: pool}
        if gpu_model:
            labels[GPU_MODEL_LABEL] = gpu_model
        specs.append(labels)
    return specs


def start_local_cluster(gpus: int = 0, nodes: int = 1, pools: Sequence[str] = ("innovation",),
                        *, cpus: float | None = None, gpu_model: str = "",
                        dashboard: bool = False, env: Mapping[str, str] | None = None,
                        log_file: str | os.PathLike | None = None,
                        timeout_s: float = 90.0) -> LocalCluster:
    """Start a local cluster with `gpus` logical GPUs per node (0: what Ray detects); return
    its address and stop().

    `cpus` per node defaults to the machine's core count (one node) or 2 (several nodes).
    `env` is added to the environment of the Ray processes (e.g. CONTAINERS_CONF for podman).
    """
    specs = node_specs(nodes, pools, gpu_model)
    if nodes <= 1:
        return _start_head(gpus, specs[0], cpus, dashboard, env or {}, log_file, timeout_s)
    return _start_multi(gpus, specs, 2.0 if cpus is None else cpus, dashboard, env or {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _start_head(gpus: int, labels: Mapping[str, str], cpus: float | None, dashboard: bool,
                env: Mapping[str, str], log_file, timeout_s: float) -> LocalCluster:
    port, dash_port = free_port(), free_port()
    argv = [_ray_bin(), "start", "--head", "--block", "--disable-usage-stats",
            f"--node-ip-address={HOST}", f"--port={port}",
            "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
            f"--include-dashboard={'true' if dashboard else 'false'}",
            f"--dashboard-host={HOST}", f"--dashboard-port={dash_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}"]
    if cpus is not None:
        argv.append(f"--num-cpus={int(cpus)}")
    if gpus:
        argv.append(f"--num-gpus={gpus}")
    out = open(log_file, "ab") if log_file else tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env}, start_new_session=True)
    out.close()

    def stop() -> None:
        _stop_group(proc)

    address = f"{HOST}:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}; see {log_file or 'its output'}")
        if _gcs_has_node(address):
            url = f"http://{HOST}:{dash_port}" if dashboard else None
            if url:
                _wait_http(url, deadline)
            return LocalCluster(address, (labels[NODE_LABEL],), url, stop)
        time.sleep(0.25)
    stop()
    raise TimeoutError(f"the Ray head did not come up within {timeout_s:.0f} s")


def _start_multi(gpus: int, specs: list[dict[str, str]], cpus: float, dashboard: bool,
                 env: Mapping[str, str]) -> LocalCluster:
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the raylets are our children: they inherit it
    try:
        dash_port = free_port()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "num_gpus": 0,
            "include_dashboard": dashboard, "dashboard_host": HOST, "dashboard_port": dash_port})
        for labels in specs:
            cluster.add_node(num_cpus=cpus, num_gpus=gpus or None, labels=dict(labels))
        cluster.wait_for_nodes()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    url = f"http://{HOST}:{dash_port}" if dashboard else None

    def stop() -> None:
        import ray

        if ray.is_initialized():  # Cluster refuses to remove the node a driver is attached to
            ray.shutdown()
        cluster.shutdown()

    return LocalCluster(cluster.address, tuple(s[NODE_LABEL] for s in specs), url, stop)


def _stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and _group_alive(proc.pid):
        proc.poll()
        time.sleep(0.1)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _gcs_has_node(address: str) -> bool:
    """True once the GCS answers and knows at least one alive node."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            pass
    except OSError:
        return False
    try:
        from ray._raylet import GcsClient

        nodes = GcsClient(address=address).get_all_node_info(timeout=2)
        return any(n.state == 0 for n in nodes.values())  # 0 == ALIVE
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _wait_http(url: str, deadline: float) -> None:
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/api/version", timeout=1).read()
            return
        except OSError:
            time.sleep(0.25)
