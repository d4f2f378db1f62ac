"""`broker up`: the whole broker on one machine with embedded defaults.

What it starts, in order: the database (SQLite in the data dir unless BROKER_DATABASE_URL says
otherwise; migrations applied), the demo region on an empty DB, the platform-admin token, a
local Ray head (or a small local multi-node cluster with `--nodes`) with Ray token authentication
(token in <data dir>/ray-auth-token) and, for the one-node head, every Ray port on 127.0.0.1, the API with the
scheduling loop, and one node agent per local Ray node, and with `BROKER_SERVICE_PROXY_WORKERS=N` the
service entry point's N worker processes on their own port (`broker.entry`). Ctrl-C (or SIGTERM) stops them in
reverse order: the API and the loop, every running attempt (containers stopped, runner actors
and placement groups released), the agents, then Ray. Nothing is left behind.

Crash-safe (`broker.cli.embedded`): one `broker up` per data dir (a lock), and after a crash
(`kill -9`, power loss of the broker process only) the next `broker up` reconnects to the head
and agents that kept running and re-adopts the running jobs; if the head died too, it ends every
orphan of the previous run before starting anew.

`runtime: process` jobs are host code execution as this user. With the API on loopback (the
default) `broker up` allows them for the demo projects it seeds (development and demos on one
machine); any other project needs a platform-admin to enable it, and a production deployment
leaves BROKER_ALLOW_PROCESS_RUNTIME off so that no project can.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
import uvicorn
from sqlmodel import Session

from broker.cli.embedded import DataDirBusy, DataDirLock, Embedded, Proc
from broker.db import make_engine, migrate
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.services.secrets import ensure_key_file
from broker.settings import Settings
from broker.services.bootstrap import issue_agent_token

log = logging.getLogger("broker.up")


def up(
    port: int = typer.Option(8000, metavar="PORT", help="API port"),
    host: str = typer.Option("127.0.0.1", metavar="ADDRESS", help="API bind address"),
    data_dir: Path = typer.Option(Path(".broker"), metavar="DIR", help="database, tokens, logs"),
    gpus: int = typer.Option(0, metavar="N", help="logical GPUs per local Ray node (0: what Ray detects)"),
    nodes: int = typer.Option(2, metavar="N", help="local Ray nodes; pools alternate innovation / operation, so the default "
                                      "two give one node per pool (the machine's GPUs split between them); "
                                      "1: one innovation node"),
    gpu_model: str = typer.Option("", metavar="MODEL", help="GPU model label of the local nodes"),
    demo: bool = typer.Option(True, "--demo/--no-demo", help="seed the demo region on an empty DB"),
    ray_address: Optional[str] = typer.Option(None, metavar="HOST:PORT", help="join this Ray cluster instead of starting one"),
    agent: bool = typer.Option(True, "--agent/--no-agent", help="run a node agent per node"),
    agent_mode: str = typer.Option("auto", metavar="process|ray|auto", help="process (local subprocesses) | ray (one pinned Ray actor per "
                                                  "Ray node) | auto (ray when joining a cluster)"),
    fake_telemetry: int = typer.Option(0, metavar="N", help="agents report N scripted fake GPUs (demos without GPUs)"),
    allow_process: Optional[bool] = typer.Option(
        None, "--allow-process/--no-allow-process",
        help="allow runtime 'process' jobs: unconfined, they run as this user and can read the data dir and "
             "its tokens (default: only when the API listens on loopback, i.e. a one-user machine)"),
) -> None:
    """Start the broker with embedded defaults: SQLite, local Ray, agent, API."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per tick is noise
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a dozen lines per start about migrations
    if allow_process is None:
        allow_process = host in ("127.0.0.1", "localhost", "::1")
    overrides = dict(data_dir=data_dir, port=port, host=host, allow_process_runtime=allow_process)
    note = _container_runtime(overrides, ray_address)
    if note:
        typer.echo(note)
    if ray_address:
        overrides["ray_address"] = ray_address
    settings = Settings(**overrides)
    settings.ensure_data_dir()
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire()
    except DataDirBusy as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    migrate(settings)
    engine = make_engine(settings)
    if demo and settings.seed_demo:
        with Session(engine) as s:
            cpg, mpg = _demo_ratios(gpus, nodes, settings)
            if seed_demo(s, gpu_model=gpu_model, process_runtime=settings.allow_process_runtime,
                         cpus_per_gpu=cpg, memory_gb_per_gpu=mpg):
                typer.echo("seeded the demo region (OUH, SLB, SVS, SHS, Regional IT)")
            s.commit()
    token_path = ensure_admin_token(settings, engine)
    if not settings.secrets_key:
        ensure_key_file(settings.secrets_key_path)  # project secrets are encrypted with it (0600)
    typer.echo(f"platform-admin token: {token_path} (mode 0600)")

    # SIGTERM behaves like Ctrl-C, so a service manager stops us cleanly too (exit 0). Installed
    # again after ray.init, whose driver replaces it with sys.exit(15).
    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)

    cluster = None
    agents: list[tuple[subprocess.Popen, str]] = []
    adopted_agents: list[Proc] = []
    ray_agents: list[str] = []
    executor = None
    kube = None  # cluster mode: the Kubernetes adapter (docs/KUBERNETES.md)
    gpu_indices: dict[str, str] = {}
    state = Embedded()
    entry_workers = None  # the service entry point's worker processes (broker.entry)
    try:
        from broker.adapters.ray.executor import RayExecutor

        address = settings.ray_address
        if address is None:
            visible = None if gpus else split_gpus(physical_gpus(), nodes)
            cluster, adopted_agents = _local_head(settings, gpus=gpus, nodes=nodes, gpu_model=gpu_model,
                                                  visible=visible)
            if visible:
                gpu_indices = dict(zip(cluster.node_names, visible))
            address = cluster.address
            if cluster.pid:
                from broker.adapters.ray.runner import process_start_ticks

                state = Embedded(address, Proc(cluster.pid, process_start_ticks(cluster.pid), "ray-head"),
                                 list(adopted_agents),
                                 [Proc(w, process_start_ticks(w), n) for w, n in
                                  zip(cluster.worker_pids, cluster.node_names[1:])])
                state.save(settings.data_dir)
        executor = RayExecutor(address=address, log_dir=settings.data_dir / "logs",
                               isolation=settings.job_isolation, pids_limit=settings.job_pids_limit,
                               secrets_dir=settings.secrets_tmpfs_dir,
                               network_subnet=settings.job_network_subnet)
        if settings.k8s_enabled:
            from broker.adapters.k8s import connect
            from broker.adapters.k8s.executor import KubeRayExecutor

            kube = connect(settings)
            executor = KubeRayExecutor(executor, kube)
        if adopted_agents:
            typer.echo(f"kept the node agents of the previous run ({', '.join(a.name for a in adopted_agents)})")
        elif agent:
            if agent_mode == "ray" or (agent_mode == "auto" and cluster is None):
                from broker.adapters.ray.node_agents import start_node_agents

                extra = ["--fake-gpus", str(fake_telemetry)] if fake_telemetry else []
                ray_agents = start_node_agents(executor.nodes(), broker_url=f"http://{settings.host}:{settings.port}",
                                               token_for=lambda nid: issue_agent_token(engine, nid), extra_args=extra)
                typer.echo(f"node agents as Ray actors on {', '.join(ray_agents)}")
            else:
                agents = _start_agents(settings, engine, [o.id for o in executor.nodes()], fake_telemetry,
                                       gpu_indices)
                if state.head is not None:
                    from broker.adapters.ray.runner import process_start_ticks

                    state.agents = [Proc(p.pid, process_start_ticks(p.pid), name) for p, name in agents]
                    state.save(settings.data_dir)

        from broker.app import create_app

        if settings.service_proxy_workers > 0:  # before the API: a taken port fails the start here
            from broker.entry import EntryWorkers

            entry_workers = EntryWorkers(settings)
            entry_workers.start()
            typer.echo(f"service entry points: {entry_workers.n} worker processes on "
                       f"{host}:{entry_workers.port} (pids {', '.join(map(str, entry_workers.pids))})")
        api = create_app(settings, executor=executor, engine=engine, cluster=kube,
                         service_limiter=entry_workers.limiter if entry_workers else None,
                         service_metrics=entry_workers.samples if entry_workers else None)
        signal.signal(signal.SIGTERM, on_sigterm)
        typer.echo(_ready_lines(host, port, token_path))
        uvicorn.run(api, host=host, port=port, log_level=settings.log_level, lifespan="on", access_log=False)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping ...")
        if entry_workers is not None:  # first: no request reaches a replica that is being stopped
            entry_workers.stop()
        if executor is not None and cluster is not None:
            _stop_attempts(executor, settings.grace_period_s)
        for p, _ in agents:
            _terminate(p)
        if adopted_agents:
            from broker.adapters.ray.local import group_leader_alive, stop_group

            for a in adopted_agents:
                if group_leader_alive(a.pgid, a.start_ticks):
                    stop_group(a.pgid)
        if ray_agents and cluster is not None:  # agents on an external cluster outlive us by design
            from broker.adapters.ray.node_agents import stop_node_agents

            stop_node_agents(ray_agents)
        if kube is not None:
            kube.stop()
        if executor is not None:
            try:
                executor.shutdown()
            except Exception as e:  # stopping anyway: Ray and the nodes are stopped below
                log.warning("executor shutdown: %s", e)
        if cluster is not None:
            cluster.stop()
            Embedded.forget(settings.data_dir)  # a clean stop leaves nothing to take over
        engine.dispose()
        lock.release()
        typer.echo("stopped")


