"""Rollups, late replay, retention and the read queries, on SQLite and PostgreSQL.

Every test uses its own node and job ids and its own time window far from the others, and
the rollup watermarks are shared per database, so each test runs rollups on its own window
by resetting the marks first.
"""

import time

import pytest
from sqlalchemy import text
from sqlmodel import Session

from broker.errors import Invalid
from broker.services.telemetry import queries, rollup
from broker.services.telemetry.service import TelemetryConfig, TelemetryService
from tests.broker.services.telemetry.builders import agent_token, gpu, new_node, report

H = 3600.0


def reset_marks(engine, at: float):
    with Session(engine) as s:
        s.execute(text("DELETE FROM telemetry_marks"))
        s.commit()
    # first run initialises the watermark at the oldest sample; start from `at` instead
    with Session(engine) as s:
        s.execute(text("INSERT INTO telemetry_marks (name, value) VALUES ('rollup_1m', :v), ('rollup_1h', :h)"),
                  {"v": at, "h": at - at % H})
        s.commit()


def feed(svc, node, t0, minutes, per_minute=6, util=lambda m, k: 10.0 * m + k, job=None, project=None, seq0=1):
    """`minutes` minutes of readings every 60/per_minute s on GPUs 0 and 1, one report per minute."""
    seq = seq0
    for m in range(minutes):
        samples = []
        for k in range(per_minute):
            ts = t0 + m * 60 + k * (60 / per_minute)
            samples += [gpu(0, ts, util=util(m, k), mem=1000.0 + k, job=job, project=project),
                        gpu(1, ts, util=0.0, mem=10.0)]
        svc.ingest(agent_node_id=node, report=report(node, seq, samples), now=t0 + m * 60 + 60)
        seq += 1
    return seq


def minute_rows(engine, node, res=60):
    with Session(engine) as s:
        return s.execute(text("SELECT gpu_index, bucket, job_id, samples, util_sum / util_n, util_max, mem_max "
                              "FROM gpu_rollups WHERE node_id=:n AND resolution_s=:r ORDER BY bucket, gpu_index"),
                         {"n": node, "r": res}).all()


@pytest.fixture
def svc(engine):
    svc = TelemetryService(engine, TelemetryConfig())
    yield svc
    svc.close()


def test_minute_rollup_avg_max(svc, engine):
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % H  # hour-aligned
    node = new_node(engine)
    reset_marks(engine, t0)
    feed(svc, node, t0, 3)
    rollup.run_rollups(engine, now=t0 + 3 * 60 + 120)
    rows = [tuple(r) for r in minute_rows(engine, node)]
    assert [(r[0], r[1] - t0, r[3]) for r in rows] == [(0, 0, 6), (1, 0, 6), (0, 60, 6), (1, 60, 6), (0, 120, 6), (1, 120, 6)]
    gpu0 = [r for r in rows if r[0] == 0]
    assert [r[4] for r in gpu0] == [2.5, 12.5, 22.5]  # avg of 10m + 0..5
    assert [r[5] for r in gpu0] == [5.0, 15.0, 25.0] and gpu0[0][6] == 1005.0


def test_rerun_is_idempotent_and_hours_come_from_minutes(svc, engine):
    t0 = 1_700_100_000.0 - 1_700_100_000.0 % H
    node = new_node(engine)
    reset_marks(engine, t0)
    feed(svc, node, t0, 61, per_minute=2, util=lambda m, k: 50.0)
    now = t0 + 62 * 60 + 120
    rollup.run_rollups(engine, now=now)
    first = minute_rows(engine, node)
    rollup.run_rollups(engine, now=now)
    assert minute_rows(engine, node) == first
    hours = minute_rows(engine, node, res=3600)
    assert [(r[0], r[1], r[3], r[4]) for r in hours] == [(0, t0, 120, 50.0), (1, t0, 120, 0.0)]


