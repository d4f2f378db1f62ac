"""Node agents as Ray actors: one `broker-agent` per Ray node, pinned to it.

Why: on a Ray cluster without a Kubernetes DaemonSet (bare machines, a lab), the broker can
still get NVML telemetry from every node by starting the agent where the GPUs are. Each
actor is detached, named `agent-<node>` (so a restarted broker finds it instead of starting
a second), scheduled with a hard node affinity on its node, asks for no CPU or GPU (it must
never take capacity from jobs), and runs `agents.main.main(argv, stop)` in a thread: the same
agent code as the console script, pushing with a token bound to that node.

Only this module and the other `ray_*` adapters import `ray`.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from broker.adapters.ray.executor import RAY_NODE_ID_LABEL
from broker.ports import NodeObservation


class NodeAgent:
    """Actor body: runs the agent loop in a thread until `stop()`."""

    def __init__(self, argv: list[str]) -> None:
        from agents.main import main

        self._stop = threading.Event()
        self._thread = threading.Thread(target=main, args=(argv, self._stop), name="broker-agent", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def ray_node_id(self) -> str:
        """The Ray node this actor runs on (for checks and the operator's curiosity)."""
        return ray.get_runtime_context().get_node_id()

    def stop(self) -> bool:
        self._stop.set()
        self._thread.join(timeout=10)
        return not self._thread.is_alive()


def actor_name(node_id: str) -> str:
    return f"agent-{node_id}"


def start_node_agents(nodes: Sequence[NodeObservation], *, broker_url: str, token_for: Callable[[str], str],
                      namespace: str = "compute-broker", extra_args: Sequence[str] = ()) -> list[str]:
    """Start (or find) one agent actor per alive node; returns the node ids that have one.

    `token_for(node_id)` issues the node's agent token; it is only called for nodes whose
    agent is not running yet."""
    cls = ray.remote(NodeAgent)
    started = []
    for n in nodes:
        if not n.alive or RAY_NODE_ID_LABEL not in n.labels:
            continue
        name = actor_name(n.id)
        try:
            ray.get_actor(name, namespace=namespace)
            started.append(n.id)
            continue
        except ValueError:
            pass  # no such actor yet: start it below
        argv = ["--broker-url", broker_url, "--token", token_for(n.id), "--node-id", n.id, *extra_args]
        cls.options(
            name=name, namespace=namespace, lifetime="detached", num_cpus=0, num_gpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.labels[RAY_NODE_ID_LABEL], soft=False),
        ).remote(argv)
        started.append(n.id)
    return started


def stop_node_agents(node_ids: Sequence[str], *, namespace: str = "compute-broker", timeout_s: float = 15.0) -> None:
    for nid in node_ids:
        try:
            h = ray.get_actor(actor_name(nid), namespace=namespace)
        except ValueError:
            continue
        try:
            ray.get(h.stop.remote(), timeout=timeout_s)  # let the agent flush its last push
        except Exception:
            pass  # a dead or hung agent is killed below all the same
        ray.kill(h)