def _container_runtime(overrides: dict, ray_address: str | None) -> str:
    """Container jobs need podman on the nodes. The local nodes are this machine: without podman
    they run process jobs only, and container jobs are refused at submit (422) rather than failing
    when they start. Sets the override and returns the note to print (empty when podman is here
    or the nodes are a cluster's, whose runtime the broker cannot see from here)."""
    if ray_address is not None or shutil.which("podman") is not None:
        return ""
    overrides["container_runtime_available"] = False
    return ("note: podman was not found: the local nodes run 'runtime: process' jobs only, and container jobs "
            "are refused at submit (install podman, e.g. `make run` does on Debian, and restart)")


def _ready_lines(host: str, port: int, token_path) -> str:
    """Where everything is and how to log in. The token itself is never printed (terminals and
    service logs keep it): the dashboard takes it pasted into its login form, or in the URL
    fragment, which browsers never send to the server."""
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    return (f"API        {base}   docs {base}/docs, {base}/redoc\n"
            f"dashboard  {base}/dashboard   log in: paste the token from {token_path}\n"
            f"           or open {base}/dashboard#token=$(cat {token_path})\n"
            f"CLI        export BROKER_TOKEN=$(cat {token_path}); broker overview\n"
            "Ctrl-C stops everything")


def _local_head(settings: Settings, *, gpus: int, nodes: int, gpu_model: str, visible: list[str | None] | None):
    """The local Ray cluster: the previous run's one-node head when it survived a crash of
    the broker (with its agents), else a new one after ending the previous run's orphans.
    Returns (cluster, adopted agents)."""
    from broker.adapters.ray.local import (adopt_head, enable_local_only, enable_token_auth, group_leader_alive,
                                           kill_orphans, start_local_cluster, stop_group)

    # Ray stays behind the broker: token authentication always, and the one-node head
    # listens on 127.0.0.1 only (docs/SECURITY.md).
    ray_token = settings.data_dir / "ray-auth-token"
    prev = Embedded.load(settings.data_dir)
    if prev is not None and prev.head is not None and len(prev.workers) == nodes - 1:
        enable_token_auth(ray_token)
        enable_local_only()
        cluster = adopt_head(prev.head_address, prev.head.pgid, prev.head.start_ticks,
                             [(w.pgid, w.start_ticks) for w in prev.workers])
        if cluster is not None:
            agents = [a for a in prev.agents if group_leader_alive(a.pgid, a.start_ticks)]
            typer.echo(f"reconnected to the running Ray head of the previous run at {cluster.address} "
                       f"(pid {cluster.pid}); running jobs are re-adopted")
            return cluster, agents
    if prev is not None:
        for p in prev.workers + ([prev.head] if prev.head else []) + prev.agents:
            if group_leader_alive(p.pgid, p.start_ticks):
                stop_group(p.pgid)
        ended = kill_orphans(settings.data_dir / "logs", settings.secrets_tmpfs_dir)
        typer.echo(f"the previous run's Ray head is gone: ended its remains"
                   f"{' and ' + str(len(ended)) + ' orphaned worker(s)' if ended else ''}; starting anew")
        Embedded.forget(settings.data_dir)
    pools = ("innovation", "operation") if nodes > 1 else ("innovation",)
    env = {"CONTAINERS_CONF": os.environ["CONTAINERS_CONF"]} if os.environ.get("CONTAINERS_CONF") else {}
    cluster = start_local_cluster(gpus=gpus, nodes=nodes, pools=pools, gpu_model=gpu_model, env=env,
                                  log_file=settings.data_dir / "ray.log", auth_token_file=ray_token,
                                  loopback_only=True, shim_dir=settings.data_dir / "lib", processes=True,
                                  visible_gpus=visible)
    typer.echo(f"local Ray at {cluster.address} with nodes {', '.join(cluster.node_names)}; token authentication "
               f"on ({ray_token}), ports on 127.0.0.1 only")
    return cluster, []


