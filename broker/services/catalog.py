"""Catalog use cases: projects, nodes, pools (read-only here; admin writes are in `admin/`).

Lists never include foreign rows: projects are cut to the caller's project scope here, so a
route cannot forget to. Nodes and pools name no tenant and are visible to every user."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.services import catalog_queries as catalog
from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.auth.policy import Ref, Resource


class CatalogService:
    def __init__(self, engine: Engine, authz: Authz, *, container_runtime: bool = True) -> None:
        """`container_runtime`: the nodes can run container jobs (False: process jobs only,
        e.g. `broker up` on a machine without podman)."""
        self.engine, self.authz = engine, authz
        self.runtimes = ["container", "process"] if container_runtime else ["process"]

    def projects(self, *, principal: Principal) -> dict:
        scope = self.authz.scope(principal, Resource.PROJECT)
        with Session(self.engine) as s:
            return {"items": [
                {"id": p.id, "name": p.name or p.id, "department": d.id, "department_name": d.name,
                 "weight": p.weight, "budget_gpu_hours": p.budget_gpu_hours,
                 "allow_process_runtime": p.allow_process_runtime}
                for p, d in catalog.projects(s)
                if scope.contains(Ref(Resource.PROJECT, department=d.id, project=p.id))
            ]}

    def nodes(self, *, principal: Principal) -> dict:
        with Session(self.engine) as s:
            return {"items": [{**node_public(n), "runtimes": self.runtimes} for n in catalog.nodes(s)]}

    def pools(self, *, principal: Principal) -> dict:
        with Session(self.engine) as s:
            nodes = catalog.nodes(s)
            agg: dict[str, dict] = defaultdict(lambda: {"nodes": 0, "gpus": 0, "cpus": 0.0, "memory_gb": 0.0, "models": set()})
            for n in nodes:
                a = agg[n.pool]
                a["nodes"] += 1
                a["gpus"] += n.gpus
                a["cpus"] += n.cpus
                a["memory_gb"] += n.memory_gb
                if n.gpu_model:
                    a["models"].add(n.gpu_model)
            out = []
            for p in catalog.pools(s):
                a = agg[p.name]
                out.append({"name": p.name, "class": p.workload_class, "lend_to_innovation": p.lend_to_innovation,
                            "description": p.description, "nodes": a["nodes"], "gpus": a["gpus"], "cpus": a["cpus"],
                            "memory_gb": a["memory_gb"], "gpu_models": sorted(a["models"])})
            return {"items": out}

    def ready(self) -> bool:
        from sqlalchemy import text

        with self.engine.connect() as c:
            c.execute(text("SELECT 1"))
        return True


def node_public(n) -> dict:
    """A node as users see it: `state` is what scheduling sees (health, or an admin's cordon or
    drain on a healthy node); `health_state` and `admin_state` say which of the two it is."""
    state, reason = n.effective_state()
    return {"id": n.id, "hostname": n.hostname, "pool": n.pool, "gpu_model": n.gpu_model, "gpus": n.gpus,
            "cpus": n.cpus, "memory_gb": n.memory_gb, "state": state, "state_reason": reason,
            "health_state": n.state, "admin_state": n.admin_state, "last_heartbeat": n.last_heartbeat,
            "labels": dict(n.labels or {}), "pool_source": "admin" if n.pool_override else "executor"}
