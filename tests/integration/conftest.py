"""Integration fixtures: one real local multi-node Ray cluster and real podman containers.

- `containers_conf`, `busybox_image` (session): from tests/conftest.py.
- `ray_cluster` (session): a `LocalCluster` (broker.adapters.ray.local) with an empty head and
  three nodes of 2 logical GPUs and 2 CPUs each: innovation-0, innovation-1, operation-0
  (labels broker.io/node and broker.io/pool), with Ray token authentication. Started ONCE per test session: it takes
  10-40 s on two cores, so no test starts its own.
- `ray_executor`: a `RayExecutor` connected to it with its own log dir; every attempt a test
  leaves behind is released, and the executor disconnects, at teardown.
- `job_id`: a fresh job id per test, so no test depends on another's leftovers.
"""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest

NODE_POOLS = ("innovation", "innovation", "operation")
GPUS_PER_NODE = 2
NAMESPACE = "compute-broker-it"  # not the default: never touches a demo broker's runners


@pytest.fixture(scope="session")
def ray_cluster(containers_conf, tmp_path_factory):
    pytest.importorskip("ray")
    from broker.adapters.ray.local import start_local_cluster

    # With Ray token authentication, as `broker up` runs it: every integration test also proves
    # that the driver, the runner actors and the agents present the token.
    token = tmp_path_factory.mktemp("ray-auth") / "ray-auth-token"
    cluster = start_local_cluster(gpus=GPUS_PER_NODE, nodes=len(NODE_POOLS), pools=NODE_POOLS,
                                  env={"CONTAINERS_CONF": containers_conf}, auth_token_file=token)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ray_executor(ray_cluster, tmp_path):
    from broker.adapters.ray.executor import RayExecutor

    ex = RayExecutor(ray_cluster.address, log_dir=tmp_path / "logs", namespace=NAMESPACE)
    yield ex
    import ray

    if not ray.is_initialized():  # the test replaced the connection (re-adoption)
        ex = RayExecutor(ray_cluster.address, log_dir=tmp_path / "logs", namespace=NAMESPACE)
    for job_id, attempt in ex.attempts():  # tests run one at a time: all of it is this test's
        ex.release(job_id, attempt)
    ex.shutdown()


@pytest.fixture
def job_id(request) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:24]
    return f"{stem.strip('-')}-{uuid.uuid4().hex[:6]}"


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.2):
    """Poll until predicate() returns a truthy value; return it (or fail with the last one)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"condition not met within {timeout_s} s; last value: {last!r}")
