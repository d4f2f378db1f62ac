"""The worker runner: a detached Ray actor that runs one worker of one attempt.

One runner per (job, attempt, rank), named `job-<job_id>-a<attempt>-r<rank>` in the broker's
namespace and scheduled into its placement-group bundle, so Ray has reserved its GPUs and
CPUs before it starts. The runner

- learns its GPUs from Ray (`ray.get_gpu_ids()`), and for rank 0 picks MASTER_ADDR (its node
  IP) and MASTER_PORT (a free port on its node); the other ranks ask rank 0's runner;
- starts the job as a podman container (`runtime="container"`) or a plain process in its own
  process group (`runtime="process"`), with the job's env kept out of every host process
  (`broker.jobenv`: an env file over a pipe for podman, a fixed base for processes), stdout+stderr
  through a pipe into `<log_dir>/<job_id>/<attempt>/worker-<rank>.log` on its node, capped at
  the job's `log_max_bytes` (`LogPump`: head and tail kept, the middle dropped) and never
  fatal to the job: a full or broken log disk ends the logging, not the work;
- records started_at / exit code / ended_at and keeps them after the process ends, so a
  restarted broker that re-adopts the attempt still reads how it ended;
- stops the work itself: first the notice (a JSON file at `BROKER_NOTICE_FILE` saying why and
  until when: preempted, cancelled, max_runtime...), then SIGTERM, then SIGKILL after the grace
  period (podman stop -t), on request and when max_runtime is exceeded;
- gives a checkpointable job its checkpoint directory (`BROKER_CHECKPOINT_DIR`), which
  survives attempts: the broker names it per job, the runner creates and mounts it.
- in an image pod on Kubernetes (`BROKER_HANDOFF_DIR` set: no podman there) hands a
  container job to the pod's `job` container instead (`handoff`: the job's argv and env as a
  quoted run script, stop and kill as files, one attempt per pod in its life) and follows it
  like a process; see docs/SECURITY.md, "the in-pod path".

Why this module imports only the standard library, `ray` and `broker.jobenv` (itself stdlib
only): the executor ships this class and jobenv's functions to the Ray workers *by value*
(cloudpickle), so Ray nodes (a KubeRay pod, a GPU server) need Ray but not the broker package
(`sandbox`, `netpool` and `handoff` beside it travel the same way, on the same terms).
Keep it that way; status comes back as plain dicts.

Invariants: the process is started at most once per runner; after `ended_at` is set the
runner's status never changes again; exit codes of processes killed by a signal are reported
as 128 + signal (what podman reports for containers), never negative.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ray

from broker.adapters.ray import handoff, netpool, sandbox
from broker.jobenv import env_file, process_env

NAME_RE = re.compile(r"^job-(?P<job>.+)-a(?P<attempt>\d+)-r(?P<rank>\d+)$")
PG_NAME_RE = re.compile(r"^cb-(?P<job>.+)-a(?P<attempt>\d+)$")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
EXIT_START_FAILED = 125  # the runner could not start the process (podman's own convention)

STARTING, RUNNING, EXITED = "starting", "running", "exited"
# Where a container sees its notice and checkpoint directories (bind mounts of the host's).
NOTICE_DIR_IN_CONTAINER = "/broker/notice"
CHECKPOINT_DIR_IN_CONTAINER = "/broker/checkpoint"
SCRATCH_IN_CONTAINER = "/scratch"
RESULTS_IN_CONTAINER = "/results"
NOTICE_NAME = "notice.json"
LOG_TAIL_MAX = 1 << 20  # at most this much of a capped log's end is kept (in memory until the end)
_LOG_CHUNK = 64 * 1024


def actor_name(job_id: str, attempt: int, rank: int) -> str:
    return f"job-{job_id}-a{attempt}-r{rank}"


def pg_name(job_id: str, attempt: int) -> str:
    return f"cb-{job_id}-a{attempt}"


def container_name(job_id: str, attempt: int, rank: int) -> str:
    return f"cb-{job_id}-a{attempt}-r{rank}"


def log_path(log_dir: str | os.PathLike, job_id: str, attempt: int, rank: int) -> Path:
    return Path(log_dir) / job_id / str(attempt) / f"worker-{rank}.log"


def log_state_path(log_file: str | os.PathLike) -> Path:
    """Where a capped (or failed) log's `LogPump.stats()` is kept, beside the log."""
    p = Path(log_file)
    return p.parent / f"{p.name}.json"


def notice_dir(log_dir: str | os.PathLike, job_id: str, attempt: int, rank: int) -> Path:
    return Path(log_dir) / job_id / str(attempt) / f"notice-{rank}"


def write_notice(directory: Path, notice: Mapping[str, Any]) -> None:
    """Atomically (write, then rename) so a job polling the file never reads half of it."""
    tmp = directory / f".{NOTICE_NAME}.tmp"
    tmp.write_text(json.dumps(dict(notice), sort_keys=True))
    tmp.chmod(0o644)
    os.replace(tmp, directory / NOTICE_NAME)


