"""Local Ray clusters for `broker up`, demos, tests and the dispatch benchmark.

Two shapes:
- one node (`nodes=1`): `ray start --head --block` in its own process session; stop() signals
  that process group (SIGTERM, then SIGKILL: gcs_server and raylet may outlive a SIGTERM).
  Never `ray stop`, which would kill every Ray on the machine.
- several nodes as processes (`nodes>1, processes=True`, what `broker up` runs): the first node
  is a one-node head as above, every other node a `ray start --address=<head> --block` in a
  process session of its own, on 127.0.0.1 with the same token and shim. Nothing lives in the
  caller's process, so the whole cluster outlives a crash of the broker and is taken over
  (`adopt_head` with the workers' process groups). `visible_gpus` splits the machine's GPUs
  between the nodes (CUDA_VISIBLE_DEVICES per raylet).
- several nodes in this process (`nodes>1`, tests): `ray.cluster_utils.Cluster` with an empty
  head (0 CPU, 0 GPU) and `nodes` worker raylets in this process tree; stop() shuts it down;
  add_node/remove_node simulate node loss.

Every node the broker may schedule on gets the labels the RayExecutor pins and reads:
`broker.io/node=<pool>-<i>`, `broker.io/pool=<pool>` and, when given, `broker.io/gpu-model`.
Pools cycle over the nodes: `pools=("innovation", "innovation", "operation")` with 3 nodes
gives innovation-0, innovation-1, operation-0. The one-node head advertises 127.0.0.1 and every
port is picked free, so two local clusters (a test and a demo) never collide. The multi-node
`Cluster` uses the machine's address (Ray derives its GCS address from the node IP, and a
driver must reach raylets on the same IP) with random ports; token auth guards it.

Ray stays behind the broker (ARCHITECTURE; docs/SECURITY.md):
- Token authentication (Ray 2.60): with `auth_token_file`, the cluster runs with
  `RAY_AUTH_MODE=token` and that file (256-bit hex secret, mode 0600, made if missing) as its
  token: every gRPC call to the GCS, raylets and workers must present it, and the Ray processes,
  our runner actors and this process (the broker's driver) all get it from the environment
  (`enable_token_auth`). A client without the token gets "Unauthenticated". Without the
  argument the environment passes through unchanged, so `RAY_AUTH_MODE=token` set by an
  operator still works.
- Loopback only (one-node head, `loopback_only=True`): Ray 2.x starts gcs_server, raylet, core
  workers and the dashboard agent on all interfaces whatever `--node-ip-address` says and has
  no setting to change it (measured here: `*:<port>` for each). The head is therefore started
  with a tiny LD_PRELOAD shim (native/bind_loopback.c, compiled once with the system C
  compiler into a cache dir) that rewrites every non-loopback bind() to 127.0.0.1 in the head's
  process tree, workers included. Where no C compiler exists we log that and rely on the token.
  The multi-node `Cluster` uses the machine's address (Ray derives its GCS address from the
  node IP, and a driver must reach raylets on the same IP), so it gets the token but not the
  shim.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
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

from broker.adapters.ray import sandbox

log = logging.getLogger(__name__)

NODE_LABEL, POOL_LABEL, GPU_MODEL_LABEL = "broker.io/node", "broker.io/pool", "broker.io/gpu-model"
HOST = "127.0.0.1"


@dataclass
class LocalCluster:
    address: str  # GCS address, for RayExecutor(address=...)
    node_names: tuple[str, ...]
    dashboard_url: str | None
    stop: Callable[[], None] = field(repr=False)
    # several-node clusters only (tests, demos): start one more node with these labels and
    # return a handle for remove_node, which kills that node's processes (a node lost)
    add_node: Callable[..., object] | None = field(default=None, repr=False)
    remove_node: Callable[[object], None] | None = field(default=None, repr=False)
    pid: int | None = None  # the head's `ray start` process (its tree is the head)
    worker_pids: tuple[int, ...] = ()  # with processes=True: each further node's `ray start` process


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
                        auth_token_file: str | os.PathLike | None = None,
                        loopback_only: bool = False, shim_dir: str | os.PathLike | None = None,
                        processes: bool = False, visible_gpus: Sequence[str | None] | None = None,
                        timeout_s: float = 90.0) -> LocalCluster:
    """Start a local cluster with `gpus` logical GPUs per node (0: what Ray detects); return
    its address and stop().

    `cpus` per node defaults to the machine's core count (one node) or 2 (several nodes).
    `env` is added to the environment of the Ray processes (e.g. CONTAINERS_CONF for podman).
    `auth_token_file`: run with Ray token authentication (see the module docstring); this
    process is switched to token mode too, so its drivers present the token.
    `loopback_only` (one node only): every Ray port of the head listens on 127.0.0.1 only,
    checked once the head is up (RuntimeError, the head stopped, if a port is exposed anyway);
    `shim_dir`: where the compiled shim is kept (a private directory; default the user cache).
    `processes` (several nodes): every node a `ray start` process session (crash-safe, see the
    module docstring), all on 127.0.0.1 when `loopback_only`; `cpus` is then per node (default:
    the machine's cores shared out). `visible_gpus[i]`: CUDA_VISIBLE_DEVICES of node i (None:
    inherited), with `gpus` 0 so that Ray counts what it sees.
    """
    specs = node_specs(nodes, pools, gpu_model)
    env = dict(env or {})
    if auth_token_file is not None:
        env.update(enable_token_auth(auth_token_file))
    if nodes > 1 and processes:
        shim = _loopback_env(env, shim_dir) if loopback_only else None
        if cpus is None:
            cpus = max(1, (os.cpu_count() or 1) // nodes)
        return _start_processes(gpus, specs, cpus, env, log_file, timeout_s, visible_gpus, shim)
    if nodes <= 1:
        shim = _loopback_env(env, shim_dir) if loopback_only else None
        cluster = _start_head(gpus, specs[0], cpus, dashboard, env, log_file, timeout_s)
        _check_loopback(cluster, shim)
        return cluster
    return _start_multi(gpus, specs, 2.0 if cpus is None else cpus, dashboard, env)


def _loopback_env(env: dict[str, str], shim_dir) -> Path | None:
    """Add the loopback shim (when it compiles) and Ray's local-only switch to `env`."""
    shim = loopback_shim(shim_dir)
    if shim is not None:
        env["LD_PRELOAD"] = " ".join(p for p in (str(shim), os.environ.get("LD_PRELOAD", "")) if p)
    env.update(enable_local_only())
    return shim


