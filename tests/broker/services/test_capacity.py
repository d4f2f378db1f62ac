"""Capacity what-if: export the broker's recorded history, replay it with the simulator on the
live region, and check that the replay reproduces what really happened.

The fidelity test drives a real broker (the API, the scheduling loop, the real core and ledger
over SQLite) with the fake executor on a simulated clock through a few hundred jobs, then
exports that history and replays it: the replay's average and p95 wait must be within 20 % of
the recorded ones. The other tests pin the export's columns, the changes (add / remove / quota
file), the figures and the SVG.
"""

from __future__ import annotations

import heapq
import time
import random

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from broker.adapters.fake import FakeExecutor, Outcome, node
from broker.app import create_app
from broker.db import make_engine, migrate
from broker.errors import Invalid
from broker.services import capacity as cap
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.services.scheduling import SchedulingLoop
from broker.settings import Settings
from scheduler.sim.traces import parse_lines
from tests.broker.conftest import NODES, job_body

T0 = 1_790_000_000.0  # 2026-09-21, a Monday
N_JOBS = 200
PROJECTS = ["ouh-liver", "ouh-radiology", "slb-cardio", "svs-pathology", "rit-platform"]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def workload(n: int, seed: int = 7) -> list[dict]:
    """n innovation jobs: 1, 2 or 4 GPUs, 2-30 min, arriving so the 16 GPUs the innovation work
    may use (its pool plus the operation pool it borrows) stay busy with a queue."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(1 / 150.0)
        out.append({"name": f"w{i:04d}", "at": t, "project": rng.choice(PROJECTS),
                    "gpus": rng.choice([1, 1, 2, 2, 4]), "run_s": float(rng.randint(120, 1800))})
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A real broker run of N_JOBS jobs on a simulated clock; yields (engine, settings, jobs)."""
    tmp = tmp_path_factory.mktemp("capacity")
    st = Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'broker.db'}")
    migrate(st)
    eng = make_engine(st)
    with Session(eng) as s:
        seed_demo(s)
        s.commit()
    token = ensure_admin_token(st, eng).read_text().strip()
    clock = Clock(T0)
    run_s: dict[str, float] = {}
    fake = FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], cpus=n["cpus"], memory_gb=n["memory_gb"],
                              gpu_model=n["gpu_model"]) for n in NODES], clock=clock,
                        outcome_for=lambda spec: Outcome(run_s=run_s[spec.job_id]))
    app = create_app(st, executor=fake, start_background=False, engine=eng)
    app.state.services.jobs.clock = clock  # submits are stamped on the simulated clock
    loop = SchedulingLoop(st, eng, fake, clock=clock)
    jobs = workload(N_JOBS)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        todo = list(jobs)
        ends: list[tuple[float, str]] = []  # expected worker ends of launched attempts
        ids: dict[str, str] = {}
        left = len(jobs)
        while left:
            nxt = min(todo[0]["at"] + T0 if todo else float("inf"), ends[0][0] if ends else float("inf"))
            assert nxt < float("inf"), "the broker stopped with jobs unfinished"
            clock.t = max(clock.t, nxt)
            while todo and todo[0]["at"] + T0 <= clock.t:
                j = todo.pop(0)
                r = c.post("/api/v1/jobs", json=job_body(name=j["name"], project=j["project"], gpus=j["gpus"],
                                                         max_runtime_s=3600))
                assert r.status_code == 201, r.text
                ids[r.json()["id"]] = j["name"]
                run_s[r.json()["id"]] = j["run_s"]
            while ends and ends[0][0] <= clock.t:
                heapq.heappop(ends)
            for _ in range(4):  # one tick per event; more only while preemption victims stop
                rep = loop.tick()
                for jid in rep.launched:
                    heapq.heappush(ends, (clock.t + run_s[jid], jid))
                left -= len(rep.finished)
                if not rep.preempted:
                    break
    yield eng, st, jobs
    eng.dispose()


def test_replaying_the_recorded_history_reproduces_its_waits(history):
    eng, st, jobs = history
    recorded = cap.recorded_jobs(eng, T0, T0 + 10 * 86400)
    assert len(recorded) == len(jobs)
    trace = [r.job for r in recorded]
    # the export is a valid canonical trace (what `python -m scheduler.simulate` reads)
    assert len(parse_lines(cap.trace_csv(trace).splitlines())) == len(jobs)
    real = cap._recorded_figures(recorded)
    assert real["avg_wait_s"] > 300, real  # a real queue, or the comparison means nothing
    res = cap.replay(cap.live_region(eng), trace, st.policy())
    dept = {p.id: p.department_id for p in cap.live_region(eng).projects}
    sim = cap.figures(res.outcomes, dept, 16)
    print(f"recorded {real}, replayed {sim}")
    for k in ("avg_wait_s", "p95_wait_s"):
        assert abs(sim[k] - real[k]) <= 0.2 * real[k], (k, sim[k], real[k])