def _demo_ratios(gpus: int, nodes: int, settings: Settings) -> tuple[float, float]:
    """CPUs and memory per GPU of what `broker up` will start (or of this machine when it joins
    a cluster): the demo's CPU and memory quotas follow its GPU quotas in that proportion."""
    import psutil

    from broker.services.bootstrap import demo_ratios

    local = settings.ray_address is None
    n = max(1, nodes) if local else 1
    total_gpus = gpus * n if gpus else physical_gpus()
    cpus = max(1, (os.cpu_count() or 1) // n) * n if local and n > 1 else (os.cpu_count() or 1)
    return demo_ratios(total_gpus, cpus, psutil.virtual_memory().total / 2**30)


def physical_gpus() -> int:
    """The NVIDIA GPUs this machine has (0 without a driver)."""
    from agents.nvml import gpu_count

    return gpu_count()


def split_gpus(count: int, nodes: int) -> list[str | None] | None:
    """CUDA_VISIBLE_DEVICES per local node: the machine's GPUs in contiguous slices, the first
    nodes taking one more when they do not divide evenly (None: no GPUs, nothing to split)."""
    if count <= 0 or nodes <= 1:
        return None
    out, start = [], 0
    for i in range(nodes):
        n = count // nodes + (1 if i < count % nodes else 0)
        out.append(",".join(str(g) for g in range(start, start + n)))
        start += n
    return out


def _start_agents(settings: Settings, engine, node_ids: list[str], fake_gpus: int,
                  gpu_indices: dict[str, str] | None = None) -> list[tuple[subprocess.Popen, str]]:
    """One agent process per local node, each with its own agent token (scoped to its node)
    and, where the machine's GPUs are split between the nodes, reading only its node's GPUs."""
    procs = []
    agent_bin = Path(sys.executable).with_name("broker-agent")
    for nid in node_ids:
        plaintext = issue_agent_token(engine, nid)
        tok = settings.data_dir / f"agent-token-{nid}"
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(plaintext + "\n")
        argv = [str(agent_bin) if agent_bin.exists() else "broker-agent",
                "--broker-url", f"http://{settings.host}:{settings.port}", "--token-file", str(tok),
                "--node-id", nid, "--buffer-dir", str(settings.data_dir / f"agent-buffer-{nid}")]
        if fake_gpus:
            argv += ["--fake-gpus", str(fake_gpus)]
        elif gpu_indices and nid in gpu_indices:
            argv += ["--gpu-indices", gpu_indices[nid]]
        logf = open(settings.data_dir / f"agent-{nid}.log", "ab")
        procs.append((subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True), nid))
        logf.close()
    return procs


def _stop_attempts(executor, grace_s: float) -> None:
    """Stop every attempt this local cluster runs: it dies with the cluster anyway, and its
    containers must not outlive it. The jobs are found LOST (and requeued) on the next start."""
    try:
        held = list(executor.attempts())
    except Exception:
        return
    for job_id, attempt in held:
        try:
            executor.stop(job_id, attempt, min(grace_s, 10.0), "broker shutting down", "shutdown")
        except Exception as e:  # one failed stop must not keep the others running
            log.warning("stopping %s/%s at shutdown: %s", job_id, attempt, e)
    for job_id, attempt in held:
        try:
            executor.release(job_id, attempt)
        except Exception as e:
            log.warning("releasing %s/%s at shutdown: %s", job_id, attempt, e)


def _terminate(p: subprocess.Popen) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=5)
    except Exception:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except Exception:
            pass
