"""The scheduling loop over a real DB (SQLite and PostgreSQL) and the FakeExecutor.

The fake stands in for Ray here on purpose: these tests pin down the loop's own logic (state
transitions, ledger, pending reasons, preemption, reconciliation) with a controllable clock.
The same flows run against real Ray and podman in tests/integration/.
"""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from broker.adapters.fake import FakeExecutor, node
from broker.models import Job, Ledger, Node
from broker.services.reconcile import release_orphans
from broker.services.scheduling import SchedulingLoop, TickReport
from tests.broker.conftest import NODES, job_body


class Clock:
    def __init__(self, t: float = 1_790_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


CLOCK = Clock()


def inventory():
    return [node(n["id"], pool=n["pool"], gpus=n["gpus"], cpus=n["cpus"], memory_gb=n["memory_gb"],
                 gpu_model=n["gpu_model"]) for n in NODES]


@pytest.fixture(scope="module")
def fake_executor():
    return FakeExecutor(inventory(), clock=CLOCK)


@pytest.fixture(scope="module")
def loop(settings, engine, fake_executor):
    return SchedulingLoop(settings, engine, fake_executor, clock=CLOCK)


@pytest.fixture(autouse=True)
def _drain(client, loop, fake_executor):
    """Every test starts with an idle cluster: whatever an earlier test left is cancelled."""
    yield
    for j in client.get("/api/v1/jobs", params={"limit": 500}).json()["items"]:
        if j["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            client.post(f"/api/v1/jobs/{j['id']}/cancel")
    loop.tick()
    loop.tick()


def submit(client, **over) -> str:
    r = client.post("/api/v1/jobs", json=job_body(**over))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def get(client, jid: str) -> dict:
    return client.get(f"/api/v1/jobs/{jid}").json()


def test_job_runs_to_succeeded_and_is_accounted(client, loop, fake_executor, engine):
    jid = submit(client, gpus=2)
    rep = loop.tick()
    assert jid in rep.admitted and jid in rep.launched
    j = get(client, jid)
    assert j["status"] == "STARTING"
    assert [p["node"] for p in j["placements"]] in (["inno-1"], ["inno-2"])
    assert len(j["placements"][0]["gpu_indices"]) == 2
    spec = fake_executor.specs[(jid, 1)]
    assert spec.workers[0].gpus == 2 and spec.image == "localhost/busybox:test"

    loop.tick()
    assert get(client, jid)["status"] == "RUNNING"
    CLOCK.advance(100)
    fake_executor.finish(jid, 1, exit_code=0)
    loop.tick()
    j = get(client, jid)
    assert (j["status"], j["exit_code"]) == ("SUCCEEDED", 0)
    assert (jid, 1) in fake_executor.releases
    with Session(engine) as s:
        led = s.get(Ledger, (jid, 1))
        assert led.ended_at is not None and led.allocated_gpu_s == pytest.approx(2 * 100, rel=0.01)


def test_job_that_ends_between_ticks_keeps_its_start_time(client, loop, fake_executor):
    jid = submit(client, gpus=1)
    loop.tick()  # admitted and launched; never seen RUNNING
    fake_executor.finish(jid, 1, exit_code=0)
    CLOCK.advance(5)
    loop.tick()
    j = get(client, jid)
    assert j["status"] == "SUCCEEDED"
    assert j["started_at"] is not None and j["finished_at"] >= j["started_at"]
    assert j["attempts"][0]["started_at"] == j["started_at"]


def test_gang_failure_stops_the_rest_and_fails_with_exit_code(client, loop, fake_executor):
    jid = submit(client, gpus=4, workers=2)
    loop.tick()
    j = get(client, jid)
    assert sorted(p["node"] for p in j["placements"]) == ["inno-1", "inno-2"]
    loop.tick()
    fake_executor.finish(jid, 1, exit_code=3, rank=1)
    loop.tick()  # rank 1 failed: rank 0 is stopped
    assert any(s[0] == jid for s in fake_executor.stops)
    loop.tick()
    j = get(client, jid)
    assert (j["status"], j["exit_code"]) == ("FAILED", 3)
    assert "worker 1 exited with code 3" in j["message"]


def test_cancel_running_job_stops_workers_then_cancelled(client, loop, fake_executor):
    jid = submit(client, gpus=1)
    loop.tick()
    loop.tick()
    assert get(client, jid)["status"] == "RUNNING"
    r = client.post(f"/api/v1/jobs/{jid}/cancel")
    assert r.status_code == 200
    loop.tick()
    j = get(client, jid)
    assert j["status"] == "CANCELLED"
    assert any(s[0] == jid and s[2] == loop.settings.grace_period_s for s in fake_executor.stops)


def test_waiting_job_gets_pending_reason_with_numbers(client, loop):
    big = submit(client, gpus=4, workers=2)  # takes the whole innovation pool (2 x 4)
    loop.tick()
    waiting = submit(client, gpus=4, project="slb-cardio", pool="innovation")
    loop.tick()
    j = get(client, waiting)
    assert j["status"] == "PENDING"
    assert j["pending_reason"]["code"] in ("NO_CAPACITY", "FRAGMENTED", "PREEMPTING", "QUOTA_LIMIT")
    assert j["pending_reason"]["message"]
    assert j["queue_position"] >= 1
    assert get(client, big)["status"] in ("STARTING", "RUNNING")


@pytest.mark.parametrize("case, restart", [("same_loop", False), ("after_a_broker_restart", True)])
def test_lost_attempt_is_charged_until_last_seen_alive_not_for_the_downtime(
        client, loop, fake_executor, settings, engine, case, restart):
    """A worker lost while nobody watched (broker down, node gone) is charged up to the last
    time the loop saw it running, not up to when the loss was noticed."""
    from broker.models import Ledger
    from broker.services.scheduling import SchedulingLoop

    jid = submit(client, gpus=2, max_retries=1)
    loop.tick()
    loop.tick()
    assert get(client, jid)["status"] == "RUNNING"
    started = get(client, jid)["started_at"]
    for _ in range(3):  # seen running for 40 s
        CLOCK.advance(20.0)
        loop.tick()
    seen = CLOCK()
    CLOCK.advance(1000.0)  # the broker was down / nobody looked for 1,000 s
    fake_executor.lose(jid, 1)
    watcher = SchedulingLoop(settings, engine, fake_executor, clock=CLOCK) if restart else loop
    watcher.tick()
    watcher.tick()
    with Session(engine) as s:
        led = s.get(Ledger, (jid, 1))
    assert led.ended_at is not None, case
    # stored at most every 15 s, so a restarted broker knows it to within that
    slack = 0.0 if not restart else 15.0
    assert seen - slack <= led.ended_at <= seen, (case, led.ended_at, seen)
    assert led.allocated_gpu_s == pytest.approx(2 * (led.ended_at - led.started_at))
    assert led.allocated_gpu_s <= 2 * (seen - started) + 1e-6


def test_every_running_attempt_is_stored_seen_by_the_pass_and_never_backwards(client, loop, engine):
    """The observe pass stores the last-seen time of every running attempt that is due (one
    statement for all of them), at most every 15 s each, and never moves one backwards."""
    from broker.models import Attempt

    jids = [submit(client, gpus=1) for _ in range(3)]
    loop.tick()
    loop.tick()
    assert {get(client, j)["status"] for j in jids} == {"RUNNING"}

    def seen() -> dict[str, float | None]:
        with Session(engine) as s:
            return {j: s.get(Attempt, (j, 1)).last_seen_at for j in jids}

    CLOCK.advance(20.0)
    loop.tick()
    first = CLOCK()
    assert seen() == {j: first for j in jids}
    CLOCK.advance(5.0)  # within 15 s of the last write: nothing written
    loop.tick()
    assert seen() == {j: first for j in jids}
    with Session(engine) as s:  # a later time already stored (another writer) stays
        a = s.get(Attempt, (jids[0], 1))
        a.last_seen_at = first + 1000.0
        s.add(a)
        s.commit()
    CLOCK.advance(20.0)
    loop.tick()
    assert seen() == {jids[0]: first + 1000.0, jids[1]: CLOCK(), jids[2]: CLOCK()}


def test_a_job_that_ends_before_it_is_seen_running_keeps_its_gpus_in_the_placements(client, loop, fake_executor):
    jid = submit(client, gpus=2)
    loop.tick()  # admitted and launched: STARTING
    fake_executor.finish(jid, 1, exit_code=0)  # done before the loop ever saw it RUNNING
    loop.tick()
    j = get(client, jid)
    assert j["status"] == "SUCCEEDED" and j["started_at"] is not None
    assert all(len(p["cuda_visible_devices"].split(",")) == 2 for p in j["placements"]), j["placements"]


def test_lost_worker_requeues_while_retries_allow(client, loop, fake_executor, settings, engine):
    jid = submit(client, gpus=1, max_retries=1)
    loop.tick()
    loop.tick()
    first = get(client, jid)["placements"][0]["node"]
    fake_executor.lose(jid, 1)
    loop.tick()  # LOST: the rest is stopped (nothing left), requeued as attempt 2
    loop.tick()
    j = get(client, jid)
    assert j["attempt"] == 2 and j["status"] in ("STARTING", "RUNNING", "ADMITTED")
    # the node that lost a worker is held out (the executor still calls it alive), so the
    # retry runs elsewhere instead of being lost on it again
    held = next(n for n in client.get("/api/v1/nodes").json()["items"] if n["id"] == first)
    assert held["state"] == "unhealthy" and "lost" in held["state_reason"], held
    assert [p["node"] for p in j["placements"] if p["attempt"] == 2] != [first]
    fake_executor.lose(jid, 2)
    loop.tick()
    loop.tick()
    j = get(client, jid)
    assert j["status"] == "FAILED" and "no retries left" in j["message"]
    CLOCK.advance(settings.lost_node_hold_s + 1)  # the executor kept calling them alive: back in
    with Session(engine) as s:  # agents' heartbeats touch the rows meanwhile: no effect on the hold
        for n in s.exec(select(Node)).all():
            n.updated_at = CLOCK()
            s.add(n)
        s.commit()
    loop.tick()
    states = {n["id"]: n["state"] for n in client.get("/api/v1/nodes").json()["items"]}
    assert set(states.values()) == {"ready"}, states


def test_operation_reclaims_capacity_lent_to_innovation(client, loop, fake_executor):
    # Innovation borrows the idle operation pool (it lends), then operation needs it back.
    # The operation pool has 8 GPUs of which 4 are guaranteed (shs 2, ouh 2) and never lent.
    too_big = submit(client, gpus=8, project="ouh-liver", pool="operation")
    inno = submit(client, gpus=4, project="ouh-liver", pool="operation")
    loop.tick()
    j = get(client, inno)
    assert j["status"] == "STARTING" and j["borrowing"] is True, j
    assert get(client, too_big)["pending_reason"]["code"] == "QUOTA_LIMIT"
    submit_time = j["submit_time"]
    loop.tick()
    op = submit(client, gpus=6, project="shs-ops-triage", **{"class": "operation"})
    loop.tick()  # victim chosen and stopped
    assert get(client, inno)["status"] in ("PREEMPTED", "PENDING")
    loop.tick()
    loop.tick()
    assert get(client, op)["status"] in ("STARTING", "RUNNING")
    j = get(client, inno)
    assert j["status"] == "PENDING" and j["attempt"] == 2 and j["submit_time"] == submit_time


def test_an_operation_burst_beyond_its_pool_runs_on_idle_innovation_nodes(client, loop, fake_executor):
    """The operation pool (op-1, 8 GPUs) is full of operation work (6 + 2 GPUs): the next one
    starts at once on an idle innovation node instead of waiting for operation work to end,
    and preempts nothing; pinned to the operation pool, it waits (Policy.operation_overflow)."""
    full = submit(client, gpus=6, project="shs-ops-triage", max_runtime_s=600, **{"class": "operation"})
    radiology = submit(client, gpus=2, project="ouh-radiology", max_runtime_s=600, **{"class": "operation"})
    loop.tick()
    for jid in (full, radiology):
        assert [p["node"] for p in get(client, jid)["placements"]] == ["op-1"], get(client, jid)["pending_reason"]
    burst = submit(client, gpus=2, project="shs-ops-triage", max_runtime_s=600, **{"class": "operation"})
    pinned = submit(client, gpus=2, project="shs-ops-triage", max_runtime_s=600, pool="operation",
                    **{"class": "operation"})
    loop.tick()
    j = get(client, burst)
    assert j["status"] in ("STARTING", "RUNNING"), j
    assert j["flavor"]["pool"] == "innovation" and j["placements"][0]["node"].startswith("inno-"), j
    assert all(get(client, jid)["status"] in ("STARTING", "RUNNING") for jid in (full, radiology))  # no victim
    assert get(client, pinned)["status"] == "PENDING"


def test_preempted_job_gets_a_notice_with_its_pools_grace_and_keeps_its_checkpoint_dir(
        client, loop, fake_executor, settings):
    """The victim is stopped with reason "preempted", the preemption message and the grace of
    the pool and class it ran in (operation pool, innovation class here: not the default);
    a checkpointable job's attempts all get the same checkpoint directory."""
    settings.grace_by = {"operation/innovation": 7.0, "innovation": 99.0}
    try:
        inno = submit(client, gpus=4, project="ouh-liver", pool="operation", checkpointable=True)
        loop.tick()
        first = fake_executor.specs[(inno, 1)]
        assert first.grace_s == 7.0
        assert first.checkpoint_dir == str(settings.checkpoint_dir("ouh-liver", inno))
        loop.tick()
        submit(client, gpus=6, project="shs-ops-triage", **{"class": "operation"})
        loop.tick()
        (stop,) = [st for st in fake_executor.stops if st[0] == inno]
        _, attempt, grace_s, message, reason = stop
        assert (attempt, grace_s, reason) == (1, 7.0, "preempted")
        assert message == get(client, inno)["message"] and message  # the cycle's explanation
        for _ in range(6):
            loop.tick()
            if get(client, inno)["status"] == "PENDING":
                break
        plain = submit(client, gpus=1, project="ouh-liver")
        loop.tick()
        spec = fake_executor.specs[(plain, 1)]
        assert spec.grace_s == 99.0 and spec.checkpoint_dir == ""  # innovation pool; not checkpointable
    finally:
        settings.grace_by = {}


@pytest.mark.parametrize("case, grace_by, pool, cls, expected", [
    ("default", {}, "innovation", "innovation", 30.0),
    ("by_class", {"innovation": 120}, "operation", "innovation", 120.0),
    ("by_pool", {"operation": 10, "innovation": 120}, "operation", "innovation", 10.0),
    ("pool_and_class_wins", {"operation/innovation": 5, "operation": 10}, "operation", "innovation", 5.0),
    ("other_class_untouched", {"operation/innovation": 5}, "operation", "operation", 30.0),
    ("no_pool_yet", {"innovation": 60}, None, "innovation", 60.0),
])
def test_grace_is_chosen_by_pool_and_class(case, grace_by, pool, cls, expected):
    from broker.settings import Settings

    assert Settings(grace_period_s=30.0, grace_by=grace_by).grace_for(pool, cls) == expected, case


def test_restarted_loop_adopts_running_job(client, settings, engine, fake_executor):
    first = SchedulingLoop(settings, engine, fake_executor, clock=CLOCK)
    jid = submit(client, gpus=1)
    first.tick()
    first.tick()
    assert get(client, jid)["status"] == "RUNNING"
    second = SchedulingLoop(settings, engine, fake_executor, clock=CLOCK)  # a broker restart
    fake_executor.finish(jid, 1, exit_code=0)
    second.tick()
    assert get(client, jid)["status"] == "SUCCEEDED"
    assert fake_executor.launches.count((jid, 1)) == 1


def test_reconcile_releases_orphaned_attempt(engine, fake_executor):
    from broker.ports import LaunchSpec, WorkerLaunch

    fake_executor.launch(LaunchSpec(job_id="ghost", attempt=1, image="x", command=("true",), env={},
                                    runtime="container", workers=(WorkerLaunch(0, "inno-1", 1, 1, 1),),
                                    max_runtime_s=60))
    assert ("ghost", 1) in release_orphans(engine, fake_executor)
    assert ("ghost", 1) not in fake_executor.attempts()


def test_node_leaving_inventory_turns_unhealthy_and_recovers(loop, fake_executor, engine):
    fake_executor.set_nodes([n for n in inventory() if n.id != "inno-2"])
    loop.tick()
    with Session(engine) as s:
        n = s.get(Node, "inno-2")
        assert n.state == "unhealthy" and "inventory" in n.state_reason
    fake_executor.set_nodes(inventory())
    loop.tick()
    with Session(engine) as s:
        assert s.get(Node, "inno-2").state == "ready"


def test_no_double_admission_from_two_loops(client, settings, engine, fake_executor):
    a = SchedulingLoop(settings, engine, fake_executor, clock=CLOCK)
    b = SchedulingLoop(settings, engine, fake_executor, clock=CLOCK)
    jid = submit(client, gpus=1)
    a_rep, b_rep = TickReport(), TickReport()
    a.schedule(a_rep)
    b.schedule(b_rep)
    assert jid in a_rep.admitted and jid not in b_rep.admitted
    with Session(engine) as s:
        assert s.execute(select(Job).where(Job.id == jid)).scalar_one().attempt == 1


def test_max_running_caps_a_projects_concurrency(client, loop, engine, new_project):
    from broker.models import Project

    pid = new_project()
    with Session(engine) as s:
        p = s.get(Project, pid)
        p.max_running = 1
        s.add(p)
        s.commit()
    first = submit(client, gpus=1, project=pid)
    second = submit(client, gpus=1, project=pid)
    loop.tick()
    assert get(client, first)["status"] == "STARTING"
    j = get(client, second)
    assert j["status"] == "PENDING"
    assert j["pending_reason"]["code"] == "QUOTA_LIMIT"
    assert j["pending_reason"]["details"] == {"level": "concurrency", "project": pid, "max_running": 1, "running": 1}
    client.post(f"/api/v1/jobs/{first}/cancel")
    loop.tick()
    loop.tick()
    assert get(client, second)["status"] in ("STARTING", "RUNNING")


# ------------------------------------------------------------------ admin: nodes between pools, cordon


def patch_node(client, nid, **body):
    return client.patch(f"/api/v1/nodes/{nid}", json=body)


def node_row(client, nid) -> dict:
    return next(n for n in client.get("/api/v1/nodes").json()["items"] if n["id"] == nid)


def test_admin_moves_a_node_and_the_executor_sync_keeps_the_move(client, loop, engine):
    r = patch_node(client, "inno-2", pool="operation")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "inno-2", "pool": "operation", "pool_source": "admin", "state": "ready",
                        "state_reason": "", "health_state": "ready", "admin_state": None}
    loop.tick()  # the executor still labels it innovation: the admin's move wins
    assert (node_row(client, "inno-2")["pool"], node_row(client, "inno-2")["pool_source"]) == ("operation", "admin")
    # an operation job on A100s can only run on the moved node now
    jid = submit(client, gpus=2, gpu_model="A100", project="shs-ops-triage", pool="operation",
                 **{"class": "operation"})
    loop.tick()
    j = get(client, jid)
    assert j["status"] in ("STARTING", "RUNNING"), j.get("pending_reason")
    assert {w["node"] for w in j["placements"]} == {"inno-2"}
    r = patch_node(client, "inno-2", pool=None)  # going back is a move too: refused while busy
    assert r.status_code == 409 and r.json()["error"]["code"] == "NODE_BUSY", r.text
    client.post(f"/api/v1/jobs/{jid}/cancel")
    loop.tick()
    loop.tick()
    r = patch_node(client, "inno-2", pool=None)  # back to the executor's label, at once
    assert r.status_code == 200 and (r.json()["pool"], r.json()["pool_source"]) == ("innovation", "executor")
    loop.tick()
    assert (node_row(client, "inno-2")["pool"], node_row(client, "inno-2")["pool_source"]) == ("innovation", "executor")
    actions = [e for e in client.get("/api/v1/audit", params={"action": "node.update"}).json()["items"]]
    assert actions and actions[0]["target_id"] == "inno-2"
    assert actions[0]["before"]["pool"] == "operation" and actions[0]["after"]["pool_source"] == "executor"


def test_a_node_with_running_work_cannot_move(client, loop):
    jid = submit(client, gpus=4, project="ouh-liver")
    loop.tick()
    node = get(client, jid)["placements"][0]["node"]
    r = patch_node(client, node, pool="operation")
    assert r.status_code == 409 and r.json()["error"]["code"] == "NODE_BUSY", r.text
    assert jid in r.json()["error"]["details"]["jobs"]
    assert node_row(client, node)["pool"] == "innovation"  # nothing changed


def test_a_move_that_breaks_the_pools_guarantees_is_refused(client):
    r = patch_node(client, "op-1", pool="innovation")  # the operation pool's guarantees need op-1
    assert r.status_code == 422 and r.json()["error"]["code"] == "QUOTA_INVALID", r.text
    assert node_row(client, "op-1")["pool"] == "operation"


def test_cordon_keeps_new_work_off_and_uncordon_lifts_only_the_admins_own(client, loop, fake_executor, engine):
    assert patch_node(client, "inno-1", state="cordoned", reason="firmware update").status_code == 200
    assert patch_node(client, "inno-2", state="draining").status_code == 200
    loop.tick()  # the executor sync leaves an admin's state alone
    row = node_row(client, "inno-1")
    assert (row["state"], row["state_reason"]) == ("cordoned", "admin: firmware update")
    jid = submit(client, gpus=1, project="ouh-liver", pool="innovation")
    loop.tick()
    assert get(client, jid)["status"] == "PENDING"  # both innovation nodes are out
    assert patch_node(client, "inno-1", state="ready").status_code == 200
    assert patch_node(client, "inno-2", state="ready").status_code == 200
    loop.tick()
    assert get(client, jid)["status"] in ("STARTING", "RUNNING")
    # a node the executor took out is not the admin's to bring back
    fake_executor.set_nodes([n for n in inventory() if n.id != "inno-2"])
    loop.tick()
    r = patch_node(client, "inno-2", state="ready")
    assert r.status_code == 409 and r.json()["error"]["code"] == "NODE_STATE_NOT_ADMIN", r.text
    # cordoning it keeps the health state; lifting the cordon does not make it schedulable
    assert patch_node(client, "inno-2", state="cordoned", reason="maintenance").json()["health_state"] == "unhealthy"
    r = patch_node(client, "inno-2", state="ready").json()
    assert (r["state"], r["admin_state"], r["health_state"]) == ("unhealthy", None, "unhealthy"), r
    # and a cordon set while it was out holds when it comes back
    patch_node(client, "inno-2", state="cordoned", reason="maintenance")
    fake_executor.set_nodes(inventory())
    loop.tick()
    row = node_row(client, "inno-2")
    assert (row["state"], row["health_state"], row["admin_state"]) == ("cordoned", "ready", "cordoned"), row
    assert patch_node(client, "inno-2", state="ready").status_code == 200
    assert node_row(client, "inno-2")["state"] == "ready"


@pytest.mark.parametrize("body, status, code", [
    ({"pool": "nowhere"}, 422, "UNKNOWN_POOL"),
    ({"pool": "Not A Slug"}, 422, "VALIDATION_ERROR"),
    ({"state": "gone"}, 422, "VALIDATION_ERROR"),
    ({"reason": "no state"}, 422, "REASON_WITHOUT_STATE"),
    ({"gpus": 64}, 422, "VALIDATION_ERROR"),
    ({}, 422, "EMPTY_PATCH"),
])
def test_node_patch_refuses_bad_input(client, body, status, code):
    r = patch_node(client, "inno-1", **body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


def test_unknown_node_is_404(client):
    r = patch_node(client, "no-such-node", state="cordoned")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NODE_NOT_FOUND"


def test_a_node_moved_during_the_cycle_takes_no_admission(client, loop, engine, monkeypatch):
    """An admin's move that commits while the loop computes its cycle: the admission onto that
    node is skipped (not applied with the old pool); the next tick decides with the new pool."""
    import broker.services.scheduling as sched

    assert patch_node(client, "inno-2", state="cordoned").status_code == 200  # only inno-1 can take it
    jid = submit(client, gpus=4, project="ouh-liver", pool="innovation")
    real = sched.run_cycle

    def cycle_then_concurrent_move(snap, now, policy):
        result = real(snap, now, policy)
        with Session(engine) as s:  # another request's transaction, committed meanwhile
            n = s.get(Node, "inno-1")
            n.pool, n.pool_override = "operation", "operation"
            s.add(n)
            s.commit()
        return result

    monkeypatch.setattr(sched, "run_cycle", cycle_then_concurrent_move)
    loop.tick()
    monkeypatch.setattr(sched, "run_cycle", real)
    assert get(client, jid)["status"] == "PENDING"
    loop.tick()  # inno-1 is in the operation pool now: the innovation-pinned job waits
    j = get(client, jid)
    assert j["status"] == "PENDING" and not j["placements"], j
    assert patch_node(client, "inno-1", pool=None).status_code == 200
    assert patch_node(client, "inno-2", state="ready").status_code == 200
    loop.tick()
    assert get(client, jid)["status"] in ("STARTING", "RUNNING")
