"""RayExecutor against a real local multi-node Ray cluster and real podman containers.

Adapter level: no DB, no API. The cluster (fixture `ray_cluster`) has innovation-0,
innovation-1 and operation-0 with 2 logical GPUs each. Every test uses its own job id.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from broker.ports import LaunchSpec, WorkerLaunch, WorkerState
from tests.integration.conftest import GPUS_PER_NODE, NODE_POOLS, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.container, pytest.mark.timeout(180)]

ENV_ECHO = ("echo rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK cvd=$CUDA_VISIBLE_DEVICES "
            "master=$MASTER_ADDR:$MASTER_PORT job=$BROKER_JOB_ID attempt=$BROKER_ATTEMPT foo=$FOO")


def spec(job_id: str, command, *, image: str = "", nodes=("innovation-0",), gpus: int = 1,
         runtime: str = "container", max_runtime_s: float = 120.0, grace_s: float = 2.0,
         attempt: int = 1, env=None, gpu_indices=None) -> LaunchSpec:
    """A LaunchSpec with one worker per entry of `nodes` (rank = position). Without
    `gpu_indices` (one tuple per worker) the workers take the cold path: a fresh runner in its
    bundle with Ray's GPU ids; with them, a warm spare runner when one is ready."""
    workers = tuple(WorkerLaunch(rank=r, node=n, gpus=gpus, cpus=0.5, memory_gb=0.1,
                                 gpu_indices=tuple(gpu_indices[r]) if gpu_indices else ())
                    for r, n in enumerate(nodes))
    return LaunchSpec(job_id=job_id, attempt=attempt, image=image,
                      command=("sh", "-c", command) if isinstance(command, str) else tuple(command),
                      env={"FOO": "bar"} if env is None else env, runtime=runtime,
                      workers=workers, max_runtime_s=max_runtime_s, grace_s=grace_s)


def until_state(ex, job_id, state: WorkerState, attempt: int = 1, timeout_s: float = 60.0):
    def check():
        st = ex.status(job_id, attempt)
        return st if st.workers and all(w.state is state for w in st.workers) else None

    return wait_for(check, timeout_s)


