"""`broker projects|usage|pools|overview|nodes list`: seeing one's place, as tables and as data."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from sqlmodel import Session

from broker.models import Job, JobStatus, Placement
from broker import jobstate
from tests.broker.conftest import job_body

VIEWS = [
    # name, args, text that must appear in the human view
    ("projects-list", ["projects", "list"], [r"PROJECT\s+DEPARTMENT\s+NAME", r"ouh-liver\s+OUH\s+Liver segmentation"]),
    ("projects-show", ["projects", "show", "ouh-liver"],
     [r"Project:\s+ouh-liver\s+\(department ouh\)", r"FLAVOR\s+RESOURCE\s+GUARANTEED\s+NOMINAL\s+LIMIT\s+IN USE",
      r"innovation\s+gpus\s+0\s+2\s+unlimited", r"Budget:\s+no budget set"]),
    ("usage", ["usage", "ouh-liver"], [r"Project:\s+ouh-liver", r"Department budget:"]),
    ("pools", ["pools"], [r"POOL\s+CLASS\s+LENDS\s+NODES\s+GPUS", r"operation\s+operation\s+yes\s+1\s+8"]),
    ("overview", ["overview"], [r"GPUs:\s+16 total", r"Queue:\s+\d+ pending", r"NODE\s+POOL\s+MODEL\s+STATE",
                                r"op-1\s+operation\s+H100"]),
    ("nodes-list", ["nodes", "list"], [r"NODE\s+POOL\s+MODEL\s+STATE\s+FREE GPUS\s+FREE CPUS\s+FREE MEM GB",
                                       r"op-1\s+operation\s+H100\s+ready\s+8/8\s+64/64\s+512/512"]),
]


@pytest.mark.parametrize("args,expect", [v[1:] for v in VIEWS], ids=[v[0] for v in VIEWS])
def test_human_views(cli, args, expect):
    r = cli(*args)
    assert r.exit_code == 0, r.output
    for pattern in expect:
        assert re.search(pattern, r.output), (pattern, r.output)
    assert "{" not in r.output


@pytest.mark.parametrize("args", [v[1] for v in VIEWS], ids=[v[0] for v in VIEWS])
@pytest.mark.parametrize("fmt,parse", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_machine_views_parse(cli, args, fmt, parse):
    r = cli(*args, "-o", fmt)
    assert r.exit_code == 0, r.output
    assert parse(r.stdout)


def test_unknown_project_is_a_clear_error(cli):
    r = cli("projects", "show", "nope")
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output


def test_nodes_list_subtracts_what_running_gangs_hold(cli, client, engine):
    j = client.post("/api/v1/jobs", json=job_body(gpus=2, cpus=4, memory_gb=16, workers=2)).json()
    with Session(engine) as s:
        row = s.get(Job, j["id"])
        assert jobstate.transition(s, row, JobStatus.ADMITTED, expected_version=row.version)
        for rank in (0, 1):
            s.add(Placement(job_id=j["id"], attempt=1, rank=rank, node_id="inno-2", gpu_indices=[2 * rank, 2 * rank + 1],
                            cuda_visible_devices=""))
        assert jobstate.transition(s, row, JobStatus.RUNNING, expected_version=row.version)
        s.commit()
    try:
        out = cli("nodes", "list").output
        assert re.search(r"inno-2\s+innovation\s+A100\s+ready\s+0/4\s+24/32\s+224/256", out), out
        data = json.loads(cli("nodes", "list", "--json").stdout)
        assert {n["id"]: n["free"]["gpus"] for n in data}["inno-2"] == 0
    finally:
        client.post(f"/api/v1/jobs/{j['id']}/cancel")
        with Session(engine) as s:
            row = s.get(Job, j["id"])
            if row.status != JobStatus.CANCELLED:
                jobstate.transition(s, row, JobStatus.CANCELLED, expected_version=row.version)
                s.commit()


def test_overview_watch_ends_on_ctrl_c(cli, monkeypatch):
    def sleep(s):
        raise KeyboardInterrupt

    monkeypatch.setattr("broker.cli.common.pause", sleep)
    r = cli("overview", "-w")
    assert r.exit_code == 0 and "GPUs:" in r.output
