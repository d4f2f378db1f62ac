"""A warm pool of idle runner actors per node: the fast dispatch path.

Why: creating a runner actor makes Ray start a fresh Python worker process (about 0.3 s on an
idle machine, several seconds on a busy one); that, not placement or podman, dominates
submit -> process running. A spare runner is that process started ahead of time: idle,
detached, named `spare-<node>-<hex>`, pinned to its node (hard node affinity), holding no Ray
resources (num_cpus=0, num_gpus=0). `launch` hands a worker to a spare (`adopt`); the
attempt's placement group still reserves the worker's GPUs and CPUs, and the spare starts the
process only once that group is placed. A spare takes one worker in its life (it dies with
the attempt's release); `launch` refills the pool right after handing spares out.

GPU ids on the warm path come from the scheduler's placement (`WorkerLaunch.gpu_indices`),
because a runner outside the bundle gets no GPU ids from Ray. So that warm and cold runners
never disagree on a node, the executor uses the scheduler's indices for *every* worker that
has them while the pool is on, and Ray's ids only for workers launched without indices.
That holds while the broker is the only one placing GPU work on these Ray nodes (as it is:
Ray's APIs are never exposed to users).

Which spare serves which rank is written to Ray's GCS key-value store
(`cb:<job>:<attempt>` -> {rank: actor name}, in the executor's namespace), so a restarted
broker re-adopts warm attempts exactly like cold ones.

Invariant: a spare is handed out at most once (taken under the lock, removed from the pool).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any, Callable

import ray
from ray.experimental import internal_kv
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

SPARE_PREFIX = "spare-"


def kv_key(job_id: str, attempt: int) -> str:
    return f"cb:{job_id}:{attempt}"


def put_names(namespace: str, job_id: str, attempt: int, names: dict[int, str]) -> None:
    internal_kv._internal_kv_put(kv_key(job_id, attempt), json.dumps(names), namespace=namespace)


def get_names(namespace: str, job_id: str, attempt: int) -> dict[int, str] | None:
    raw = internal_kv._internal_kv_get(kv_key(job_id, attempt), namespace=namespace)
    return {int(k): v for k, v in json.loads(raw).items()} if raw else None


def del_names(namespace: str, job_id: str, attempt: int) -> None:
    internal_kv._internal_kv_del(kv_key(job_id, attempt), namespace=namespace)


class WarmPool:
    def __init__(self, runner_cls: Any, *, per_node: int, namespace: str,
                 runner_args: Callable[[str], dict[str, Any]]) -> None:
        """`runner_args(node)` gives the WorkerRunner constructor kwargs for a node."""
        self.runner_cls, self.per_node, self.namespace = runner_cls, per_node, namespace
        self.runner_args = runner_args
        self._lock = threading.Lock()
        self._spares: dict[str, list[tuple[str, Any]]] = {}

    def take(self, node: str) -> tuple[str, Any] | None:
        """An idle spare on `node`, removed from the pool; None when there is none."""
        with self._lock:
            spares = self._spares.get(node) or []
            return spares.pop(0) if spares else None

    def refill(self, nodes: dict[str, str]) -> None:
        """Top every given node (name -> Ray node id) up to `per_node` spares. Cheap: Ray
        creates the actors asynchronously; done inline (not in a thread) so that nothing
        calls Ray while the executor disconnects."""
        self._refill(dict(nodes))

    def adopt_existing(self, timeout_s: float = 2.0) -> None:
        """Take over the idle spares a previous broker left (they are detached)."""
        names = [n for n in ray.util.list_named_actors() if n.startswith(SPARE_PREFIX)]
        handles = {}
        for name in names:
            try:
                handles[name] = ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                continue
        refs = {name: h.identity.remote() for name, h in handles.items()}
        if not refs:
            return
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        for name, ref in refs.items():
            try:
                node, job_id, _, _ = ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 - still starting or dead: leave it
                continue
            if job_id is None:
                with self._lock:
                    self._spares.setdefault(node, []).append((name, handles[name]))

    def _refill(self, nodes: dict[str, str]) -> None:
        for node, ray_id in nodes.items():
            while True:
                with self._lock:
                    have = self._spares.setdefault(node, [])
                    if len(have) >= self.per_node:
                        break
                    name = f"{SPARE_PREFIX}{node}-{uuid.uuid4().hex[:8]}"
                    try:
                        handle = self.runner_cls.options(
                            name=name, namespace=self.namespace, lifetime="detached",
                            num_cpus=0, num_gpus=0,
                            scheduling_strategy=NodeAffinitySchedulingStrategy(ray_id, soft=False),
                        ).remote(**self.runner_args(node))
                    except Exception:  # noqa: BLE001 - Ray is going away: stop refilling
                        return
                    have.append((name, handle))

    def clear(self) -> list[tuple[str, Any]]:
        with self._lock:
            out = [s for spares in self._spares.values() for s in spares]
            self._spares.clear()
            return out

