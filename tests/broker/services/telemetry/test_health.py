"""Node health from telemetry: pure rules (table) and the DB transitions on SQLite and PostgreSQL."""

import pytest

from broker.services.telemetry import health
from broker.services.telemetry.health import DRAINING, PREFIX, READY, UNHEALTHY, HealthConfig
from broker.services.telemetry.service import TelemetryConfig, TelemetryService
from tests.broker.services.telemetry.builders import gpu, new_node, node_state, report

CFG = HealthConfig(heartbeat_timeout_s=60.0, fatal_hold_s=3600.0)
T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    "name,samples,expected",
    [
        ("healthy", [gpu(0), gpu(1)], []),
        ("fatal xid 79", [gpu(2, xid=79)], ["GPU 2 Xid 79 (GPU has fallen off the bus)"]),
        ("non-fatal xid 13 (app error)", [gpu(0, xid=13)], []),
        ("uncorrectable ECC", [gpu(1, ecc_uncorrectable=3)], ["GPU 1 uncorrectable ECC errors: 3"]),
        ("correctable ECC only", [gpu(1, ecc_correctable=30)], []),
        ("row remap failed", [gpu(0, remapped_rows_failure=True)], ["GPU 0 row remapping failed"]),
        ("same fault twice in a batch", [gpu(0, xid=48), gpu(0, xid=48)], ["GPU 0 Xid 48 (double-bit ECC error)"]),
    ],
)
def test_gpu_faults(name, samples, expected):
    assert health.gpu_faults(samples) == expected


R_XID = PREFIX + "GPU 0 Xid 79 (GPU has fallen off the bus)"


@pytest.mark.parametrize(
    "name,state,reason,faults,fatal_at,started,now,expected",
    [
        ("healthy stays ready", READY, "", [], None, 0, T0, (READY, "")),
        ("fault drains", READY, "", ["GPU 0 Xid 79 (x)"], T0, 0, T0, (DRAINING, PREFIX + "GPU 0 Xid 79 (x)")),
        ("latched within hold", DRAINING, R_XID, [], T0, 0, T0 + 60, (DRAINING, PREFIX + "GPU 0 Xid 79")),
        ("hold expired recovers", DRAINING, R_XID, [], T0, 0, T0 + 3601, (READY, "")),
        ("agent restarted after fault recovers", DRAINING, R_XID, [], T0, T0 + 30, T0 + 60, (READY, "")),
        ("our unhealthy recovers on report", UNHEALTHY, PREFIX + "no heartbeat", [], None, 0, T0, (READY, "")),
        ("admin cordon untouched", "cordoned", "maintenance", ["GPU 0 Xid 79 (x)"], T0, 0, T0,
         ("cordoned", "maintenance")),
        ("reconciler's unhealthy untouched", UNHEALTHY, "ray node lost", [], None, 0, T0, (UNHEALTHY, "ray node lost")),
    ],
)
def test_on_report(name, state, reason, faults, fatal_at, started, now, expected):
    fatal_reason = "GPU 0 Xid 79" if fatal_at else ""
    assert health.on_report(state, reason, faults, fatal_at, fatal_reason, started, now, CFG) == expected


@pytest.mark.parametrize(
    "name,state,reason,silent_s,expected_state",
    [
        ("recent report", READY, "", 30, READY),
        ("silent too long", READY, "", 61, UNHEALTHY),
        ("our draining goes unhealthy", DRAINING, PREFIX + "x", 120, UNHEALTHY),
        ("cordoned untouched", "cordoned", "admin", 600, "cordoned"),
    ],
)
def test_on_silence(name, state, reason, silent_s, expected_state):
    assert health.on_silence(state, reason, T0, T0 + silent_s, CFG)[0] == expected_state


@pytest.fixture
def svc(engine):
    svc = TelemetryService(engine, TelemetryConfig(health=CFG), clock=lambda: T0)
    yield svc
    svc.close()


def test_fatal_xid_drains_then_recovers_after_hold(svc, engine):
    node = new_node(engine)
    svc.ingest(agent_node_id=node, report=report(node, 1, [gpu(0, T0), gpu(3, T0, xid=79)]), now=T0)
    state, reason, _ = node_state(engine, node)
    assert state == DRAINING and "GPU 3 Xid 79" in reason
    svc.ingest(agent_node_id=node, report=report(node, 2, [gpu(3, T0 + 10)]), now=T0 + 10)
    assert node_state(engine, node)[0] == DRAINING  # the Xid is latched
    svc.ingest(agent_node_id=node, report=report(node, 3, [gpu(3, T0 + 3700)]), now=T0 + 3700)
    assert node_state(engine, node)[:2] == (READY, "")


def test_ecc_state_drains_until_cleared(svc, engine):
    node = new_node(engine)
    svc.ingest(agent_node_id=node, report=report(node, 1, [gpu(1, T0, ecc_uncorrectable=2)]), now=T0)
    assert node_state(engine, node)[0] == DRAINING
    svc.ingest(agent_node_id=node, report=report(node, 2, [gpu(1, T0 + 10, ecc_uncorrectable=0)], started_at=T0 + 5),
               now=T0 + 10)
    assert node_state(engine, node)[0] == READY  # GPU reset cleared the counter, agent restarted


def test_heartbeat_timeout_marks_unhealthy_and_report_recovers(svc, engine):
    node = new_node(engine)
    quiet = new_node(engine)
    svc.ingest(agent_node_id=node, report=report(node, 1, [gpu(0, T0)]), now=T0)
    svc.ingest(agent_node_id=quiet, report=report(quiet, 1, [gpu(0, T0 + 50)]), now=T0 + 50)
    changed = svc.check_heartbeats(now=T0 + 61)
    assert (node, UNHEALTHY) in [(c[0], c[1]) for c in changed]
    assert quiet not in [c[0] for c in changed]
    assert node_state(engine, node)[1].startswith(PREFIX + "no heartbeat for 61 s")
    assert node not in [c[0] for c in svc.check_heartbeats(now=T0 + 62)]  # already unhealthy: no new change
    svc.ingest(agent_node_id=node, report=report(node, 2, [gpu(0, T0 + 70)]), now=T0 + 70)
    assert node_state(engine, node)[:2] == (READY, "")


def test_nodes_without_agent_are_never_marked(svc, engine):
    node = new_node(engine)
    svc.check_heartbeats(now=T0 + 10_000)
    assert node_state(engine, node)[0] == READY


def test_cordoned_node_stays_cordoned(svc, engine):
    node = new_node(engine, state="cordoned", reason="admin: maintenance")
    svc.ingest(agent_node_id=node, report=report(node, 1, [gpu(0, T0, xid=79)]), now=T0)
    svc.check_heartbeats(now=T0 + 1000)
    assert node_state(engine, node)[:2] == ("cordoned", "admin: maintenance")