def test_late_replay_recomputes_its_minutes(svc, engine):
    t0 = 1_700_200_000.0 - 1_700_200_000.0 % H
    node = new_node(engine)
    reset_marks(engine, t0)
    seq = feed(svc, node, t0, 2)
    rollup.run_rollups(engine, now=t0 + 20 * 60)  # minutes 0..17 done, 0 and 1 have data
    before = {(r[0], r[1]): r[3] for r in minute_rows(engine, node)}
    # the agent replays a buffered report for minute 1 (later samples of that minute) much later
    late = [gpu(0, t0 + 60 + 55, util=99.0), gpu(0, t0 + 60 + 56, util=99.0)]
    svc.ingest(agent_node_id=node, report=report(node, seq, late), now=t0 + 30 * 60)
    rollup.run_rollups(engine, now=t0 + 31 * 60)
    after = {(r[0], r[1]): (r[3], r[5]) for r in minute_rows(engine, node)}
    assert before[(0, t0 + 60)] == 6 and after[(0, t0 + 60)] == (8, 99.0)
    assert after[(0, t0)] == (6, 5.0)  # untouched minute recomputed to the same values


def test_retention_deletes_old_raw_keeps_rollups(svc, engine):
    t0 = 1_700_300_000.0 - 1_700_300_000.0 % H
    node = new_node(engine)
    reset_marks(engine, t0)
    feed(svc, node, t0, 2)
    rollup.run_rollups(engine, now=t0 + 10 * 60)
    out = rollup.apply_retention(engine, now=t0 + 7 * 86400 + 60, raw_s=7 * 86400, minute_s=31 * 86400,
                                 hour_s=400 * 86400)
    assert out["gpu_samples"] >= 12
    with Session(engine) as s:
        left = s.execute(text("SELECT COUNT(*) FROM gpu_samples WHERE node_id=:n"), {"n": node}).scalar()
    assert left == 12  # minute 0 is older than the cutoff (t0 + 60), minute 1 is not
    assert len(minute_rows(engine, node)) == 4


def test_job_usage_avg_and_peak_from_attributed_samples(svc, engine):
    t0 = 1_700_400_000.0
    node = new_node(engine)
    feed(svc, node, t0, 2, job="job-use-1", project="ouh-liver")
    u = queries.job_usage(engine, "job-use-1")
    assert (u["samples"], u["gpus"], u["source"]) == (12, 1, "raw")
    assert u["gpu_util_avg"] == pytest.approx(7.5) and u["gpu_util_peak"] == 15.0
    assert u["memory_used_mb_avg"] == pytest.approx(1002.5) and u["memory_used_mb_peak"] == 1005.0
    # 12 readings 10 s apart = 120 s at 7.5 % average
    assert u["used_gpu_s"] == pytest.approx(0.075 * 120) and u["energy_j"] is None  # gpu() sends no energy
    assert queries.job_usage(engine, "no-such-job")["samples"] == 0


def test_job_energy_from_the_counter(svc, engine):
    node = new_node(engine)
    t0 = 1_700_450_000.0
    samples = [gpu(i, t0 + k, util=100.0, job="job-energy", energy_mj=1_000_000 + 500_000 * k + i)
               for k in range(3) for i in range(2)]
    svc.ingest(agent_node_id=node, report=report(node, 1, samples), now=t0 + 10)
    u = queries.job_usage(engine, "job-energy")
    assert u["energy_j"] == pytest.approx(2 * 1000.0)  # each GPU's counter rose 1,000,000 mJ
    assert u["used_gpu_s"] == pytest.approx(2 * 3.0) and u["gpus"] == 2


def test_job_usage_falls_back_to_rollups_after_retention(svc, engine):
    t0 = 1_700_500_000.0 - 1_700_500_000.0 % H
    node = new_node(engine)
    reset_marks(engine, t0)
    feed(svc, node, t0, 2, job="job-old-1", project="ouh-liver")
    rollup.run_rollups(engine, now=t0 + 10 * 60)
    rollup.apply_retention(engine, now=t0 + 8 * 86400, raw_s=7 * 86400, minute_s=31 * 86400, hour_s=400 * 86400)
    u = queries.job_usage(engine, "job-old-1")
    assert u["source"] == "1m" and u["samples"] == 12
    assert u["gpu_util_avg"] == pytest.approx(7.5) and u["gpu_util_peak"] == 15.0


