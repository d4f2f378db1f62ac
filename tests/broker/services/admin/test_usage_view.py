"""`usage_view` (GET /projects/{id}/usage) as a pure function over rows: entitlement, usage,
borrowing attribution both ways, budget spent and reserved."""

from __future__ import annotations

import pytest

from broker.models import Department, Job, Ledger, Node, Project, QuotaRow
from broker.services.admin.quotas import usage_view

NOW = 1_800_000_000.0
NODES = [Node(id="n1", pool="innovation", gpu_model="A100", gpus=8, cpus=64, memory_gb=512)]


def project(pid, dept="ouh", budget=None):
    return Project(id=pid, department_id=dept, budget_gpu_hours=budget)


def quota(owner, nominal, kind="project"):
    return QuotaRow(owner_kind=kind, owner_id=owner, pool="innovation", gpu_model="A100", resource="gpus",
                    guaranteed=0, nominal=nominal)


def running(pid, gpus, workers=1, started=NOW - 3600, max_runtime=7200):
    return Job(id=f"{pid}-{gpus}-{workers}", project_id=pid, status="RUNNING", gpus=gpus, workers=workers,
               cpus=1, memory_gb=1, flavor_pool="innovation", flavor_gpu_model="A100", started_at=started,
               max_runtime_s=max_runtime)


PROJECTS = [project("a"), project("b"), project("c", dept="slb")]


def view(me, quotas, jobs, ledger=(), budget=None):
    proj = next(p for p in PROJECTS if p.id == me)
    proj.budget_gpu_hours = budget
    return usage_view(proj, Department(id=proj.department_id, name=proj.department_id), quotas, NODES, jobs, 0,
                      list(ledger), PROJECTS, NOW)


@pytest.mark.parametrize(
    "name, me, quotas, jobs, borrowed, lenders",
    [
        ("within nominal: no borrowing", "a", [quota("a", 4), quota("b", 4)], [running("a", 2)], [], {}),
        ("over nominal borrows from the idle", "a", [quota("a", 2), quota("b", 4)], [running("a", 4)], [2.0],
         {"b": 2.0}),
        ("idle split in proportion", "a", [quota("a", 0), quota("b", 3), quota("c", 1)], [running("a", 2)], [2.0],
         {"b": 1.5, "c": 0.5}),
        ("gang counts all workers", "a", [quota("a", 2), quota("b", 4)], [running("a", 2, workers=2)], [2.0],
         {"b": 2.0}),
    ],
)
def test_borrowing(name, me, quotas, jobs, borrowed, lenders):
    v = view(me, quotas, jobs)
    gpus = [b for b in v["borrowing"] if b["resource"] == "gpus"]
    assert [b["amount"] for b in gpus] == borrowed
    if gpus:
        assert {x["project"]: x["amount"] for x in gpus[0]["from"]} == lenders


def test_lender_sees_who_borrows():
    v = view("b", [quota("a", 0), quota("b", 4)], [running("a", 2)])
    lent = [x for x in v["lending"] if x["resource"] == "gpus"]
    assert lent and lent[0]["idle_nominal"] == 4.0 and lent[0]["to"] == [{"project": "a", "amount": 2.0}]


def test_budget_spent_and_reserved():
    led = [Ledger(job_id="x", attempt=1, project_id="a", department_id="ouh", gpus=2, started_at=NOW - 7200,
                  ended_at=NOW - 3600)]
    v = view("a", [quota("a", 4)], [running("a", 2, started=NOW - 3600, max_runtime=7200)], led, budget=10)
    b = v["budget"]
    assert b["gpu_hours"] == 10 and b["spent"] == pytest.approx(2.0)  # 2 GPUs x 1 h, ended
    assert b["reserved"] == pytest.approx(2.0)  # 2 GPUs x 1 h still reserved of the running job
    assert b["left"] == pytest.approx(6.0)


def test_entitlement_and_usage_rows():
    v = view("a", [quota("a", 4), quota("b", 1)], [running("a", 3)])
    assert [(e["resource"], e["nominal"]) for e in v["entitlement"]] == [("gpus", 4)]
    u = {x["resource"]: x["in_use"] for x in v["usage"]}
    assert u["gpus"] == 3 and v["jobs"]["holding"] == 1
