"""End to end through REST: the real API, the scheduling loop, the RayExecutor on a real local
multi-node Ray cluster (fixture `ray_cluster`) and real podman containers.

Each test gets a fresh SQLite broker (demo region, admin token, grace period 2 s) whose
lifespan runs the scheduling loop; `broker` yields a BrokerClient on it. Jobs go into project
ouh-liver (innovation nominal 2 GPUs, borrowing allowed).
"""

from __future__ import annotations

import time
from pathlib import Path
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from broker.client import BrokerAPIError, BrokerClient
from tests.integration.conftest import NAMESPACE, NODE_POOLS, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.container, pytest.mark.timeout(240)]

GRACE_S = 2.0
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
ENV_ECHO = "echo rank=$RANK world=$WORLD_SIZE cvd=$CUDA_VISIBLE_DEVICES master=$MASTER_ADDR:$MASTER_PORT"


@pytest.fixture
def broker_settings(tmp_path):
    from broker.db import migrate
    from broker.settings import Settings

    s = Settings(data_dir=tmp_path / "broker", allow_process_runtime=True, grace_period_s=GRACE_S,
                 cycle_interval_s=0.5, reconcile_interval_s=2.0)
    s.ensure_data_dir()
    migrate(s)
    return s


@contextmanager
def running_broker(settings, address, expect_nodes: int = len(NODE_POOLS)):
    """One broker process's worth: engine, RayExecutor, app with its scheduling loop."""
    from broker.adapters.ray.executor import RayExecutor
    from broker.app import create_app
    from broker.db import make_engine
    from broker.services.bootstrap import ensure_admin_token, seed_demo

    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s, process_runtime=True)
        s.commit()
    token = ensure_admin_token(settings, engine).read_text().strip()
    executor = RayExecutor(address, log_dir=settings.data_dir / "logs", namespace=NAMESPACE)
    try:
        with TestClient(create_app(settings, executor=executor, engine=engine)) as http:
            client = BrokerClient("http://testserver", token, http=http)
            # the loop synced Ray's nodes (a node an earlier test removed may still be listed, dead)
            wait_for(lambda: sum(n["state"] != "unhealthy" for n in client.nodes()) == expect_nodes, 30)
            yield client
    finally:
        executor.shutdown()
        engine.dispose()


@pytest.fixture
def broker(ray_cluster, broker_settings, busybox_image):
    with running_broker(broker_settings, ray_cluster.address) as client:
        yield client
    _release_all(ray_cluster)


def _release_all(ray_cluster):
    from broker.adapters.ray.executor import RayExecutor

    ex = RayExecutor(ray_cluster.address, namespace=NAMESPACE)
    try:
        for job_id, attempt in ex.attempts():
            ex.release(job_id, attempt)
    finally:
        ex.shutdown()


def job(command, *, gpus=1, workers=1, max_runtime_s=120.0, runtime="container", **extra) -> dict:
    """A job body for project ouh-liver running `command` in the busybox image."""
    body = dict(name="e2e", project="ouh-liver", workload_class="innovation",
                image="localhost/busybox:test" if runtime == "container" else "",
                command=["sh", "-c", command] if isinstance(command, str) else list(command),
                resources={"gpus": gpus, "cpus": 0.5, "memory_gb": 0.1}, workers=workers,
                max_runtime_s=max_runtime_s, runtime=runtime, max_retries=0)
    body.update(extra)
    return body


def wait_status(client, job_id, until, timeout_s=60.0) -> dict:
    try:
        return client.wait(job_id, until=tuple(until), timeout=timeout_s, poll_s=0.2)
    except TimeoutError:
        j = client.get(job_id)
        raise TimeoutError(f"job {job_id} still {j['status']} after {timeout_s} s: {j.get('pending_reason')} "
                           f"{j.get('message')}") from None