def _check_loopback(cluster: "LocalCluster", shim: Path | None) -> None:
    """Fail closed: with the shim, no server of the cluster's nodes may listen beyond loopback."""
    if shim is None:
        return
    exposed = [x for pid in (cluster.pid, *cluster.worker_pids) if pid for x in exposed_listeners(pid)]
    if exposed:
        cluster.stop()
        raise RuntimeError(f"the local Ray cluster listens beyond loopback despite {shim.name}: {exposed}")


def _start_processes(gpus: int, specs: list[dict[str, str]], cpus: float, env: Mapping[str, str], log_file,
                     timeout_s: float, visible_gpus: Sequence[str | None] | None, shim: Path | None) -> LocalCluster:
    """Node 0 a head, every other node a `ray start --address` session of its own."""
    def node_env(i: int) -> dict[str, str]:
        seen = (visible_gpus or [None] * len(specs))[i]
        return dict(env) if seen is None else {**env, "CUDA_VISIBLE_DEVICES": seen}

    head = _start_head(gpus, specs[0], cpus, False, node_env(0), log_file, timeout_s)
    workers: list[subprocess.Popen] = []
    try:
        for i, labels in enumerate(specs[1:], start=1):
            argv = [sys.executable, "-m", "broker.adapters.ray.loopback_node", f"--address={head.address}",
                    "--block", "--disable-usage-stats",
                    f"--node-ip-address={HOST}",
                    "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
                    f"--num-cpus={int(cpus)}", f"--dashboard-agent-listen-port={free_port()}",
                    f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
            if gpus:
                argv.append(f"--num-gpus={gpus}")
            out = open(log_file, "ab") if log_file else tempfile.TemporaryFile()
            workers.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **node_env(i)}, start_new_session=True))
            out.close()
        deadline = time.time() + timeout_s
        while _alive_nodes(head.address) < len(specs):
            dead = [w for w in workers if w.poll() is not None]
            if dead:
                raise RuntimeError(f"ray start (a worker node) exited with {dead[0].returncode}; "
                                   f"see {log_file or 'its output'}")
            if time.time() > deadline:
                raise TimeoutError(f"the local Ray nodes did not all come up within {timeout_s:.0f} s")
            time.sleep(0.25)
    except BaseException:
        for w in workers:
            _stop_group(w)
        head.stop()
        raise

    def stop() -> None:
        for w in workers:
            _stop_group(w)
        head.stop()

    cluster = LocalCluster(head.address, tuple(s[NODE_LABEL] for s in specs), None, stop, pid=head.pid,
                           worker_pids=tuple(w.pid for w in workers))
    _check_loopback(cluster, shim)
    return cluster


