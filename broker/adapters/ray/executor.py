"""RayExecutor: the `broker.ports.Executor` on a Ray cluster.

Ray places and runs processes; the broker decides what runs where. So this adapter does not
let Ray choose nodes: each attempt gets one placement group (named `cb-<job>-a<attempt>`,
detached) with one bundle per worker, `{"GPU": g, "CPU": c}`, and every bundle carries a
*bundle label selector* that pins it to the node the scheduler chose:

- `{"broker.io/node": <name>}` for nodes started with that label (what `broker up`, the test
  cluster and the KubeRay manifests set), otherwise
- `{"ray.io/node-id": <hex>}`, the label Ray itself puts on every node. (We do not fall back to
  the `node:<ip>` resource: several raylets can share one IP, as in local multi-node clusters.)

Node labels read by `nodes()` (set with `ray start --labels k=v,...`, or `rayStartParams.labels`
/ the pod's labels in KubeRay): `broker.io/node` (stable node name; default: the Ray node id),
`broker.io/pool` (default "innovation"), `broker.io/gpu-model` (default "generic" on nodes with
GPUs, "" without). No custom resources are needed.

Each worker runs in a detached runner actor (see runner): either a fresh one named
`job-<job>-a<attempt>-r<rank>`, scheduled into its bundle with `num_gpus=g` so Ray assigns the
GPU ids, or - the fast path - an idle spare from the per-node warm pool (see warm) that
adopts the worker; then the rank -> runner map is kept in Ray's GCS key-value store. Detached
actors, placement groups and that map outlive the broker's driver: a new RayExecutor (a
restarted broker) re-adopts running attempts through `attempts()` and `status()`. This object
keeps only caches (actor handles, names, the last status seen).

Ends are told at once (`set_on_end`, ports.EndNotifier): each runner answers an outstanding
`wait_ended` call when its worker is done (a dead runner answers with an error: a lost worker),
one thread waits on those answers and calls the hook once per ended worker, so the scheduling
loop looks as soon as GPUs are free instead of at its next interval.

Invariants: `launch` is idempotent per (job_id, attempt) (a second launch finds the named
placement group and does nothing); no method blocks on a runner for longer than `call_timeout_s`, except
`release` (bounded by `release_timeout_s`); `shutdown` never kills runners.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import ray
from ray import cloudpickle
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from broker import jobenv
from broker.adapters.ray import runner as ray_runner
from broker.adapters.ray import handoff, netpool, sandbox
from broker.adapters.ray.runner import (NAME_RE, PG_NAME_RE, WorkerRunner, actor_name,
                                        log_path, log_state_path, pg_name)
from broker.adapters.ray.warm import WarmPool, del_names, get_names, put_names
from broker.ports import AttemptStatus, LaunchSpec, NodeObservation, WorkerState, WorkerStatus
from scheduler.model import Resources

NODE_LABEL = "broker.io/node"
POOL_LABEL = "broker.io/pool"
GPU_MODEL_LABEL = "broker.io/gpu-model"
RAY_NODE_ID_LABEL = "ray.io/node-id"
DEFAULT_POOL = "innovation"
GIB = float(1 << 30)
_MIN_CPU = 0.01  # Ray refuses empty bundles: a 0-CPU 0-GPU worker reserves a sliver of CPU
END_WAIT_S = 60.0  # one `wait_ended` call's wait; the watcher asks again while the worker runs
log = logging.getLogger("broker.ray")

# Runner code travels by value, so Ray nodes need Ray but not the broker package.
cloudpickle.register_pickle_by_value(ray_runner)
cloudpickle.register_pickle_by_value(jobenv)
cloudpickle.register_pickle_by_value(sandbox)
cloudpickle.register_pickle_by_value(netpool)
cloudpickle.register_pickle_by_value(handoff)


class ExecutorError(RuntimeError):
    """A launch the executor cannot carry out (e.g. a node it does not know)."""


class RayExecutor:
    def __init__(self, address: str | None = None, log_dir: str | os.PathLike = ".broker/logs",
                 namespace: str = "compute-broker", *, gpu_devices: str = "auto",
                 network: str = "host", call_timeout_s: float = 2.0,
                 release_timeout_s: float = 15.0, runner_concurrency: int = 8,
                 warm_runners: int = 2, init_kwargs: dict[str, Any] | None = None,
                 isolation: bool = True, pids_limit: int = 4096, secrets_dir: str = "/dev/shm",
                 network_subnet: str = netpool.DEFAULT_SUBNET) -> None:
        """Connect to Ray (`address`: None starts an in-process local Ray, "auto" or
        "host:port" joins a running cluster, "ray://..." uses Ray Client).

        `log_dir` must be an absolute-able path that exists (or can be created) on every
        node; runners write `<log_dir>/<job>/<attempt>/worker-<rank>.log` on their node.
        `gpu_devices`: "auto" passes `--device nvidia.com/gpu=N` only where a CDI spec exists,
        "on"/"off" force it. `warm_runners`: idle spare runners kept per node for the fast
        dispatch path (see warm; 0 turns the pool off: every worker gets a fresh runner
        inside its bundle and Ray's GPU ids). `isolation`: containers get their own network
        namespace, no capabilities, a read-only root and the admitted limits (see sandbox);
        False keeps `network` (default: the host's) and no limits. `secrets_dir`: a tmpfs on
        every node where runners write secret files. `network_subnet`: the addresses of the
        pooled job namespaces on every node (see netpool).
        """
        self.namespace = namespace
        self.log_dir = str(Path(log_dir).resolve())
        self.gpu_devices, self.network = gpu_devices, network
        self.isolation, self.pids_limit, self.secrets_dir = isolation, pids_limit, str(secrets_dir)
        self.network_subnet = network_subnet
        self.call_timeout_s, self.release_timeout_s = call_timeout_s, release_timeout_s
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            kwargs = {"log_to_driver": False, "logging_level": "warning"}
            kwargs.update(init_kwargs or {})
            ray.init(address=address, namespace=namespace, **kwargs)
        self._runner_cls = ray.remote(max_concurrency=runner_concurrency)(WorkerRunner)
        self._lock = threading.Lock()
        self._handles: dict[str, Any] = {}
        self._last: dict[str, WorkerStatus] = {}
        self._names_cache: dict[tuple[str, int], dict[int, str]] = {}
        # the attempt-end hook (ports.EndNotifier): one outstanding `wait_ended` call per
        # worker, watched by one thread (`_watch_ends`), started by `set_on_end`
        self._on_end: Callable[[str, int], None] | None = None
        self._ends: dict[Any, tuple[str, int, str]] = {}  # wait_ended ref -> (job, attempt, runner)
        self._watched: set[str] = set()  # runner names with a call outstanding, or that ended
        self._watcher: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self._pool = None
        if warm_runners > 0:
            self._pool = WarmPool(self._runner_cls, per_node=warm_runners, namespace=namespace,
                                  runner_args=self._runner_args)
            self._start_pool()

    # --- inventory ---------------------------------------------------------------------

    def nodes(self) -> Sequence[NodeObservation]:
        """Ray's nodes, alive first; nodes that offer neither CPU nor GPU (a `num-cpus=0`
        head) are not nodes to schedule on and are left out."""
        seen: dict[str, NodeObservation] = {}
        for n in sorted(ray.nodes(), key=lambda n: not n.get("Alive", False)):
            obs = node_observation(n)
            if obs is None or obs.id in seen:
                continue
            seen[obs.id] = obs
        return list(seen.values())

    # --- lifecycle ---------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> None:
        """Reserve the gang (placement group pinned per bundle) and create its runners.

        Returns once both are *requested*: the placement group and the actors come up
        asynchronously, and `status()` says STARTING until the process runs."""
        if not spec.workers:
            raise ExecutorError("a launch needs at least one worker")
        by_name = {o.id: o for o in self.nodes()}
        selectors = []
        for w in spec.workers:
            node = by_name.get(w.node)
            if node is None or not node.alive:
                raise ExecutorError(f"node {w.node!r} is not an alive Ray node")
            if NODE_LABEL in node.labels:
                selectors.append({NODE_LABEL: node.id})
            else:
                selectors.append({RAY_NODE_ID_LABEL: node.labels[RAY_NODE_ID_LABEL]})
        if self._find_pg(spec.job_id, spec.attempt) is not None:
            return  # launched before (by us or by the broker before a restart)
        bundles = [_bundle(w.gpus, w.cpus) for w in spec.workers]
        pg = placement_group(bundles, strategy="PACK", name=pg_name(spec.job_id, spec.attempt),
                             lifetime="detached", bundle_label_selector=selectors)
        names: dict[int, str] = {}
        adoptions: list[tuple[Any, dict]] = []
        master = None
        for w in sorted(spec.workers, key=lambda w: w.rank):
            job = dict(job_id=spec.job_id, attempt=spec.attempt, rank=w.rank,
                       world_size=len(spec.workers), image=spec.image, command=list(spec.command),
                       env=dict(spec.env), runtime=spec.runtime, max_runtime_s=spec.max_runtime_s,
                       grace_s=spec.grace_s, master=master, log_dir=self.log_dir,
                       checkpoint_dir=spec.checkpoint_dir, log_max_bytes=spec.log_max_bytes,
                       secrets=dict(spec.secrets), mounts=[list(m) for m in spec.mounts],
                       scratch_dir=spec.scratch_dir, results_dir=spec.results_dir, memory_gb=w.memory_gb,
                       cpus=w.cpus, no_egress=spec.no_egress, isolation=self.isolation,
                       gang_local=len({x.node for x in spec.workers}) == 1,
                       publish=[list(p) for p in spec.publish])
            has_ids = len(w.gpu_indices) == w.gpus
            if self._pool is not None and has_ids:
                job["gpu_ids"] = list(w.gpu_indices)  # one source of GPU ids per node (warm)
            spare = self._pool.take(w.node) if self._pool is not None and has_ids else None
            if spare is not None:
                name, handle = spare
                adoptions.append((handle, {**job, "pg": pg}))
            else:
                name = actor_name(spec.job_id, spec.attempt, w.rank)
                bundle = _bundle(w.gpus, w.cpus)
                handle = self._runner_cls.options(
                    name=name, namespace=self.namespace, lifetime="detached", get_if_exists=True,
                    num_gpus=bundle.get("GPU", 0), num_cpus=bundle.get("CPU", 0),
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        pg, placement_group_bundle_index=w.rank),
                ).remote(**self._runner_args(w.node), job=job)
            if w.rank == 0:
                master = handle
            names[w.rank] = name
            with self._lock:
                self._handles[name] = handle
        with self._lock:
            self._names_cache[(spec.job_id, spec.attempt)] = names
        self._arm(spec.job_id, spec.attempt, names)
        if adoptions:
            put_names(self.namespace, spec.job_id, spec.attempt, names)  # before they start
            for handle, job in adoptions:
                handle.adopt.remote(job)
            used = {w.node for w in spec.workers}
            self._pool.refill({n: by_name[n].labels[RAY_NODE_ID_LABEL] for n in used})

    def status(self, job_id: str, attempt: int) -> AttemptStatus:
        names = self._names(job_id, attempt)
        if not names:
            return AttemptStatus(job_id, attempt, (), exists=False)
        self._arm(job_id, attempt, names)  # an attempt this process did not launch (re-adopted)
        asked: dict[int, Any] = {}
        workers: dict[int, WorkerStatus] = {}
        for rank, name in sorted(names.items()):
            handle = self._handle(name)
            if handle is None:
                workers[rank] = self._lost(name, rank, "runner actor is gone")
                continue
            state = _actor_state(handle)
            if state == "DEAD":
                workers[rank] = self._lost(name, rank, "runner actor died (node lost?)")
            elif state in ("ALIVE", None):
                asked[rank] = handle.status.remote()
            else:  # waiting for its placement group bundle / worker process
                workers[rank] = self._last.get(name) or WorkerStatus(rank, WorkerState.STARTING)
        if asked:
            ray.wait(list(asked.values()), num_returns=len(asked), timeout=self.call_timeout_s)
        for rank, ref in asked.items():
            name = names[rank]
            try:
                ws = _worker_status(ray.get(ref, timeout=0), rank)
            except GetTimeoutError:
                ws = self._last.get(name) or WorkerStatus(rank, WorkerState.STARTING,
                                                          message="runner not responding")
            except RayActorError:
                ws = self._lost(name, rank, "runner actor died (node lost?)")
            workers[rank] = ws
            self._last[name] = ws
        return AttemptStatus(job_id, attempt, tuple(workers[r] for r in sorted(workers)))

    def stop(self, job_id: str, attempt: int, grace_s: float, message: str = "",
             reason: str = "stopped") -> None:
        for name in self._names(job_id, attempt).values():
            handle = self._handle(name)
            if handle is not None:
                handle.stop.remote(grace_s, message, reason)

    def release(self, job_id: str, attempt: int) -> None:
        """Kill what still runs, then the runners, then the placement group."""
        handles = []
        self._disarm(self._names(job_id, attempt).values())
        for name in self._names(job_id, attempt).values():
            handle = self._handle(name)
            if handle is not None:
                handles.append(handle)
            with self._lock:
                self._handles.pop(name, None)
                self._last.pop(name, None)
        refs = [h.terminate.remote() for h in handles if _actor_state(h) in ("ALIVE", None)]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=self.release_timeout_s)
        for h in handles:
            try:
                ray.kill(h, no_restart=True)
            except (ValueError, RayActorError):
                pass
        pg = self._find_pg(job_id, attempt)
        if pg is not None:
            remove_placement_group(pg)
        del_names(self.namespace, job_id, attempt)
        with self._lock:
            self._names_cache.pop((job_id, attempt), None)

    # --- the attempt-end hook ------------------------------------------------------------

    def set_on_end(self, on_end: Callable[[str, int], None] | None) -> None:
        """Call `on_end(job_id, attempt)` as soon as a worker of an attempt ends (ports.
        EndNotifier): each worker's runner answers a `wait_ended` call when its process is done,
        and one thread waits on those answers. A runner that dies answers with an error: that
        is an end too (a lost worker). Attempts launched before (a re-adopting broker) are
        watched from their first `status()`."""
        with self._lock:
            self._on_end = on_end
            start = on_end is not None and self._watcher is None
            if start:
                self._stop_watch.clear()
                self._watcher = threading.Thread(target=self._watch_ends, name="ray-ends", daemon=True)
        if start:
            self._watcher.start()

    def _arm(self, job_id: str, attempt: int, names: Mapping[int, str]) -> None:
        """One outstanding `wait_ended` per runner of the attempt (no-op without a hook)."""
        if self._on_end is None:
            return
        for name in names.values():
            with self._lock:
                if name in self._watched:
                    continue
            handle = self._handle(name)
            if handle is None:
                continue
            ref = handle.wait_ended.remote(END_WAIT_S)
            with self._lock:
                self._watched.add(name)
                self._ends[ref] = (job_id, attempt, name)

    def _watch_ends(self) -> None:
        while not self._stop_watch.is_set():
            with self._lock:
                refs = list(self._ends)
            if not refs:
                self._stop_watch.wait(0.2)
                continue
            try:
                ready, rest = ray.wait(refs, num_returns=1, timeout=1.0)
                if ready and rest:  # a burst: take every answer already there
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
            except Exception:  # noqa: BLE001 - Ray going away (shutdown): stop quietly
                if self._stop_watch.wait(1.0):
                    return
                continue
            for ref in ready:
                with self._lock:
                    key = self._ends.pop(ref, None)
                if key is None:
                    continue
                job_id, attempt, name = key
                try:
                    ended = bool(ray.get(ref, timeout=0))
                except Exception:  # noqa: BLE001 - the runner died: its worker is gone
                    ended = True
                with self._lock:
                    hook = self._on_end
                    if not ended:  # asked again below; an ended runner is never asked again
                        self._watched.discard(name)
                if ended and hook is not None:
                    try:
                        hook(job_id, attempt)
                    except Exception:  # noqa: BLE001 - a hint only; never stop the watcher
                        log.exception("attempt-end hook failed for %s/%s", job_id, attempt)
                elif not ended:
                    self._arm(job_id, attempt, {0: name})  # still running: ask again

    def _disarm(self, names: Iterable[str]) -> None:
        gone = set(names)
        with self._lock:
            for ref in [r for r, key in self._ends.items() if key[2] in gone]:
                del self._ends[ref]
            self._watched -= gone

    def attempts(self) -> Sequence[tuple[str, int]]:
        found = set()
        for name in ray.util.list_named_actors(all_namespaces=False):
            m = NAME_RE.match(name)
            if m:
                found.add((m["job"], int(m["attempt"])))
        for info in ray.util.placement_group_table().values():
            m = PG_NAME_RE.match(info.get("name") or "")
            if m and info.get("state") != "REMOVED":
                found.add((m["job"], int(m["attempt"])))
        return sorted(found)

    def read_log(self, job_id: str, attempt: int, rank: int, offset: int = 0,
                 max_bytes: int = 1 << 20) -> bytes:
        """From the shared/local log file when this host has it, else through the runner."""
        path = log_path(self.log_dir, job_id, attempt, rank)
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        name = self._names(job_id, attempt).get(rank)
        handle = self._handle(name) if name else None
        if handle is None:
            return b""
        try:
            return ray.get(handle.read_log.remote(offset, max_bytes), timeout=10)
        except (GetTimeoutError, RayActorError):
            return b""

    def log_info(self, job_id: str, attempt: int, rank: int) -> dict[str, Any] | None:
        """Whether a worker's log was capped or its writing failed (the runner's `LogPump.stats()`):
        from the state file beside a local log, else from a live runner; None when unknown
        (a log that was never capped has no state file)."""
        path = log_path(self.log_dir, job_id, attempt, rank)
        if path.exists():
            try:
                return json.loads(log_state_path(path).read_text())
            except (OSError, ValueError):
                return None
        name = self._names(job_id, attempt).get(rank)
        handle = self._handle(name) if name else None
        if handle is None:
            return None
        try:
            return ray.get(handle.log_info.remote(), timeout=self.call_timeout_s)
        except (GetTimeoutError, RayActorError):
            return None

    def shutdown(self) -> None:
        """Disconnect from Ray. Detached runners and placement groups keep running."""
        self._stop_watch.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(5.0)
        with self._lock:
            self._handles.clear()
            self._ends.clear()
            self._watched.clear()
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()

    # --- helpers -----------------------------------------------------------------------

    def _runner_args(self, node: str) -> dict[str, Any]:
        return dict(node=node, log_dir=self.log_dir, namespace=self.namespace,
                    gpu_devices=self.gpu_devices, network=self.network, isolation=self.isolation,
                    pids_limit=self.pids_limit, secrets_dir=self.secrets_dir, network_subnet=self.network_subnet)

    def _start_pool(self) -> None:
        try:
            self._pool.adopt_existing()
            self._pool.refill({o.id: o.labels[RAY_NODE_ID_LABEL] for o in self.nodes() if o.alive})
        except Exception:  # noqa: BLE001 - no pool means the cold path; never fatal
            pass

    def _names(self, job_id: str, attempt: int) -> dict[int, str]:
        """rank -> runner actor name: launched by us (cache), warm runners of any broker (GCS
        KV), one default name per bundle, or whatever named runners are left; {} if none."""
        with self._lock:
            cached = self._names_cache.get((job_id, attempt))
        if cached is not None:
            return cached
        names = get_names(self.namespace, job_id, attempt)
        if names:
            return names
        pg_info = self._pg_info(job_id, attempt)
        ranks = (range(len(pg_info.get("bundles", {}))) if pg_info is not None
                 else self._ranks(job_id, attempt))
        return {r: actor_name(job_id, attempt, r) for r in ranks}

    def _handle(self, name: str) -> Any | None:
        with self._lock:
            handle = self._handles.get(name)
        if handle is not None:
            return handle
        try:
            handle = ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return None
        with self._lock:
            self._handles[name] = handle
        return handle

    def _ranks(self, job_id: str, attempt: int) -> list[int]:
        prefix = actor_name(job_id, attempt, 0)[:-1]
        return sorted(int(n[len(prefix):]) for n in ray.util.list_named_actors()
                      if n.startswith(prefix) and n[len(prefix):].isdigit())

    def _lost(self, name: str, rank: int, message: str) -> WorkerStatus:
        last = self._last.get(name)
        if last is not None and last.state is WorkerState.EXITED:
            return last  # it ended before the actor went away: keep how it ended
        return WorkerStatus(rank, WorkerState.LOST, node=last.node if last else "",
                            started_at=last.started_at if last else None, message=message)

    def _find_pg(self, job_id: str, attempt: int):
        try:
            return ray.util.get_placement_group(pg_name(job_id, attempt))
        except ValueError:
            return None

    def _pg_info(self, job_id: str, attempt: int) -> dict | None:
        pg = self._find_pg(job_id, attempt)
        if pg is None:
            return None
        info = ray.util.placement_group_table(pg)
        return info if info and info.get("state") != "REMOVED" else None


def node_observation(n: dict[str, Any]) -> NodeObservation | None:
    """One `ray.nodes()` entry as the broker sees it (None: a node with nothing to offer)."""
    labels = dict(n.get("Labels") or {})
    res = n.get("Resources") or {}
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 0.0))
    alive = bool(n.get("Alive", False))
    if alive and gpus == 0 and cpus == 0:
        return None
    node_hex = n.get("NodeID", "")
    labels.setdefault(RAY_NODE_ID_LABEL, node_hex)
    return NodeObservation(
        id=labels.get(NODE_LABEL) or node_hex,
        hostname=n.get("NodeManagerHostname", ""),
        address=n.get("NodeManagerAddress", ""),
        pool=labels.get(POOL_LABEL) or DEFAULT_POOL,
        gpu_model=labels.get(GPU_MODEL_LABEL) or ("generic" if gpus else ""),
        capacity=Resources(gpus=gpus, cpus=cpus,
                           memory_gb=round(float(res.get("memory", 0.0)) / GIB, 1)),
        alive=alive,
        labels=labels,
    )


def _bundle(gpus: int, cpus: float) -> dict[str, float]:
    """A worker's bundle; never empty (Ray refuses empty bundles)."""
    bundle: dict[str, float] = {}
    if gpus:
        bundle["GPU"] = float(gpus)
    if cpus > 0 or not gpus:
        bundle["CPU"] = float(cpus) if cpus > 0 else _MIN_CPU
    return bundle


def _actor_state(handle: Any) -> str | None:
    """GCS actor state (ALIVE, PENDING_CREATION, DEAD, ...); None where it cannot be read
    (e.g. Ray Client)."""
    try:
        info = ray._private.state.state.actor_table(handle._actor_id.hex())
    except Exception:  # noqa: BLE001 - private API: degrade to asking the actor
        return None
    return info.get("State") if info else None


def _worker_status(d: dict[str, Any], rank: int) -> WorkerStatus:
    return WorkerStatus(rank=rank, state=WorkerState(d["state"]), node=d.get("node", ""),
                        exit_code=d.get("exit_code"), started_at=d.get("started_at"),
                        ended_at=d.get("ended_at"),
                        cuda_visible_devices=d.get("cuda_visible_devices", ""),
                        message=d.get("message", ""))
