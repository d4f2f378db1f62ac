"""Replaying on an inventory file (`--cluster`): parsing, bad rows naming their line, pools and
classes, and the feasibility check against the trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.model import WorkloadClass
from scheduler.sim.cluster import ClusterError, NodeGroup, ReplayError, nodes_of, parse_cluster, pools_of
from scheduler.sim.simulate import SimConfig, simulate
from scheduler.sim.traces import TraceJob

ROOT = Path(__file__).resolve().parents[2]
HEADER = "pool,gpu_model,gpus_per_node,nodes"


def test_inventory_rows_with_defaults_and_optionals():
    groups = parse_cluster([
        HEADER + ",class,cpus_per_node",
        "operation,A100,4,1,,",
        "",
        "research,H100,8,2,,96",
        "edge,L4,2,3,operation,",
    ])
    assert groups == [
        NodeGroup("operation", "A100", 4, 1, WorkloadClass.OPERATION),
        NodeGroup("research", "H100", 8, 2, WorkloadClass.INNOVATION, cpus_per_node=96.0),
        NodeGroup("edge", "L4", 2, 3, WorkloadClass.OPERATION),
    ]
    nodes = nodes_of(groups)
    assert [n.id for n in nodes] == [f"n{i:05d}" for i in range(6)]
    assert (nodes[1].capacity.gpus, nodes[1].capacity.cpus, nodes[1].capacity.memory_gb) == (8, 96.0, 512.0)
    pools = {p.name: p for p in pools_of(nodes, {g.pool: g.workload_class for g in groups})}
    assert pools["edge"].workload_class is WorkloadClass.OPERATION and pools["edge"].lend_to_innovation
    assert not pools["research"].lend_to_innovation


@pytest.mark.parametrize("lines,problem", [
    pytest.param([HEADER, "sim,A100,8,2", "sim,A100,eight,2"], "line 3: gpus_per_node must be a whole number",
                 id="non-numeric gpus"),
    pytest.param([HEADER, "", "sim,A100,0,2"], "line 3: gpus_per_node must be >= 1", id="zero gpus, blank line kept"),
    pytest.param([HEADER, "sim,A100,8,-1"], "line 2: nodes must be >= 0", id="negative nodes"),
    pytest.param([HEADER, "sim,A100,8"], "line 2: expected 4 fields, found 3", id="short row"),
    pytest.param([HEADER, ",A100,8,2"], "line 2: pool is empty", id="empty pool"),
    pytest.param([HEADER + ",class", "sim,A100,8,2,gold"], "line 2: class must be operation or innovation",
                 id="bad class"),
    pytest.param([HEADER + ",class", "x,A100,8,2,operation", "x,H100,8,1,innovation"],
                 "line 3: pool 'x' is given two classes", id="pool with two classes"),
    pytest.param([HEADER + ",memory_gb_per_node", "sim,A100,8,2,-5"], "line 2: memory_gb_per_node must be a number > 0",
                 id="negative memory"),
    pytest.param(["pool,gpus_per_node,nodes", "sim,8,2"], "line 1: header needs pool, gpu_model", id="missing column"),
    pytest.param([HEADER, "sim,A100,8,0"], "line 1: the cluster has no nodes", id="no nodes at all"),
    pytest.param([], "line 1: empty cluster file", id="empty"),
])
def test_bad_inventory_rows_name_the_line(lines, problem):
    with pytest.raises(ClusterError, match="^" + problem.replace("(", r"\(")):
        parse_cluster(lines)


def tj(jid, submit, duration, gpus=1, klass=WorkloadClass.INNOVATION, model="", project="p"):
    return TraceJob(id=jid, submit_time=submit, duration=duration, gpus=gpus, project=project, workload_class=klass,
                    gpu_model=model, max_runtime=2 * duration)


INVENTORY = (NodeGroup("operation", "A100", 4, 1, WorkloadClass.OPERATION),
             NodeGroup("research", "H100", 8, 2, WorkloadClass.INNOVATION))


def on_inventory(**kw) -> SimConfig:
    return SimConfig(nodes=3, gpus_per_node=8, cluster=INVENTORY, cycle_interval=0, queue_depth=0, **kw)


def test_replay_on_an_inventory_with_the_real_core():
    """Operation work runs on the 4-GPU operation node at once although innovation work fills
    the research pool; a 16-GPU job runs as two 8-GPU workers on the research nodes."""
    trace = [tj("big", 0, 100, 16), tj("i", 0, 100, 8), tj("o", 10, 50, 4, WorkloadClass.OPERATION)]
    result = simulate(trace, on_inventory())
    got = {o.id: o for o in result.outcomes}
    assert got["o"].first_start == 10 and got["o"].end == 60
    assert result.metrics["gpus"] == 20 and result.metrics["nodes"] == 3 and result.metrics["unfinished"] == 0


@pytest.mark.parametrize("job,message", [
    pytest.param(tj("o", 0, 10, 8, WorkloadClass.OPERATION),
                 "1 operation jobs need 1 worker(s) of 8 GPUs, more than the nodes of any one pool and GPU model can hold",
                 id="operation gang larger than the operation pool"),
    pytest.param(tj("m", 0, 10, 1, model="L40S"), "1 innovation jobs need GPU model L40S, which no node of their pools has",
                 id="GPU model nobody has"),
    pytest.param(TraceJob(id="g", submit_time=0, duration=10, gpus=20, project="p", workers=5, max_runtime=20),
                 "1 innovation jobs need 5 worker(s) of 4 GPUs, more than the nodes of any one pool and GPU model can hold",
                 id="gang that fits only across two flavors"),
    pytest.param(tj("om", 0, 10, 1, WorkloadClass.OPERATION, model="H100"),
                 "1 operation jobs need GPU model H100, which no node of their pools has",
                 id="model only in a pool the class may not use"),
])
def test_jobs_no_node_could_hold_are_an_error(job, message):
    with pytest.raises(ReplayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        simulate([tj("ok", 0, 10), job], on_inventory())


def test_cli_cluster_file_and_its_errors(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("job_id,submit_time,duration,gpus,project,class\n"
                     "a,0,100,8,lab,innovation\nb,10,100,2,clinic,operation\n")
    inv = tmp_path / "cluster.csv"
    inv.write_text(HEADER + "\noperation,A100,2,1\nresearch,H100,8,1\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "scheduler.simulate", "--trace", str(trace), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    ok = run("--cluster", str(inv), "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"gpus": 10' in ok.stdout and '"unfinished": 0' in ok.stdout
    inv.write_text(HEADER + "\noperation,A100,2,1\nresearch,H100,x,1\n")
    bad = run("--cluster", str(inv))
    assert bad.returncode == 2 and "cluster.csv: line 3: gpus_per_node must be a whole number" in bad.stderr
    both = run("--cluster", str(inv), "--nodes", "2")
    assert both.returncode == 2 and "--cluster replaces --nodes" in both.stderr