def test_node_and_project_series(svc, engine):
    t0 = 1_700_600_000.0 - 1_700_600_000.0 % H
    node = new_node(engine)
    reset_marks(engine, t0)
    feed(svc, node, t0, 3, job="job-ser-1", project="proj-series")
    rollup.run_rollups(engine, now=t0 + 10 * 60)
    raw = queries.node_series(engine, node, t0, t0 + 60, "raw", gpu=0)
    assert raw["resolution"] == "raw" and len(raw["points"]) == 6 and raw["points"][0]["job_id"] == "job-ser-1"
    m = queries.node_series(engine, node, t0, t0 + 3 * 60, "1m")
    assert [(p["gpu"], p["ts"] - t0, p["samples"]) for p in m["points"]][:2] == [(0, 0.0, 6), (1, 0.0, 6)]
    proj = queries.project_series(engine, "proj-series", t0, t0 + 3 * 60, "1m")
    assert [(p["ts"] - t0, p["gpus"]) for p in proj["points"]] == [(0, 1), (60, 1), (120, 1)]
    assert proj["points"][2]["util_avg"] == pytest.approx(22.5)


@pytest.mark.parametrize(
    "name,resolution,span,expected",
    [
        ("auto short is raw", "auto", 3600, "raw"),
        ("auto day is minutes", "auto", 86400, "1m"),
        ("auto month is hours", "auto", 30 * 86400, "1h"),
        ("explicit raw within bound", "raw", 3600, "raw"),
    ],
)
def test_pick_resolution(name, resolution, span, expected):
    assert queries.pick_resolution(resolution, 0.0, float(span)) == expected


@pytest.mark.parametrize(
    "name,resolution,start,end,code",
    [
        ("raw over two days", "raw", 0.0, 2 * 86400.0, "RANGE_TOO_LARGE"),
        ("end before start", "auto", 10.0, 5.0, "BAD_RANGE"),
        ("unknown resolution", "5s", 0.0, 10.0, "BAD_RESOLUTION"),
    ],
)
def test_bad_ranges(name, resolution, start, end, code):
    with pytest.raises(Invalid) as e:
        queries.pick_resolution(resolution, start, end)
    assert e.value.code == code


def test_read_routes(app, client, engine):
    node = new_node(engine)
    now = time.time()
    tok = agent_token(engine, node)
    from agents.agent import encode

    body = encode(report(node, 1, [gpu(0, now - 5, util=40.0), gpu(0, now - 4, util=60.0)]))
    assert client.post("/api/v1/telemetry", content=body, headers={"Authorization": f"Bearer {tok}"}).status_code == 200
    r = client.get(f"/api/v1/telemetry/nodes/{node}", params={"start": now - 60, "end": now + 1, "resolution": "raw"})
    assert r.status_code == 200 and [p["util_gpu"] for p in r.json()["points"]] == [40.0, 60.0]
    nodes = {n["node_id"]: n for n in client.get("/api/v1/telemetry/nodes").json()["nodes"]}
    assert nodes[node]["has_agent"] and nodes[node]["state"] == "ready" and nodes[node]["reports"] == 1
    bad = client.get(f"/api/v1/telemetry/nodes/{node}", params={"start": 0, "end": 3 * 86400, "resolution": "raw"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "RANGE_TOO_LARGE"
    assert client.get("/api/v1/telemetry/jobs/nope/usage").status_code == 404
    assert client.get("/api/v1/telemetry/projects/nope").status_code == 404
    assert client.get("/api/v1/telemetry/projects/ouh-liver").status_code == 200
    # agent tokens may not read
    assert client.get("/api/v1/telemetry/nodes", headers={"Authorization": f"Bearer {tok}"}).status_code == 403