def log_fields(ex, job_id, rank, attempt: int = 1) -> dict[str, str]:
    text = ex.read_log(job_id, attempt, rank).decode()
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def containers_of(job_id: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "-a", "--filter", f"label=broker.job={job_id}",
                          "--format", "{{.Names}}"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_nodes_report_pools_labels_and_capacity(ray_executor):
    # the live nodes (a node an earlier test added and removed, e.g. an image pod, is listed dead)
    nodes = {n.id: n for n in ray_executor.nodes() if n.alive}
    expected = {"innovation-0": "innovation", "innovation-1": "innovation", "operation-0": "operation"}
    assert {k: n.pool for k, n in nodes.items()} == expected
    assert len(nodes) == len(NODE_POOLS)  # the empty head offers nothing and is left out
    for n in nodes.values():
        assert n.alive and n.capacity.gpus == GPUS_PER_NODE and n.gpu_model == "generic"
        assert n.capacity.cpus == 2 and n.capacity.memory_gb > 0
        assert n.labels["broker.io/node"] == n.id and n.labels["ray.io/node-id"]


@pytest.mark.parametrize("case, command, exit_code, expect_in_log", [
    pytest.param("succeeds", ENV_ECHO, 0, "foo=bar", id="succeeds"),
    pytest.param("fails_with_code", "echo about to fail; exit 3", 3, "about to fail",
                 id="fails_with_code"),
])
def test_container_exit_code_and_logs(ray_executor, busybox_image, job_id, case, command,
                                      exit_code, expect_in_log):
    s = spec(job_id, command, image=busybox_image)
    ray_executor.launch(s)
    ray_executor.launch(s)  # idempotent: still one gang
    st = until_state(ray_executor, job_id, WorkerState.EXITED)
    (w,) = st.workers
    assert w.exit_code == exit_code, case
    assert w.started_at and w.ended_at and w.ended_at >= w.started_at
    assert w.node == "innovation-0" and w.cuda_visible_devices != ""
    assert expect_in_log in ray_executor.read_log(job_id, 1, 0).decode()
    assert ray_executor.read_log(job_id, 1, 0, offset=2, max_bytes=3) == \
        ray_executor.read_log(job_id, 1, 0)[2:5]


@pytest.mark.parametrize("case, nodes", [
    pytest.param("two_nodes_reversed", ("innovation-1", "innovation-0"), id="two_nodes_reversed"),
    pytest.param("one_node_two_bundles", ("operation-0", "operation-0"), id="one_node_two_bundles"),
])
def test_gang_is_pinned_with_rank_env(ray_executor, busybox_image, job_id, case, nodes):
    import ray

    ray_executor.launch(spec(job_id, ENV_ECHO, image=busybox_image, nodes=nodes))
    st = until_state(ray_executor, job_id, WorkerState.EXITED)
    assert [w.exit_code for w in st.workers] == [0, 0]
    f0, f1 = log_fields(ray_executor, job_id, 0), log_fields(ray_executor, job_id, 1)
    assert (f0["rank"], f1["rank"]) == ("0", "1") and f0["world"] == f1["world"] == "2"
    assert f0["master"] == f1["master"] and not f0["master"].endswith(":0")
    assert f0["job"] == job_id and f0["attempt"] == "1" and f0["foo"] == "bar"
    # Where the bundles really are: Ray's placement-group table, by node id label.
    ray_id = {n.labels["ray.io/node-id"]: n.id for n in ray_executor.nodes()}
    table = next(t for t in ray.util.placement_group_table().values()
                 if t["name"] == f"cb-{job_id}-a1")
    placed = tuple(ray_id[table["bundles_to_node_id"][r]] for r in range(2))
    assert placed == nodes, case
    if nodes[0] == nodes[1]:  # two workers on one node never share a GPU
        assert f0["cvd"] != f1["cvd"]
        assert {w.cuda_visible_devices for w in st.workers} == {"0", "1"}


def test_stop_ends_running_container_within_grace(ray_executor, busybox_image, job_id):
    ray_executor.launch(spec(job_id, ["sleep", "300"], image=busybox_image, grace_s=30))
    until_state(ray_executor, job_id, WorkerState.RUNNING)
    wait_for(lambda: containers_of(job_id), 20)  # podman has created the container
    t0 = time.monotonic()
    ray_executor.stop(job_id, 1, grace_s=2, message="stopped by cancel")
    st = until_state(ray_executor, job_id, WorkerState.EXITED, timeout_s=30)
    took = time.monotonic() - t0
    (w,) = st.workers
    assert took < 2 + 8, took  # the grace period plus podman's own overhead
    assert w.exit_code in (137, 143) and w.message == "stopped by cancel"
    assert containers_of(job_id) == []


def test_max_runtime_stops_the_job(ray_executor, busybox_image, job_id):
    ray_executor.launch(spec(job_id, ["sleep", "300"], image=busybox_image, max_runtime_s=2,
                             grace_s=1))
    st = until_state(ray_executor, job_id, WorkerState.EXITED, timeout_s=40)
    (w,) = st.workers
    assert w.message == "max_runtime exceeded" and w.exit_code in (137, 143)
    assert 2 <= w.ended_at - w.started_at < 2 + 1 + 8


def spare_on(node: str):
    import ray

    return [n for n in ray.util.list_named_actors() if n.startswith(f"spare-{node}-")]


@pytest.mark.parametrize("path", ["cold", "warm"])
def test_new_executor_readopts_running_attempt(ray_cluster, ray_executor, busybox_image, job_id,
                                               tmp_path, path):
    from broker.adapters.ray.executor import RayExecutor

    gpu_indices = None
    if path == "warm":
        wait_for(lambda: spare_on("innovation-1"), 60)
        gpu_indices = [(1,)]
    ray_executor.launch(spec(job_id, "echo started; sleep 3; echo done", image=busybox_image,
                             nodes=("innovation-1",), gpu_indices=gpu_indices))
    until_state(ray_executor, job_id, WorkerState.RUNNING)
    ray_executor.shutdown()  # the broker goes away; the detached runner does not

    again = RayExecutor(ray_cluster.address, log_dir=tmp_path / "logs",
                        namespace=ray_executor.namespace)
    try:
        assert (job_id, 1) in again.attempts()
        st = again.status(job_id, 1)
        assert st.exists and st.workers[0].state in (WorkerState.RUNNING, WorkerState.EXITED)
        st = until_state(again, job_id, WorkerState.EXITED, timeout_s=30)
        assert st.workers[0].exit_code == 0
        assert again.read_log(job_id, 1, 0).split() == [b"started", b"done"]
        assert st.workers[0].cuda_visible_devices == ("1" if path == "warm" else "0")
    finally:
        again.release(job_id, 1)
        again.shutdown()


def test_release_leaves_nothing_behind(ray_executor, busybox_image, job_id):
    import ray

    ray_executor.launch(spec(job_id, ["sleep", "300"], image=busybox_image,
                             nodes=("innovation-0", "innovation-1")))
    until_state(ray_executor, job_id, WorkerState.RUNNING)
    wait_for(lambda: len(containers_of(job_id)) == 2, 20)
    ray_executor.release(job_id, 1)
    ray_executor.release(job_id, 1)  # idempotent
    assert (job_id, 1) not in ray_executor.attempts()
    assert not [n for n in ray.util.list_named_actors() if job_id in n]
    assert ray_executor.status(job_id, 1).exists is False
    wait_for(lambda: containers_of(job_id) == [], 20)
    states = [t["state"] for t in ray.util.placement_group_table().values()
              if t["name"] == f"cb-{job_id}-a1"]
    assert set(states) <= {"REMOVED"}


def test_warm_spares_take_a_gang_with_the_schedulers_gpu_ids(ray_executor, job_id):
    from broker.adapters.ray.warm import get_names

    wait_for(lambda: spare_on("operation-0"), 60)
    spares_before = set(spare_on("operation-0"))
    ray_executor.launch(spec(job_id, ENV_ECHO, runtime="process", nodes=("operation-0", "operation-0"),
                             gpu_indices=[(1,), (0,)]))
    st = until_state(ray_executor, job_id, WorkerState.EXITED)
    assert [w.exit_code for w in st.workers] == [0, 0]
    assert [w.cuda_visible_devices for w in st.workers] == ["1", "0"]
    f0, f1 = log_fields(ray_executor, job_id, 0), log_fields(ray_executor, job_id, 1)
    assert (f0["cvd"], f1["cvd"], f0["rank"], f1["rank"]) == ("1", "0", "0", "1")
    assert f0["master"] == f1["master"] and not f0["master"].endswith(":0")
    names = get_names(ray_executor.namespace, job_id, 1)  # rank -> runner, as a new broker sees it
    assert names[0] in spares_before  # rank 0 went to a warm spare; rank 1 to another one
    assert names[1] in spares_before or names[1] == f"job-{job_id}-a1-r1"  # or a fresh runner
    ray_executor.release(job_id, 1)
    wait_for(lambda: spare_on("operation-0"), 60)  # the pool refills


def test_process_runtime_runs_in_its_own_group(ray_executor, job_id):
    ray_executor.launch(spec(job_id, ENV_ECHO + "; exit 5", runtime="process",
                             nodes=("operation-0",), gpus=2))
    st = until_state(ray_executor, job_id, WorkerState.EXITED)
    (w,) = st.workers
    assert w.exit_code == 5
    fields = log_fields(ray_executor, job_id, 0)
    assert fields["cvd"] == w.cuda_visible_devices == "0,1" and fields["rank"] == "0"


def test_process_stop_sigterm_then_sigkill(ray_executor, job_id):
    # The process ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    ray_executor.launch(spec(job_id, "trap '' TERM; sleep 300 & wait", runtime="process"))
    until_state(ray_executor, job_id, WorkerState.RUNNING)
    t0 = time.monotonic()
    ray_executor.stop(job_id, 1, grace_s=1.5, message="preempted")
    (w,) = until_state(ray_executor, job_id, WorkerState.EXITED, timeout_s=20).workers
    assert 1.5 <= time.monotonic() - t0 < 1.5 + 8
    assert w.exit_code == 137 and w.message == "preempted"


def test_the_end_hook_tells_each_ended_attempt_once_without_a_status_call(ray_executor, busybox_image, job_id):
    """The scheduling loop's wake-up on an end (ports.EndNotifier): the executor calls the hook
    as soon as a worker ends, with nobody asking `status()`, and never again for that attempt
    (an ended attempt not yet released must not wake the loop over and over)."""
    calls: list[tuple[str, int, float]] = []
    ray_executor.set_on_end(lambda job, attempt: calls.append((job, attempt, time.time())))
    ray_executor.launch(spec(job_id, "sleep 2; exit 3", image=busybox_image))
    told = wait_for(lambda: [c for c in calls if c[:2] == (job_id, 1)], 60)
    (w,) = ray_executor.status(job_id, 1).workers
    assert w.state is WorkerState.EXITED and w.exit_code == 3
    assert told[0][2] - w.ended_at < 2.0, (told, w)  # told within moments of the end
    for _ in range(3):  # the loop keeps looking until it releases the attempt
        ray_executor.status(job_id, 1)
    time.sleep(1.5)
    assert [c for c in calls if c[:2] == (job_id, 1)] == told[:1]
    # a stopped worker is an end too
    ray_executor.launch(spec(job_id, ["sleep", "300"], image=busybox_image, attempt=2))
    until_state(ray_executor, job_id, WorkerState.RUNNING, attempt=2)
    ray_executor.stop(job_id, 2, grace_s=1, message="stopped by cancel")
    wait_for(lambda: [c for c in calls if c[:2] == (job_id, 2)], 30)
    ray_executor.set_on_end(None)


def test_launch_on_unknown_node_is_refused(ray_executor, job_id):
    from broker.adapters.ray.executor import ExecutorError

    with pytest.raises(ExecutorError, match="no-such-node"):
        ray_executor.launch(spec(job_id, "true", runtime="process", nodes=("no-such-node",)))
    assert ray_executor.status(job_id, 1).exists is False


def test_cluster_refuses_a_client_without_the_token(ray_cluster, ray_executor):
    """The shared cluster runs with Ray token authentication: this process (the driver) is
    served, a process without the token is refused at the GCS."""
    import os
    import sys

    assert len([n for n in ray_executor.nodes() if n.alive]) == len(NODE_POOLS)  # we present the token
    probe = ("from ray._raylet import GcsClient\n"
             f"print(len(GcsClient(address='{ray_cluster.address}').get_all_node_info(timeout=5)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode != 0 and "token" in (run.stdout + run.stderr).lower(), run.stdout + run.stderr[-1000:]