def pid_path(log_file: Path) -> Path:
    """`worker-<rank>.pid` beside `worker-<rank>.log`: "<pid> <start ticks> <runtime> <container|->"."""
    return log_file.with_suffix(".pid")


def process_start_ticks(pid: int) -> int:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22): with the
    pid, a process identity that survives pid reuse. 0 where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def cdi_gpus_available(dirs: Sequence[str] = CDI_DIRS) -> bool:
    """True when an NVIDIA CDI spec exists on this node (the container toolkit writes it)."""
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        if any("nvidia" in n for n in names):
            return True
    return False


def worker_env(
    *,
    job_id: str,
    attempt: int,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    gpu_ids: Sequence[int],
    real_gpus: bool,
    user_env: Mapping[str, str],
    notice_file: str = "",
    checkpoint_dir: str = "",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables every worker sees (they override the user's env of the same name).

    On real GPU nodes the container sees only its CDI devices, renumbered from 0, so
    CUDA_VISIBLE_DEVICES inside is 0..n-1; BROKER_GPU_IDS always holds the node's indices.
    `notice_file` / `checkpoint_dir` are paths as the worker sees them (inside its container).
    """
    cvd = ",".join(str(i) for i in (range(len(gpu_ids)) if real_gpus else gpu_ids))
    env = dict(user_env)
    env.update(
        CUDA_VISIBLE_DEVICES=cvd,
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK="0",  # one worker per bundle: each worker is alone in its slice of the node
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        BROKER_JOB_ID=job_id,
        BROKER_ATTEMPT=str(attempt),
        BROKER_GPU_IDS=",".join(str(i) for i in gpu_ids),
    )
    if notice_file:
        env["BROKER_NOTICE_FILE"] = notice_file
    if checkpoint_dir:
        env["BROKER_CHECKPOINT_DIR"] = checkpoint_dir
    env.update(extra or {})
    return env


# What a job must not inherit from the Ray worker that starts it: Ray's cluster token (the
# job would be a Ray client of the broker's cluster) and the loopback bind shim of the embedded
# head (a job may listen where it likes inside its own sandbox).
_NOT_INHERITED = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def launch_env(node_env: Mapping[str, str]) -> dict[str, str]:
    """The environment the host-side podman process starts from: the node's (CONTAINERS_CONF,
    PATH, ...) minus Ray's secrets and our LD_PRELOAD shim. Never anything of the job's."""
    env = {k: v for k, v in node_env.items() if k not in _NOT_INHERITED}
    preload = " ".join(p for p in env.get("LD_PRELOAD", "").split() if "bind_loopback" not in p)
    if preload:
        env["LD_PRELOAD"] = preload
    else:
        env.pop("LD_PRELOAD", None)
    return env


def podman_argv(
    *,
    name: str,
    job_id: str,
    attempt: int,
    image: str,
    command: Sequence[str],
    env_file: str,
    gpu_ids: Sequence[int],
    real_gpus: bool,
    network: str = "host",
    mounts: Sequence[tuple[str, str, str]] = (),
    flags: Sequence[str] = (),
    publish: Sequence[tuple[str, int, int]] = (),
) -> list[str]:
    """`podman run` for one worker. The job's variables come from `env_file` (the runner passes
    a pipe, `/dev/fd/N`): never from podman's own environment, never in argv."""
    argv = ["podman", "run", "--rm", "--name", name, "--label", f"broker.job={job_id}",
            "--label", f"broker.attempt={attempt}"]
    if network:
        argv += ["--network", network]
    argv += ["--env-file", env_file, *flags]
    for addr, host_port, container_port in publish:  # (node address, host port, container port)
        argv += ["-p", f"{addr}:{host_port}:{container_port}"]
    for host, inside, mode in mounts:  # (host dir, path in the container, "ro" | "rw")
        argv += ["-v", f"{host}:{inside}:{mode}"]
    if real_gpus:
        for i in gpu_ids:
            argv += ["--device", f"nvidia.com/gpu={i}"]
    return argv + [image, *command]