def fields(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


@pytest.mark.parametrize("case, command, status, exit_code, log_text", [
    pytest.param("succeeds", "echo hello from $BROKER_JOB_ID", "SUCCEEDED", 0, "hello from ", id="succeeds"),
    pytest.param("fails", "echo going down; exit 3", "FAILED", 3, "going down", id="fails_with_exit_code"),
])
def test_container_job_ends_with_status_exit_code_and_logs(broker, case, command, status, exit_code, log_text):
    created = broker.submit(job(command))
    assert created["status"] == "PENDING"
    done = wait_status(broker, created["id"], TERMINAL)
    assert (done["status"], done["exit_code"]) == (status, exit_code), done["message"]
    assert done["started_at"] and done["finished_at"] >= done["started_at"]
    assert log_text in broker.logs(created["id"], worker=0)
    if case == "succeeds":
        assert created["id"] in broker.logs(created["id"])


def test_gang_of_two_lands_on_two_nodes_with_rank_env(broker):
    # 2 GPUs per worker and 2 GPUs per node: the gang must span two innovation nodes.
    created = broker.submit(job(ENV_ECHO, gpus=2, workers=2))
    done = wait_status(broker, created["id"], TERMINAL)
    assert done["status"] == "SUCCEEDED", done["message"]
    nodes = sorted(p["node"] for p in done["placements"])
    assert nodes == ["innovation-0", "innovation-1"]
    f0, f1 = (fields(broker.logs(created["id"], worker=r)) for r in (0, 1))
    assert (f0["rank"], f1["rank"], f0["world"], f1["world"]) == ("0", "1", "2", "2")
    assert f0["master"] == f1["master"]
    pairs = {(p["node"], p["cuda_visible_devices"]) for p in done["placements"]}
    assert len(pairs) == 2 and all(len(cvd.split(",")) == 2 for _, cvd in pairs)


def test_cancel_stops_a_running_container_within_the_grace_period(broker):
    created = broker.submit(job(["sleep", "300"]))
    wait_status(broker, created["id"], ["RUNNING"])
    t0 = time.monotonic()
    broker.cancel(created["id"])
    done = wait_status(broker, created["id"], TERMINAL, timeout_s=30)
    assert done["status"] == "CANCELLED"
    assert time.monotonic() - t0 < GRACE_S + 10  # grace, podman's stop, one loop interval


def test_max_runtime_stops_the_job(broker):
    created = broker.submit(job(["sleep", "300"], max_runtime_s=2))
    done = wait_status(broker, created["id"], TERMINAL, timeout_s=40)
    assert done["status"] == "FAILED" and "max_runtime" in done["message"], done["message"]
    assert done["finished_at"] - done["started_at"] < 2 + GRACE_S + 10


def test_broker_restart_readopts_a_running_job(ray_cluster, broker_settings, busybox_image):
    try:
        with running_broker(broker_settings, ray_cluster.address) as first:
            created = first.submit(job("echo begin; sleep 4; echo end"))
            wait_status(first, created["id"], ["RUNNING"])
        # The broker is gone (its loop, its Ray driver); the detached runner keeps running.
        with running_broker(broker_settings, ray_cluster.address) as second:
            done = wait_status(second, created["id"], TERMINAL, timeout_s=40)
            assert done["status"] == "SUCCEEDED" and done["attempt"] == 1, done["message"]
            assert second.logs(created["id"]).split() == ["begin", "end"]
    finally:
        _release_all(ray_cluster)


def test_oversized_job_is_refused_with_422(broker):
    with pytest.raises(BrokerAPIError) as e:
        broker.submit(job("true", gpus=3))  # every node has 2 GPUs
    assert e.value.status == 422 and e.value.code
    assert "3" in e.value.message


def test_process_runtime_end_to_end(broker):
    created = broker.submit(job(ENV_ECHO + "; exit 4", runtime="process", gpus=2))
    done = wait_status(broker, created["id"], TERMINAL)
    assert (done["status"], done["exit_code"]) == ("FAILED", 4)
    assert fields(broker.logs(created["id"]))["cvd"] == "0,1"


@pytest.mark.parametrize("case, change, field", [
    pytest.param("no_command", {"command": []}, "command", id="no_command"),
    pytest.param("negative_gpus", {"resources": {"gpus": -1, "cpus": 1, "memory_gb": 1}}, "gpus", id="negative_gpus"),
])
def test_bad_body_is_refused_with_422_and_a_clear_message(broker, case, change, field):
    with pytest.raises(BrokerAPIError) as e:
        broker.submit({**job("true"), **change})
    assert e.value.status == 422 and e.value.code, case
    assert field in (e.value.message + str(e.value.details)), e.value.message


# A checkpointable job: counts steps; on SIGTERM it prints its notice and saves the step it
# reached; on a later attempt it resumes from the saved step and finishes 5 steps later.
CHECKPOINTING = (
    "d=$BROKER_CHECKPOINT_DIR; n=0; end=100000; "
    "if [ -f $d/step ]; then n=$(cat $d/step); end=$((n+5)); echo resumed_from=$n; fi; "
    "trap 'echo notice=$(cat $BROKER_NOTICE_FILE | tr -d \" \"); echo $n > $d/step; echo saved=$n; exit 143' TERM; "
    "while [ $n -lt $end ]; do n=$((n+1)); sleep 0.1; done; echo finished_at=$n"
)


def test_checkpointable_job_preempted_by_operation_resumes_from_its_checkpoint(broker, broker_settings):
    """Operation work reclaims the operation pool from a borrowing innovation job: the job gets
    its notice (reason, deadline) and SIGTERM, saves a checkpoint within the grace, is requeued,
    and its next attempt resumes from the checkpoint instead of from zero."""
    from broker.db import make_engine
    from broker.models import QuotaRow

    # The demo guarantees the operation pool's 2 GPUs entirely (nothing to lend): keep the
    # nominal shares, drop the guarantees, so its idle GPUs are lent and then reclaimed.
    engine = make_engine(broker_settings)
    with Session(engine) as s:
        for q in s.query(QuotaRow).filter(QuotaRow.pool == "operation").all():
            q.guaranteed = 0
        s.commit()
    engine.dispose()
    inno = broker.submit(job(CHECKPOINTING, gpus=2, pool="operation", checkpointable=True, max_runtime_s=300))
    assert inno["checkpointable"] is True
    wait_status(broker, inno["id"], ["RUNNING"])
    time.sleep(2.0)  # some steps done
    op = broker.submit(dict(job("echo serving; sleep 1", gpus=2), project="shs-ops-triage",
                            workload_class="operation"))
    done_op = wait_status(broker, op["id"], TERMINAL, timeout_s=90)
    assert done_op["status"] == "SUCCEEDED", done_op["message"]
    done = wait_status(broker, inno["id"], TERMINAL, timeout_s=90)
    assert done["status"] == "SUCCEEDED" and done["attempt"] == 2, done["message"]
    first = broker.logs(inno["id"], attempt=1)
    notice = fields(first)["notice"]
    assert '"reason":"preempted"' in notice and '"deadline":' in notice, first
    saved = int(fields(first)["saved"])
    assert saved > 0
    second = fields(broker.logs(inno["id"], attempt=2))
    assert int(second["resumed_from"]) == saved and int(second["finished_at"]) == saved + 5
    ckpt = broker_settings.checkpoint_dir("ouh-liver", inno["id"])
    assert (ckpt / "step").read_text().strip() == str(saved)  # on the broker's checkpoint root


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.*"))
# what each example prints when it ran as documented (its first worker's log)
EXAMPLE_OUTPUT = {"batch-inference.yaml": "scoring with batch size 32 on GPU ",
                  "ddp-gang.yaml": "rank 0 of 2, master ",
                  "validation.json": "validating on held-out set"}


def test_every_example_has_its_expected_output():
    assert {e.name for e in EXAMPLES} == set(EXAMPLE_OUTPUT)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_runs_to_completion(broker, example):
    """The examples/ files as a user submits them (`broker jobs submit -f`), on real Ray and podman.
    The test cluster's nodes are small (2 logical GPUs, 2 CPUs each), so CPU and memory are set
    down the way a user would on a small machine: `--set resources.cpus=0.5 --set ...`."""
    from broker.cli import specs

    spec = specs.load(str(example))
    for override in ("resources.cpus=0.5", "resources.memory_gb=0.1"):
        specs.apply_set(spec, override)
    created = broker.submit(spec)
    done = wait_status(broker, created["id"], TERMINAL, 90)
    assert done["status"] == "SUCCEEDED", (done["message"], broker.logs(created["id"], worker=0), broker.logs(created["id"], worker=1) if spec.get("workers", 1) > 1 else "")
    assert EXAMPLE_OUTPUT[example.name] in broker.logs(created["id"], worker=0)