def _alive_nodes(address: str) -> int:
    try:
        from ray._raylet import GcsClient

        return sum(n.state == 0 for n in GcsClient(address=address).get_all_node_info(timeout=2).values())
    except Exception:  # noqa: BLE001 - the GCS is still starting
        return 0


LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # read by ray._private.ray_constants
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ensure_token_file(path: str | os.PathLike) -> Path:
    """The cluster token file: made with a fresh 256-bit secret (mode 0600) if missing, kept
    otherwise (a restarted broker reconnects to nothing older, but keeps one secret per data
    dir). Refuses an empty file or one other users may read."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by other users (mode {mode:o}); chmod 600 it")
    if not path.read_text().strip():
        raise ValueError(f"{path} is empty; delete it to have a new token made")
    return path


def enable_token_auth(token_file: str | os.PathLike) -> dict[str, str]:
    """Switch this process (and what it starts) to Ray token authentication with the token in
    `token_file` (made if missing); return the variables for other processes' environments."""
    path = ensure_token_file(token_file)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path.resolve())}
    os.environ.pop("RAY_AUTH_TOKEN", None)  # a stray inline token would win over the file
    os.environ.update(env)
    # Ray caches its config and the token: make an already imported ray see the change
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return env


def enable_local_only() -> dict[str, str]:
    """Ray's single-machine mode for this process and the head: every node IP is 127.0.0.1.

    `ray start` and `ray.init` otherwise turn 127.0.0.1 (even an explicit --node-ip-address)
    into the machine's routable address, which the loopback-bound head does not answer on.
    Ray reads the switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: "no multi-machine cluster") once
    at import, so an already imported ray is switched too."""
    from ray._private import ray_constants

    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    return {LOCAL_ONLY_ENV: "0"}


SHIM_SOURCE = Path(__file__).with_name("native") / "bind_loopback.c"


def loopback_shim(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The compiled bind_loopback shim (built once per source version), or None where it cannot
    be built (no C compiler, not Linux): then the head listens on all interfaces, guarded by
    the token alone, and we say so in the log."""
    if sys.platform != "linux":
        log.warning("loopback-only Ray needs Linux; the Ray head listens on all interfaces")
        return None
    src = SHIM_SOURCE.read_bytes()
    # A private directory: the library runs inside every Ray process, which holds the token.
    cache = Path(cache_dir) if cache_dir else \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compute-broker"
    out = cache / f"bind_loopback-{hashlib.sha256(src).hexdigest()[:12]}.so"
    if out.exists() and _ours_and_private(cache) and _ours_and_private(out):
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler to build %s: the Ray head listens on all interfaces "
                    "(token authentication still applies)", SHIM_SOURCE.name)
        return None
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _ours_and_private(cache):
        log.warning("%s is not a private directory of ours: not building the shim there", cache)
        return None
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    r = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SHIM_SOURCE), "-ldl"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log.warning("could not build %s (%s): the Ray head listens on all interfaces",
                    SHIM_SOURCE.name, r.stderr.strip()[-300:])
        tmp.unlink(missing_ok=True)
        return None
    os.chmod(tmp, 0o500)
    os.replace(tmp, out)
    return out


def _ours_and_private(path: Path) -> bool:
    """Owned by this user and writable by nobody else."""
    st = path.stat()
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def exposed_listeners(root_pid: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening TCP socket of `root_pid`'s process tree
    that is not on loopback."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        pids = {p.pid: p.name() for p in (root, *root.children(recursive=True))}
    except psutil.Error:
        return []
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            ip = c.laddr.ip
            if not (ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1")):
                out.append((pids[c.pid], ip, c.laddr.port))
    return sorted(out)


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
            return LocalCluster(address, (labels[NODE_LABEL],), url, stop, pid=proc.pid)
        time.sleep(0.25)
    stop()
    raise TimeoutError(f"the Ray head did not come up within {timeout_s:.0f} s")


@contextlib.contextmanager
def _env_added(env: Mapping[str, str]):
    """`env` in os.environ for the block: the raylets we start are our children and inherit it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start_multi(gpus: int, specs: list[dict[str, str]], cpus: float, dashboard: bool,
                 env: Mapping[str, str]) -> LocalCluster:
    from ray.cluster_utils import Cluster

    with _env_added(env):
        dash_port = free_port()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "num_gpus": 0,
            "include_dashboard": dashboard, "dashboard_host": HOST, "dashboard_port": dash_port})
        for labels in specs:
            cluster.add_node(num_cpus=cpus, num_gpus=gpus or None, labels=dict(labels))
        cluster.wait_for_nodes()
    url = f"http://{HOST}:{dash_port}" if dashboard else None

    def stop() -> None:
        import ray

        if ray.is_initialized():  # Cluster refuses to remove the node a driver is attached to
            ray.shutdown()
        cluster.shutdown()

    def add_node(labels: Mapping[str, str], gpus: int = gpus, cpus: float = cpus):
        with _env_added(env):
            node = cluster.add_node(num_cpus=cpus, num_gpus=gpus or None, labels=dict(labels))
            cluster.wait_for_nodes()
        return node

    def remove_node(node) -> None:
        cluster.remove_node(node, allow_graceful=False)

    return LocalCluster(cluster.address, tuple(s[NODE_LABEL] for s in specs), url, stop, add_node, remove_node)


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