def check_service_port(env: Mapping[str, str], node: str = "") -> None:
    """A `runtime: process` service replica (its env names `BROKER_SERVICE`) listens on the
    `PORT` the broker chose before the replica was placed, unique among the broker's replicas
    but unchecked on this node. Refuse to start when something else listens there: the broker's
    probes and proxy would reach that process instead of the replica (tenant requests to a
    stranger). Raises RuntimeError (the attempt ends as a start failure and the service's
    controller starts a replacement, on another port)."""
    if "BROKER_SERVICE" not in env or not str(env.get("PORT", "")).isdigit():
        return
    port = int(env["PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket's TIME_WAIT is no clash
        try:
            s.bind(("", port))
        except OSError as e:
            raise RuntimeError(f"PORT {port} is in use on node {node or socket.gethostname()} ({e.strerror}); "
                               "the replica was not started") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class LogPump:
    """Copies a worker's output (a pipe) into its log file, at most `max_bytes` of it.

    Why head *and* tail: the head holds how the job started (arguments, versions, the first
    error), the tail how it ended (the traceback, the final metrics); the middle of a runaway
    log is the least useful part. So the first `max_bytes - tail` bytes go to the file as they
    come, then one marker line says the log is capped; the last `tail` bytes (a quarter of the
    cap, at most `LOG_TAIL_MAX`) are kept in memory and appended after a second marker when the
    output ends. Offsets only grow, so a client following the log never sees bytes change.

    Why the pipe is always drained: a job whose output is no longer written must not block on
    a full pipe. Any `OSError` from the file (ENOSPC, EIO, a removed mount) ends the writing and
    is recorded in `error`; the job keeps running. `max_bytes` 0 means no cap.

    When the log is capped or its writing failed, `<log>.json` beside it holds `stats()`, so the
    broker can say so after the runner is gone (best effort: on a full disk it may be missing).

    Invariant: file bytes = min(output, head) + markers + min(dropped, tail); `dropped` counts
    every output byte not in the file."""

    def __init__(self, path: Path, max_bytes: int = 0, opener: Callable[[Path], Any] | None = None) -> None:
        self.path, self.max_bytes = Path(path), max(0, int(max_bytes or 0))
        self.tail_max = min(self.max_bytes // 4, LOG_TAIL_MAX) if self.max_bytes else 0
        self.head_max = self.max_bytes - self.tail_max
        self.written = 0  # output bytes in the file (markers not counted)
        self.dropped = 0
        self.error = ""
        self._opener = opener or _open_log
        self._sink: Any = None
        self._tail = bytearray()
        self._capped = False
        self.masker: Any = None  # a `sandbox.Masker`: secret values never reach the file

    def open(self) -> bool:
        """Create the log file (and its folder); False, with `error` set, when the disk refuses."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = self._opener(self.path)
            return True
        except OSError as e:
            self.error = f"log not written: {e}"[:300]
            return False

    def run(self, src: Any) -> None:
        """Copy `src` (a readable binary pipe) until EOF, then write the kept tail."""
        try:
            fd = src.fileno()
            while True:
                data = os.read(fd, _LOG_CHUNK)
                if not data:
                    break
                self.feed(self.masker.feed(data) if self.masker is not None else data)
        except OSError:
            pass
        finally:
            if self.masker is not None:
                self.feed(self.masker.flush())
            self.close()

    def feed(self, data: bytes) -> None:
        if not self.max_bytes:
            self._out(data)
            return
        room = self.head_max - self.written
        if room > 0 and not self._capped:
            self._out(data[:room])
            data = data[room:]
        if not data:
            return
        if not self._capped:
            self._capped = True
            self._save_state()
            self._write(f"\n[broker] log capped at {self.max_bytes} bytes per worker: further output is dropped "
                        f"(the job keeps running); its last {self.tail_max} bytes are appended when it ends\n"
                        .encode())
        self.dropped += len(data)
        if self.tail_max:
            self._tail += data
            if len(self._tail) > self.tail_max:
                del self._tail[:len(self._tail) - self.tail_max]

    def close(self) -> None:
        if self._capped:
            tail = bytes(self._tail)
            self._write(f"\n[broker] log truncated: {self.dropped - len(tail)} bytes dropped; "
                        f"the last {len(tail)} bytes of output follow\n".encode())
            if self._write(tail):
                self.dropped -= len(tail)
                self.written += len(tail)
            self._tail = bytearray()
            self._capped = False
            self._save_state()
        if self._sink is not None:
            try:
                self._sink.close()
            except OSError:
                pass
            self._sink = None

    def stats(self) -> dict[str, Any]:
        return {"bytes": self.written, "dropped": self.dropped, "truncated": self.dropped > 0,
                "max_bytes": self.max_bytes, "error": self.error}

    def _out(self, data: bytes) -> None:
        if self._write(data):
            self.written += len(data)
        else:
            self.dropped += len(data)

    def _write(self, data: bytes) -> bool:
        if self._sink is None:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[self._sink.write(view):]
            return True
        except OSError as e:
            self.error = f"log writing stopped: {e}"[:300]
            try:
                self._sink.close()
            except OSError:
                pass
            self._sink = None
            self._save_state()
            return False

    def _save_state(self) -> None:
        try:
            log_state_path(self.path).write_text(json.dumps(self.stats(), sort_keys=True))
        except OSError:
            pass


def _open_log(path: Path) -> Any:
    return open(path, "ab", buffering=0)


class WorkerRunner:
    """Actor body; the executor wraps it with `ray.remote(max_concurrency=...)`."""

    log_opener: Callable[[Path], Any] | None = None  # tests inject a failing disk here

    def __init__(self, node: str, log_dir: str, namespace: str, gpu_devices: str = "auto",
                 network: str = "host", job: Mapping[str, Any] | None = None, isolation: bool = False,
                 pids_limit: int = 0, secrets_dir: str = "/dev/shm",
                 network_subnet: str = netpool.DEFAULT_SUBNET) -> None:
        """`job` given: run it now (a runner created for one worker). `job` None: a warm
        spare that waits, idle, until `adopt(job)`."""
        self.created_at = time.time()  # for dispatch timing: actor up vs. process up
        self.node, self.log_dir, self.namespace, self.network = node, log_dir, namespace, network
        self.isolation, self.pids_limit, self.secrets_base = isolation, pids_limit, secrets_dir
        self.network_subnet = network_subnet
        self._secret_dir: Path | None = None
        self._gang_net = ""
        self.real_gpus = gpu_devices == "on" or (gpu_devices == "auto" and cdi_gpus_available())
        self.ip = ray.util.get_node_ip_address()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._stop_requested = False
        self._done = threading.Event()
        self._gone = threading.Event()  # set once what outlives the exit report is removed too
        self.job_id: str | None = None
        self.attempt, self.rank, self.world_size, self.port = 0, -1, 0, 0
        self.gpu_ids: list[int] = []
        self.state, self.exit_code, self.message = STARTING, None, ""
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._pump: LogPump | None = None
        self._pump_thread: threading.Thread | None = None
        self._notice_ok = False
        self._lease = None
        # the ray-worker container of an image pod (Kubernetes): container jobs are handed to
        # the pod's job container (`handoff`), never started here
        self.handoff_dir = os.environ.get(handoff.HANDOFF_ENV, "")
        self._pod: handoff.Handoff | None = None
        self.in_pod = False
        if job is not None:
            self.adopt(job)
        elif isolation and netpool.NetPool.available():  # a warm spare: the node's pool, ready before
            threading.Thread(target=netpool.default_pool(network_subnet).prepare, name="netpool", daemon=True).start()

    def adopt(self, job: Mapping[str, Any]) -> bool:
        """Take one worker of one attempt and start it (asynchronously). Keys: job_id,
        attempt, rank, world_size, image, command, env, runtime, max_runtime_s, grace_s;
        optional log_dir (else the constructor's: a spare may outlive the broker that made it),
        log_max_bytes (the cap of each worker's log, 0: none), gpu_ids (else Ray's ids of this actor), master (rank 0's runner handle),
        pg (wait until this placement group is placed before starting). A runner takes one
        job in its life; adopting the same worker again is a no-op, another one is refused."""
        with self._lock:
            if self.job_id is not None:
                return (self.job_id, self.attempt, self.rank) == (job["job_id"], job["attempt"], job["rank"])
            self.job_id, self.attempt, self.rank = job["job_id"], int(job["attempt"]), int(job["rank"])
        self.world_size = int(job["world_size"])
        self.image, self.command, self.user_env = job["image"], list(job["command"]), dict(job["env"])
        self.runtime, self.max_runtime_s, self.grace_s = job["runtime"], job["max_runtime_s"], job["grace_s"]
        ids = job.get("gpu_ids")
        self.gpu_ids = [int(g) for g in ids] if ids is not None else [int(float(g)) for g in ray.get_gpu_ids()]
        self._master_handle, self._pg = job.get("master"), job.get("pg")
        self.log_file = log_path(job.get("log_dir") or self.log_dir, self.job_id, self.attempt,
                                 self.rank)
        self.notice_dir = notice_dir(job.get("log_dir") or self.log_dir, self.job_id, self.attempt,
                                     self.rank)
        self.checkpoint_dir = job.get("checkpoint_dir") or ""
        self.log_max_bytes = int(job.get("log_max_bytes") or 0)
        self.secrets = dict(job.get("secrets") or {})
        self.data_mounts = [tuple(m) for m in job.get("mounts") or ()]
        self.scratch_dir, self.results_dir = job.get("scratch_dir") or "", job.get("results_dir") or ""
        # one scratch per worker: workers of a gang on nodes that share a file system (Ray nodes
        # of one host) must not remove each other's scratch when the first of them ends (rank 1
        # then failed to start: its mount's source was gone)
        self._scratch_root = self.scratch_dir
        if self.scratch_dir:
            self.scratch_dir = str(Path(self.scratch_dir) / f"rank-{self.rank}")
        self.memory_gb, self.cpus = float(job.get("memory_gb") or 0), float(job.get("cpus") or 0)
        self.read_only = bool(job.get("read_only_root", True))
        self.isolation = bool(job.get("isolation", self.isolation))  # the executor's, at launch
        # in an image pod the pod is the sandbox: the job shares the pod's network, no podman
        self.in_pod = self.runtime == "container" and bool(self.handoff_dir)
        self.handoff_start_timeout_s = float(job.get("handoff_start_timeout_s") or 60.0)
        net, gang = sandbox.network_for(isolated=self.isolation and self.runtime == "container"
                                        and not self.in_pod,
                                        world_size=self.world_size, gang_local=bool(job.get("gang_local", True)),
                                        no_egress=bool(job.get("no_egress")), default=self.network)
        self._no_egress = bool(job.get("no_egress"))
        self.publish = [(int(h), int(c)) for h, c in job.get("publish") or ()]  # a service replica's port
        # the attempt's own network: a leased namespace of the node's pool (its workers share it and
        # reach each other on 127.0.0.1, any port), or, where the pool cannot serve (a published
        # port, no root or no `ip`), a podman bridge per attempt (rank 0 by its container name)
        self._slot_kind = ""
        if gang and not self.publish and netpool.NetPool.available():
            self._slot_kind = netpool.AIRGAP if self._no_egress else netpool.EGRESS
        self._lease: netpool.Lease | None = None
        bridge = gang and not self._slot_kind
        self._net = sandbox.gang_network(self.job_id, self.attempt) if bridge else net
        self._gang_net = self._net if bridge else ""
        if self._slot_kind:
            self.master_addr = "127.0.0.1"
        else:
            self.master_addr = container_name(self.job_id, self.attempt, 0) if gang else self.ip
        self.port = (29500 if gang else _free_port()) if self.rank == 0 else 0
        threading.Thread(target=self._run, name="runner", daemon=True).start()
        return True

    def identity(self) -> tuple[str, str | None, int, int]:
        """(node, job_id or None while idle, attempt, rank)."""
        return self.node, self.job_id, self.attempt, self.rank

    # --- actor methods -----------------------------------------------------------------

    def master(self) -> tuple[str, int] | None:
        """(MASTER_ADDR, MASTER_PORT): rank 0's node IP and the port it picked (None until
        this runner has adopted rank 0)."""
        addr, port = getattr(self, "master_addr", None), getattr(self, "port", 0)
        # adopting sets job_id before the address: until both are set, "not yet" (the caller retries)
        return (addr, port) if self.job_id is not None and self.rank == 0 and addr is not None else None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"rank": self.rank, "state": self.state, "node": self.node,
                    "idle": self.job_id is None,
                    "exit_code": self.exit_code, "started_at": self.started_at,
                    "ended_at": self.ended_at, "message": self.message,
                    "runner_created_at": self.created_at, "pid": os.getpid(),
                    "log": self._pump.stats() if self._pump is not None else None,
                    "cuda_visible_devices": ",".join(str(i) for i in self.gpu_ids)}

    def stop(self, grace_s: float, message: str = "", reason: str = "stopped") -> None:
        """Notice, then SIGTERM now and SIGKILL after grace_s. Returns at once; repeated calls
        keep the first message and notice. `reason`: preempted | cancelled | max_runtime |
        failed | lost | shutdown | stopped (the job reads it in BROKER_NOTICE_FILE)."""
        with self._lock:
            if self.ended_at is not None:
                return
            first = not self._stop_requested
            if first:
                self._stop_requested = True
                self.message = message or "stopped"
            proc = self._proc
        if proc is not None and first:
            self._notify(reason, message or "stopped", grace_s)
        if proc is not None:
            threading.Thread(target=self._terminate, args=(proc, grace_s), daemon=True).start()

    def wait_ended(self, timeout_s: float = 60.0) -> bool:
        """True as soon as this worker has ended (exited, killed, failed to start); False after
        `timeout_s` (the executor's end watcher asks again). Holds one of the actor's threads
        while it waits, nothing else."""
        return self._done.wait(timeout_s)

    def terminate(self, wait_s: float = 10.0) -> bool:
        """Kill now (no grace) and wait until the process is gone; True when it is."""
        if self.job_id is None:
            return True
        self.stop(0.0, "released")
        done = self._done.wait(wait_s)
        return done and self._gone.wait(min(wait_s, 5.0))  # before the actor dies: its gang network

    def log_info(self) -> dict[str, Any] | None:
        """The worker's log stats (`LogPump.stats()`), None before it started."""
        return self._pump.stats() if self._pump is not None else None

    def read_log(self, offset: int = 0, max_bytes: int = 1 << 20) -> bytes:
        log_file = getattr(self, "log_file", None)  # adopt sets job_id first, the log's path after
        if self.job_id is None or log_file is None:
            return b""
        try:
            with open(log_file, "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""

    # --- internals -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._wait_placed()
            addr, port = self._master()
            if self.handoff_dir and self.runtime != "container":
                raise RuntimeError(f"runtime {self.runtime!r} is not run in an image pod: it would run "
                                   "beside the Ray token in the ray-worker container")
            if self.in_pod:
                self._claim_pod()  # before the log: a refused second attempt leaves the log alone
            self._pump = LogPump(self.log_file, self.log_max_bytes, opener=self.log_opener)
            self._pump.open()  # a refused log file (full disk) ends the logging, not the start
            if self.in_pod:
                env = self._pod_env(addr, port)
            else:
                env = self._host_env(addr, port)
            with self._lock:
                cancelled = self._stop_requested
                if cancelled:  # cancelled before it ever ran
                    self._finish_locked(128 + signal.SIGTERM)
                else:
                    self._proc = self._spawn(env)
                    if not self.in_pod:  # a pod's job runs once its launcher says so (below)
                        self._record_pid(self._proc.pid)
                        self.started_at, self.state = time.time(), RUNNING
            if cancelled:
                self._cleanup()
                self._remove_network()
                return
            if self.in_pod:
                self._pod_started()
        except Exception as exc:  # noqa: BLE001 - anything that stops the start is the job's end
            if self._pump is not None and self._proc is None:
                self._pump.close()  # no process will feed it: release the file
            self._cleanup()
            with self._lock:
                self.message = f"could not start: {exc}"[:500]
                self._finish_locked(EXIT_START_FAILED)
            self._remove_network()
            return
        if self.max_runtime_s and self.max_runtime_s > 0 and self.max_runtime_s != float("inf"):
            timer = threading.Timer(self.max_runtime_s, self.stop,
                                    (self.grace_s, "max_runtime exceeded", "max_runtime"))
            timer.daemon = True
            timer.start()
        rc = self._proc.wait()
        if self._pump_thread is not None:  # the output's end; a leftover child holding the pipe
            self._pump_thread.join(timeout=5.0)  # may keep it open: do not wait for it forever
        self._cleanup()
        with self._lock:
            code = _exit_code(rc)
            if self.runtime == "container" and not self.in_pod:
                oom = sandbox.oom_message(code, self.memory_gb, self._stop_requested)
                if oom:
                    self.message = oom
            pod_message = getattr(self._proc, "message", "") if self.in_pod else ""
            if pod_message:
                self.message = f"{self.message}; {pod_message}"[:500] if self.message else pod_message
            self._finish_locked(code)
        self._remove_network()

    def _host_env(self, addr: str, port: int) -> dict[str, str]:
        """A podman or process job's variables, with its notice, checkpoint and storage paths
        as it sees them (after preparing those directories on this node)."""
        try:
            self.notice_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._notice_ok = True
        except OSError:  # the same disk: the job runs without a notice file
            pass
        if self.runtime == "process":
            check_service_port(self.user_env, self.node)
        if self.checkpoint_dir:
            Path(self.checkpoint_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        extra = self._prepare_storage()
        return worker_env(job_id=self.job_id, attempt=self.attempt, rank=self.rank,
                          world_size=self.world_size, master_addr=addr, master_port=port,
                          gpu_ids=self.gpu_ids, real_gpus=self.real_gpus,
                          user_env=self.user_env,
                          notice_file=str(Path(self._inside(str(self.notice_dir), NOTICE_DIR_IN_CONTAINER))
                                          / NOTICE_NAME) if self._notice_ok else "",
                          checkpoint_dir=self._inside(self.checkpoint_dir, CHECKPOINT_DIR_IN_CONTAINER),
                          extra=extra)

    # --- image pods (Kubernetes): the job runs in the pod's other container -------------

    def _claim_pod(self) -> None:
        """Take this pod for this worker, once in the pod's life (`handoff.Handoff.claim`).
        Secrets and dataset mounts cannot reach the job container from here (no tmpfs or bind
        mount across containers): such a job is refused rather than run without them."""
        if self.secrets or self.data_mounts:
            raise RuntimeError("secrets and dataset mounts are not delivered to image pods yet")
        self._pod = handoff.Handoff(self.handoff_dir)
        private = Path(self.log_dir) / f".pod-claim-{socket.gethostname()}"
        private.parent.mkdir(parents=True, exist_ok=True)
        self._pod.claim(private, f"{self.job_id} {self.attempt} {self.rank}")
        self._notice_ok = True

    def _pod_env(self, addr: str, port: int) -> dict[str, str]:
        """The job's variables in a pod: the same as in a container (its env, then ours), the
        notice in the handoff directory, no checkpoint or storage paths (the runner's
        directories are not in the job container), the pod's GPUs numbered from 0 (the device
        plugin gives the job container only its own), over the job container's own environment
        (its image's ENV), never this process's (the runner is the pod's other container)."""
        env = worker_env(job_id=self.job_id, attempt=self.attempt, rank=self.rank,
                         world_size=self.world_size, master_addr=addr, master_port=port,
                         gpu_ids=self.gpu_ids, real_gpus=True, user_env=self.user_env,
                         notice_file=self._pod.notice_path())
        return handoff.pod_env(env)

    def _pod_started(self) -> None:
        """RUNNING once the launcher started the job (`started`); raises when it does not."""
        proc = self._proc
        proc.wait_started(self.handoff_start_timeout_s)
        with self._lock:
            if proc.started_at is not None and self.ended_at is None:
                self.started_at, self.state = proc.started_at, RUNNING

    def _notify(self, reason: str, message: str, grace_s: float) -> None:
        """Write the notice before the signal: a job that traps SIGTERM reads why and until
        when it may save its state. Best effort: a full disk must not stop the stop."""
        notice = {"reason": reason, "message": message, "grace_s": grace_s,
                  "deadline": time.time() + grace_s, "job_id": self.job_id,
                  "attempt": self.attempt, "rank": self.rank,
                  "checkpoint_dir": self._inside(self.checkpoint_dir, CHECKPOINT_DIR_IN_CONTAINER) or None}
        try:
            if self._pod is not None:
                self._pod.write_notice(notice)
            else:
                write_notice(self.notice_dir, notice)
        except OSError as e:
            with self._lock:
                self.message = f"{self.message} (notice not written: {e})"[:500]

    def _inside(self, host_path: str, container_path: str) -> str:
        """A host directory as the worker sees it ("" when there is none)."""
        if not host_path or self.in_pod:  # the runner's directories are not in the pod's job container
            return ""
        return container_path if self.runtime == "container" else host_path

    def _finish_locked(self, code: int) -> None:
        self.exit_code, self.ended_at, self.state = code, time.time(), EXITED
        if self.job_id is not None:
            pid_path(self.log_file).unlink(missing_ok=True)
        self._done.set()

    def _record_pid(self, pid: int) -> None:
        """Leave a record of the worker's process group (and container) next to its log, so a
        broker that restarts after its Ray head died can end what this runner started (the job
        runs in its own session and would outlive the runner). Best effort."""
        name = container_name(self.job_id, self.attempt, self.rank) if self.runtime == "container" else "-"
        try:
            pid_path(self.log_file).write_text(f"{pid} {process_start_ticks(pid)} {self.runtime} {name}\n")
        except OSError:
            pass

    def _wait_placed(self) -> None:
        """A warm runner is not inside the bundle: start only once Ray has reserved it."""
        while self._pg is not None and not self._stop_requested:
            if self._pg.wait(1.0):
                return

    def _master(self) -> tuple[str, int]:
        if self.rank == 0:
            return self.master_addr, self.port
        head = self._master_handle or ray.get_actor(actor_name(self.job_id, self.attempt, 0),
                                                    namespace=self.namespace)
        while not self._stop_requested:  # rank 0 may still be starting; a cancel ends the wait
            ref = head.master.remote()
            ready, _ = ray.wait([ref], timeout=1.0)
            if ready and (got := ray.get(ref)) is not None:
                return got
            if ready:
                time.sleep(0.02)  # rank 0's runner is up but has not adopted its worker yet
        return "", 0

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen:
        """Start the worker's process. Container: podman starts from the node's environment
        (CONTAINERS_CONF...) and reads the job's variables from a pipe. Process: the fixed
        base of `process_env`, never the node's nor Ray's environment."""
        if self.runtime == "process":
            return self._pumped(subprocess.Popen(
                list(self.command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=process_env(os.environ, env),
                start_new_session=True, close_fds=True))
        if self.runtime != "container":
            raise ValueError(f"unknown runtime {self.runtime!r}")
        if self.in_pod:  # hand it to the pod's job container; the launcher starts it
            self._pod.submit(self.command, env)
            proc = handoff.PodProcess(self._pod, self._pump or LogPump(self.log_file, self.log_max_bytes))
            self._pump_thread = proc.thread
            return proc
        payload = env_file(env)  # refuses a value that would break the file's lines
        rfd, wfd = os.pipe()
        try:
            argv = podman_argv(name=container_name(self.job_id, self.attempt, self.rank),
                               job_id=self.job_id, attempt=self.attempt, image=self.image,
                               command=self.command, env_file=f"/dev/fd/{rfd}",
                               gpu_ids=self.gpu_ids, real_gpus=self.real_gpus,
                               network=self._net, mounts=self._mounts(), flags=self._flags(),
                               publish=[(self.ip, h, c) for h, c in self.publish] if self._net != "host" else ())
            proc = self._pumped(subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=launch_env(os.environ), start_new_session=True, close_fds=True,
                pass_fds=(rfd,), cwd=self._podman_cwd()))
        except BaseException:
            os.close(wfd)
            raise
        finally:
            os.close(rfd)
        threading.Thread(target=_feed, args=(wfd, payload), name="env-file", daemon=True).start()
        return proc

    def _podman_cwd(self) -> str:
        """Where podman (and its conmon) run: the worker's log folder. conmon writes a file
        named `oom` into its working directory when the kernel kills the container at its
        memory limit (cgroup v1); from the runner's own directory (the broker's checkout, for
        Ray workers) that left stray `oom` files there."""
        d = self.log_file.parent
        return str(d) if d.is_dir() else "/"

    def _pumped(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Start copying the process's output into its log (see `LogPump`)."""
        pump = self._pump or LogPump(self.log_file, self.log_max_bytes)
        self._pump_thread = threading.Thread(target=pump.run, args=(proc.stdout,), name="log-pump",
                                             daemon=True)
        self._pump_thread.start()
        return proc

    def _mounts(self) -> list[tuple[str, str, str]]:
        """The notice directory (read-only: the runner writes it), for a checkpointable job its
        checkpoint directory (read-write, kept across attempts), the secrets (read-only, tmpfs),
        scratch and results (read-write) and the job's datasets (as granted)."""
        mounts = [(str(self.notice_dir), NOTICE_DIR_IN_CONTAINER, "ro")] if self._notice_ok else []
        if self.checkpoint_dir:
            mounts.append((self.checkpoint_dir, CHECKPOINT_DIR_IN_CONTAINER, "rw"))
        if self._secret_dir is not None:
            mounts.append((str(self._secret_dir), sandbox.SECRETS_IN_CONTAINER, "ro"))
        if self.scratch_dir:
            mounts.append((self.scratch_dir, SCRATCH_IN_CONTAINER, "rw"))
        if self.results_dir:
            mounts.append((self.results_dir, RESULTS_IN_CONTAINER, "rw"))
        return mounts + [(h, i, m) for h, i, m in self.data_mounts]

    def _flags(self) -> list[str]:
        if not self.isolation:
            return []
        return sandbox.isolation_flags(memory_gb=self.memory_gb, cpus=self.cpus, pids_limit=self.pids_limit,
                                       read_only=self.read_only)

    def _prepare_storage(self) -> dict[str, str]:
        """Secret files (tmpfs), scratch and results directories, the gang network; returns the
        variables that tell the worker where they are."""
        extra: dict[str, str] = {}
        name = container_name(self.job_id, self.attempt, self.rank)
        if self.secrets:
            self._secret_dir = sandbox.write_secrets(self.secrets_base, name, self.secrets)
            extra["BROKER_SECRETS_DIR"] = self._inside(str(self._secret_dir), sandbox.SECRETS_IN_CONTAINER)
            if self._pump is not None:
                self._pump.masker = sandbox.Masker(self.secrets.values())
        if self.scratch_dir:
            Path(self.scratch_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            extra["BROKER_SCRATCH_DIR"] = self._inside(self.scratch_dir, SCRATCH_IN_CONTAINER)
        if self.results_dir:
            Path(self.results_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            extra["BROKER_RESULTS_DIR"] = self._inside(self.results_dir, RESULTS_IN_CONTAINER)
        if self._slot_kind:
            self._lease_network()
        if self._gang_net:
            sandbox.ensure_network(self._gang_net, internal=self._no_egress, env=launch_env(os.environ),
                                   dns=self.world_size > 1)
        return extra

    def _lease_network(self) -> None:
        """Lease the attempt's namespace from the node's pool (a gang mate's lease is shared). A
        one-worker job falls back to its own bridge when the pool fails; a gang cannot (its
        workers would be apart), so its start fails."""
        try:
            self._lease = netpool.default_pool(self.network_subnet).acquire(f"{self.job_id}/{self.attempt}", self._slot_kind)
            self._net = self._lease.network
        except Exception:
            if self.world_size > 1:
                raise
            self._slot_kind, self._net = "", sandbox.gang_network(self.job_id, self.attempt)
            self._gang_net = self._net

    def _cleanup(self) -> None:
        """What lives only as long as the worker: its secret files and scratch (before its end
        is reported; the gang network after it, see `_remove_network`)."""
        sandbox.remove_secrets(self._secret_dir)
        self._secret_dir = None
        if self.scratch_dir:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # the last worker of the attempt out removes it
                os.rmdir(self._scratch_root)

    def _remove_network(self) -> None:
        """The worker's network after its end was reported: a leased namespace goes back to the
        pool; the last worker of the gang out removes a bridge network (podman refuses while
        another container is on it; one that is still being removed gets a second try)."""
        try:
            if self._lease is not None:  # the last holder recycles the namespace for the next attempt
                self._lease.release()
            if self._gang_net:
                env = launch_env(os.environ)
                if not sandbox.remove_network(self._gang_net, env):  # a gang mate still uses it:
                    time.sleep(1.0)  # the last worker out removes it
                    sandbox.remove_network(self._gang_net, env)
        finally:
            self._gone.set()

    def _terminate(self, proc: subprocess.Popen, grace_s: float) -> None:
        if isinstance(proc, handoff.PodProcess):  # no signal reaches the other container: files
            proc.stop(grace_s)
            return
        if self.runtime == "container":
            name = container_name(self.job_id, self.attempt, self.rank)
            t = max(0, int(round(grace_s)))
            subprocess.run(["podman", "stop", "-t", str(t), name], capture_output=True,
                           timeout=t + 60, check=False)
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:  # podman could not stop it: remove by force
                subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=60,
                               check=False)
                _killpg(proc.pid, signal.SIGKILL)
            return
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)


def _feed(fd: int, payload: bytes) -> None:
    """Write the env file into the pipe podman reads (it may be larger than a pipe buffer)
    and close it; a podman that exited before reading it is not an error here."""
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass
    finally:
        os.close(fd)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