def test_whatif_adds_capacity_and_waits_fall(history):
    eng, st, jobs = history
    out = cap.whatif(eng, st.policy(), start=T0, end=T0 + 10 * 86400,
                     add=["pool=innovation,model=A100,gpus_per_node=4,nodes=2"])
    assert out["jobs"] == len(jobs)
    assert out["after"]["avg_wait_s"] < out["before"]["avg_wait_s"]
    assert out["after"]["gpus"] == out["before"]["gpus"] + 8
    rows = {(r["department"], r["class"]) for r in out["before"]["per_department_class"]}
    assert ("ouh", "innovation") in rows and ("slb", "innovation") in rows
    assert out["svg"].startswith("<svg") and "<script" not in out["svg"] and "before" in out["svg"]
    assert len(out["queue"]["before"]) == len(out["queue"]["after"]) > 10
    span = out["window"]["to"] - out["window"]["from"]
    assert all(0 <= t <= 2 * span for t, _n in out["queue"]["before"]), "seconds since the window's start"


def test_changes_remove_and_quota_file(history):
    eng, st, jobs = history
    region = cap.live_region(eng)
    fewer = cap.changed(region, remove=[cap.parse_group("pool=innovation,model=A100,gpus_per_node=4,nodes=1")])
    assert sum(g.nodes for g in fewer.groups) == sum(g.nodes for g in region.groups) - 1
    with pytest.raises(Invalid, match="has 2"):
        cap.changed(region, remove=[cap.parse_group("pool=innovation,model=A100,gpus_per_node=4,nodes=3")])
    quotas = cap.parse_quota_file("- {owner_kind: project, owner_id: ouh-liver, pool: innovation, nominal: 6}\n")
    more = cap.changed(region, quota_rows=quotas)
    liver = [q for q in more.quotas if q.owner_id == "ouh-liver" and q.pool == "innovation"]
    assert [q.nominal for q in liver] == [6.0]


@pytest.mark.parametrize("spec", ["pool=innovation", "nodes=2", "pool=x,nodes=two", "pool=x,nodes=1,colour=red",
                                  "pool=x,nodes=0"])
def test_bad_node_groups_are_refused(spec):
    with pytest.raises(Invalid) as e:
        cap.parse_group(spec)
    assert e.value.code == "BAD_NODE_GROUP"


@pytest.fixture(scope="module")
def api(history):
    """The API over the recorded history, its clock three days after the run began."""
    eng, st, jobs = history
    token = ensure_admin_token(st, eng).read_text().strip()
    app = create_app(st, start_background=False, engine=eng)
    app.state.services.capacity.clock = lambda: T0 + 3 * 86400
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c, token


def _wait(c, run_id: str) -> dict:
    for _ in range(600):
        r = c.get(f"/api/v1/capacity/whatif/{run_id}").json()
        if r["status"] != "running":
            return r
        time.sleep(0.1)
    raise AssertionError("the what-if did not finish")


def test_whatif_runs_in_the_background_with_progress(api, history):
    c, _ = api
    r = c.post("/api/v1/capacity/whatif", json={"weeks": 1, "add": ["pool=innovation,model=A100,gpus_per_node=4,nodes=2"]})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running"
    done = _wait(c, r.json()["id"])
    assert done["status"] == "done" and done["progress"] == 1.0, done.get("error")
    assert done["result"]["jobs"] == len(history[2])
    assert done["result"]["after"]["avg_wait_s"] < done["result"]["before"]["avg_wait_s"]
    bad = c.post("/api/v1/capacity/whatif", json={"weeks": 1, "add": ["pool=innovation"]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "BAD_NODE_GROUP"
    trace = c.get("/api/v1/capacity/trace", params={"from": str(T0), "to": str(T0 + 86400 * 5)})
    assert trace.status_code == 200 and len(parse_lines(trace.text.splitlines())) == len(history[2])


def test_capacity_cli_exports_and_compares(api, history, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from broker.cli import app as cli_app, common
    from broker.client import BrokerClient

    c, token = api
    monkeypatch.setattr(common, "client", lambda url, tok: BrokerClient("http://testserver", token, http=c))
    monkeypatch.setattr(BrokerClient, "close", lambda self: None)
    runner = CliRunner()
    out = tmp_path / "trace.csv"
    r = runner.invoke(cli_app, ["capacity", "export", "--from", str(T0), "--to", str(T0 + 5 * 86400), "-f", str(out)])
    assert r.exit_code == 0, r.output
    assert len(parse_lines(out.read_text().splitlines())) == len(history[2])
    svg = tmp_path / "q.svg"
    r = runner.invoke(cli_app, ["capacity", "whatif", "--weeks", "1", "--add",
                                "pool=innovation,model=A100,gpus_per_node=4,nodes=1", "--svg", str(svg)],
                      terminal_width=120)
    assert r.exit_code == 0, r.output
    assert "DEPARTMENT" in r.output and "ouh" in r.output and "Utilization" in r.output and "->" in r.output
    assert svg.read_text().startswith("<svg")