# --- a head that outlived its broker -----------------------------------------------------------


def group_leader_alive(pgid: int, start_ticks: int) -> bool:
    """True when process `pgid` runs and is the process recorded (same start time), not a
    later one that reuses its pid."""
    from broker.adapters.ray.runner import process_start_ticks

    return pgid > 0 and start_ticks > 0 and process_start_ticks(pgid) == start_ticks


def stop_group(pgid: int, grace_s: float = 5.0) -> None:
    """SIGTERM a process group, SIGKILL what is left after `grace_s` (gcs_server and raylet
    may outlive a SIGTERM)."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def adopt_head(address: str, pgid: int, start_ticks: int,
               workers: Sequence[tuple[int, int]] = ()) -> LocalCluster | None:
    """The local cluster a previous `broker up` of this data dir started, if it still runs and
    answers (the head's leader process and each worker node's (pgid, start ticks) are the
    recorded ones, and the GCS knows every node alive); None otherwise. Its detached runner
    actors and placement groups are then still there for the new broker's executor to re-adopt;
    stop() ends the worker nodes' and the head's process groups as before."""
    if not group_leader_alive(pgid, start_ticks) or not _gcs_has_node(address):
        return None
    if any(not group_leader_alive(w, t) for w, t in workers) or _alive_nodes(address) < 1 + len(workers):
        return None
    from ray._raylet import GcsClient

    try:
        infos = GcsClient(address=address).get_all_node_info(timeout=5)
        names = tuple(sorted(dict(n.labels).get(NODE_LABEL, "") for n in infos.values() if n.state == 0))
    except Exception:  # noqa: BLE001 - a head that cannot list its nodes is not one to trust
        return None
    def stop() -> None:
        for w, _ in workers:
            stop_group(w)
        stop_group(pgid)

    return LocalCluster(address, names, None, stop, pid=pgid, worker_pids=tuple(w for w, _ in workers))


def kill_orphans(log_dir: str | os.PathLike, secrets_dir: str | os.PathLike = "/dev/shm") -> list[str]:
    """End every worker a previous run of this data dir left behind when its Ray head died:
    the runners recorded each worker's process group (and container) in `worker-<rank>.pid`
    beside its log. A record whose process is gone or is another process now (pid reused) is
    only removed. Returns what was ended ("<job>/<attempt>/<rank>")."""
    ended = []
    for path in sorted(Path(log_dir).glob("*/*/worker-*.pid")):
        try:
            pid_s, ticks_s, runtime, container = path.read_text().split()[:4]
            pid, ticks = int(pid_s), int(ticks_s)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        ended_one = group_leader_alive(pid, ticks)
        if ended_one:
            _signal_group(pid, signal.SIGKILL)
        if runtime == "container" and container != "-" and shutil.which("podman"):
            # the container outlives its `podman run` process (conmon keeps it)
            r = subprocess.run(["podman", "rm", "-f", "-t", "0", container], capture_output=True, text=True,
                               timeout=120, check=False)
            ended_one = ended_one or (r.returncode == 0 and container in r.stdout)
            # what lived only as long as the worker: its secret files (tmpfs) and gang network
            # (a leased namespace needs nothing here: its runner is gone, so the pool's next
            # lease finds it unheld and recycles it)
            sandbox.remove_secrets(Path(secrets_dir) / "cb-secrets" / container)
            sandbox.remove_network(sandbox.gang_network(path.parent.parent.name, int(path.parent.name)),
                                   os.environ)
        if ended_one:
            ended.append(f"{path.parent.parent.name}/{path.parent.name}/{path.stem.split('-', 1)[1]}")
        path.unlink(missing_ok=True)
    return ended
