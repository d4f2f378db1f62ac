"""Submit-time checks that need the catalog: project exists, pools allowed, can it ever fit.

`never_fits` is a pure function over the node and pool rows, so it is table-tested without a
database. The caches keep the hot submit path off the database: the project list and the node
inventory change rarely (admin actions, node sync) and a few seconds of staleness only delays
when a new project or node becomes visible to these checks, never what gets stored.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.auth.authz import unknown_project  # noqa: F401  (re-exported: submit's checks raise it)
from broker.errors import Forbidden, Invalid
from broker.models import Node, Pool, Project
from broker.ports import Clock
from broker.services import catalog_queries as catalog


@dataclass(frozen=True, slots=True)
class WorkerShape:
    gpus: int
    cpus: float
    memory_gb: float
    gpu_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Inventory:
    pools: Mapping[str, Pool] = field(default_factory=dict)
    nodes: tuple[Node, ...] = ()
    # never_fits answers for this inventory (it is replaced, not mutated, when reloaded)
    memo: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


_UNSET = object()
_MEMO_MAX = 4096


def never_fits_cached(inv: Inventory, *, workload_class: str, pool: str | None, shape: WorkerShape,
                      workers: int) -> tuple[str, dict] | None:
    """`never_fits`, remembered per inventory: submits repeat a handful of shapes, and the
    answer only changes when the inventory does (a bad pool pin raises every time)."""
    key = (workload_class, pool, shape, workers)
    why = inv.memo.get(key, _UNSET)
    if why is _UNSET:
        why = never_fits(inv, workload_class=workload_class, pool=pool, shape=shape, workers=workers)
        if len(inv.memo) < _MEMO_MAX:
            inv.memo[key] = why
    return why


def eligible_pools(pools: Mapping[str, Pool], workload_class: str, pinned: str | None) -> list[str]:
    """Pools a job of this class may run in: its own class's pools, plus operation pools that
    lend to innovation for innovation work. A pinned pool must be one of them."""
    names = [
        p.name for p in pools.values()
        if p.workload_class == workload_class
        or (workload_class == "innovation" and p.workload_class == "operation" and p.lend_to_innovation)
    ]
    if pinned is not None:
        if pinned not in pools:
            raise Invalid(f"pool {pinned!r} does not exist", code="UNKNOWN_POOL",
                          details={"pool": pinned, "pools": sorted(pools)})
        if pinned not in names:
            raise Invalid(f"{workload_class} jobs may not run in pool {pinned!r}", code="POOL_NOT_ALLOWED",
                          details={"pool": pinned, "allowed": sorted(names)})
        return [pinned]
    return sorted(names)


def never_fits(inv: Inventory, *, workload_class: str, pool: str | None, shape: WorkerShape,
               workers: int) -> tuple[str, dict] | None:
    """Why no node of the job's pools could ever hold it, or None if it could fit.

    "Ever" means on the known nodes whatever their current state or load: one worker must fit
    one node (GPUs, CPUs, memory, GPU model) and the gang's GPUs must not exceed the pools'
    total. With no nodes known at all (inventory not synced yet) nothing is refused.
    """
    if not inv.nodes:
        return None
    pools = eligible_pools(inv.pools, workload_class, pool) if inv.pools else ([pool] if pool else [])
    cands = [n for n in inv.nodes if (not pools or n.pool in pools)]
    requested = {"gpus": shape.gpus, "cpus": shape.cpus, "memory_gb": shape.memory_gb,
                 "gpu_model": list(shape.gpu_models) or None, "workers": workers}
    if not cands:
        return (f"no node belongs to the pools a {workload_class} job may use ({', '.join(pools) or 'none'})",
                {"pools": pools, "requested": requested})
    if shape.gpu_models:
        models = sorted({n.gpu_model for n in cands})
        cands = [n for n in cands if n.gpu_model in shape.gpu_models]
        if not cands:
            return (f"no node in pools {', '.join(pools)} has GPU model {' or '.join(shape.gpu_models)}; "
                    f"available: {', '.join(m for m in models if m) or 'none'}",
                    {"pools": pools, "requested": requested, "available_models": models})
    fits = [n for n in cands if n.gpus >= shape.gpus and n.cpus >= shape.cpus and n.memory_gb >= shape.memory_gb]
    if not fits:
        mx = {"gpus": max(n.gpus for n in cands), "cpus": max(n.cpus for n in cands),
              "memory_gb": max(n.memory_gb for n in cands)}
        short = [r for r in ("gpus", "cpus", "memory_gb") if requested[r] > mx[r]] or ["gpus"]
        what = ", ".join(f"{requested[r]:g} {r} (largest node has {mx[r]:g})" for r in short)
        return (f"one worker asks for {what} in pools {', '.join(pools)}: it can never fit on any node",
                {"pools": pools, "requested": requested, "largest_node": mx})
    total = sum(n.gpus for n in fits)
    if shape.gpus * workers > total:
        return (f"the gang asks for {shape.gpus * workers} GPUs but pools {', '.join(pools)} have only "
                f"{total} on nodes that fit one worker",
                {"pools": pools, "requested": requested, "total_gpus": total})
    return None


def no_container_runtime(approved: Sequence[str] = ()) -> Invalid:
    """The 422 for a container job on a broker whose nodes have no container runtime, unless
    its image is one of the `approved` ones (pods per image on Kubernetes)."""
    if approved:
        return Invalid("this broker's nodes run only approved images (Kubernetes pods per image; no podman on "
                       f"the nodes); use one of: {', '.join(approved)}, or ask a platform-admin to approve yours",
                       code="IMAGE_NOT_APPROVED", details={"approved_images": list(approved)})
    return Invalid("this broker's nodes have no container runtime (podman was not found when the broker started), "
                   "so container jobs cannot run here; install podman and restart the broker, or use "
                   "runtime 'process' where your project is allowed to", code="CONTAINER_RUNTIME_UNAVAILABLE")


def fits_image_pods(spec) -> None:
    """A job of an approved image runs in pods of that image (docs/KUBERNETES.md): nothing
    brings project secrets or dataset mounts into a pod's job container yet, so such a job is
    refused here rather than failed at its start."""
    missing = [what for what, on in (("secrets", spec.secrets), ("mounts", spec.mounts)) if on]
    if missing:
        raise Invalid(f"image {spec.image} runs in Kubernetes pods of its own, which cannot take {' or '.join(missing)} "
                      "yet; submit without them, or use an image that runs under podman", code="NOT_SUPPORTED_IN_IMAGE_PODS",
                      details={"image": spec.image, "unsupported": missing})


def require_process_runtime(engine: Engine, project: str, *, deployment_allows: bool) -> None:
    """Refuse a `runtime: process` job unless this deployment allows host processes at all
    (`allow_process_runtime`) and a platform-admin enabled them for the project.

    Read fresh from the database, not from a cache: revoking the permission takes effect on
    the next submit. Process jobs are rare, so this costs the hot path nothing."""
    if not deployment_allows:
        raise Forbidden("runtime 'process' runs commands on the host as the broker's user and is disabled "
                        "on this broker; use runtime 'container'", code="PROCESS_RUNTIME_DISABLED")
    with Session(engine) as s:
        allowed = s.get(Project, project)
        if allowed is None:
            raise unknown_project(project)
        if not allowed.allow_process_runtime:
            raise Forbidden(f"runtime 'process' runs commands on the host as the broker's user; project "
                            f"{project} is not allowed to use it (a platform-admin can enable it in the "
                            "project's settings); use runtime 'container'", code="PROCESS_RUNTIME_NOT_ALLOWED",
                            details={"project": project})


class TTLCache:
    """A loader result kept for `ttl_s`; `get()` never touches the DB while fresh.

    `get(max_age=...)` asks for a value at most that old (a submit naming a project the cache
    does not know looks once more); reloads are never more frequent than `max_age`, so a flood
    of bad requests cannot turn into a flood of queries.
    """

    def __init__(self, loader: Callable[[], object], ttl_s: float, clock: Clock = time.monotonic):
        self._loader, self._ttl, self._clock = loader, ttl_s, clock
        self._value: object = None
        self._at = -1e18
        self._lock = threading.Lock()

    def fresh(self, max_age: float | None = None) -> object | None:
        age = self._ttl if max_age is None else min(max_age, self._ttl)
        return self._value if self._clock() - self._at < age else None

    def get(self, max_age: float | None = None) -> object:
        v = self.fresh(max_age)
        if v is not None:
            return v
        with self._lock:
            v = self.fresh(max_age)
            if v is None:
                v = self._loader()
                self._value, self._at = v, self._clock()
            return v

    def invalidate(self) -> None:
        self._at = -1e18


def load_projects(engine: Engine) -> dict[str, str]:
    """project id -> department id."""
    with Session(engine) as s:
        return {p.id: p.department_id for p, _ in catalog.projects(s)}


def load_inventory(engine: Engine) -> Inventory:
    with Session(engine, expire_on_commit=False) as s:
        pools = {p.name: p for p in catalog.pools(s)}
        nodes = tuple(catalog.nodes(s))
        for obj in (*pools.values(), *nodes):
            s.expunge(obj)
        return Inventory(pools=pools, nodes=nodes)
