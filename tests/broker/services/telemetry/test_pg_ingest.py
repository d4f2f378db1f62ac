"""The PostgreSQL one-statement ingest path against the generic path: same rows, same answers."""

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session

from broker.services.telemetry.service import TelemetryConfig, TelemetryService
from tests.broker.services.telemetry.builders import gpu, new_node, node_state, report

T0 = 1_800_000_000.0


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("the fast path exists on PostgreSQL only")
    return engine


def stored(engine, node):
    with Session(engine) as s:
        return [tuple(r) for r in s.execute(text(
            "SELECT gpu_index, ts, util_gpu, memory_used_mb, energy_mj, gr_active, xid, job_id, attempt, project_id, "
            "job_memory_mb FROM gpu_samples WHERE node_id=:n ORDER BY ts, gpu_index"), {"n": node})]


@pytest.mark.parametrize("autocommit", [True, False], ids=["own-autocommit-pool", "injected-transactional-pool"])
def test_fast_path_stores_what_it_acknowledges(pg, autocommit):
    kw = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    ie = create_engine(pg.url, pool_size=2, **kw)
    svc = TelemetryService(pg, TelemetryConfig(), ingest_engine=ie)
    node = new_node(pg)
    try:
        batch = [gpu(0, T0, util=10.0, energy_mj=5, job="j1", project="p1", mem=300.0), gpu(1, T0, util=20.0)]
        first = svc.ingest(agent_node_id=node, report=report(node, 1, batch), now=T0)  # generic path (first)
        second = svc.ingest(agent_node_id=node, report=report(node, 2, [gpu(0, T0 + 1, xid=13)]), now=T0 + 1)
        dup = svc.ingest(agent_node_id=node, report=report(node, 2, [gpu(0, T0 + 1)]), now=T0 + 2)
        fatal = svc.ingest(agent_node_id=node, report=report(node, 3, [gpu(2, T0 + 3, xid=79)]), now=T0 + 3)
    finally:
        svc.close()
        ie.dispose()
    assert (first.samples, second.samples, dup.duplicate, fatal.node_status) == (2, 1, True, "draining")
    assert stored(pg, node) == [
        (0, T0, 10.0, 300.0, 5, None, None, "j1", 1, "p1", 300.0),
        (1, T0, 20.0, 1000.0, None, None, None, None, None, None, None),
        (0, T0 + 1, 50.0, 1000.0, None, None, 13, None, None, None, None),
        (2, T0 + 3, 50.0, 1000.0, None, None, 79, None, None, None, None),
    ]
    assert node_state(pg, node)[0] == "draining"
