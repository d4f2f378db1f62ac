"""Demand-driven worker groups (broker.adapters.k8s.scaling), one named case per rule."""

from __future__ import annotations

import datetime as dt

import pytest

from broker.adapters.k8s import scaling
from broker.adapters.k8s.nodes import worker_pods
from broker.ports import ScaleDemand, ScaleInput
from tests.k8s.kit import group, pod, raycluster

T0 = dt.datetime(2026, 12, 4, 10, 2, tzinfo=dt.timezone.utc).timestamp()
RULES = scaling.Rules(cooldown_s=600, max_up=4, window_s=60)


def rc(inno_replicas=1, op_replicas=2, inno_max=8, **kw):
    return raycluster(group("operation-h100", pool="operation", replicas=op_replicas, min_r=1, max_r=4, gpus=8),
                      group("innovation-a100", pool="innovation", replicas=inno_replicas, min_r=0, max_r=inno_max,
                            gpus=4, **kw))


def pods_of(*spec):
    """("group", "node") pairs -> running worker pods named after their node."""
    return worker_pods([pod(f"w-{n}", n, group=g, ip=f"10.0.0.{i}") for i, (g, n) in enumerate(spec)],
                       "compute-broker-ray")


def demand(job="j1", pools=("innovation",), gpus=4, workers=1, models=()):
    return ScaleDemand(job_id=job, pools=tuple(pools), gpu_models=tuple(models), gpus_per_worker=gpus, workers=workers)


def run(cluster, pods, inp, memory=scaling.Memory(), now=T0):
    return scaling.plan(scaling.groups_of(cluster, RULES), pods, inp, memory, now, RULES)


def replicas(plan):
    return {c.group.name: c.replicas for c in plan.changes}


OP2 = (("operation-h100", "op-1"), ("operation-h100", "op-2"))

UP = [
    ("one waiting 2-worker job of 4 GPUs: two nodes", rc(), pods_of(*OP2, ("innovation-a100", "in-1")),
     ScaleInput(demands=(demand(workers=2),), busy_nodes=frozenset({"in-1"})), {"innovation-a100": 3},
     "scaling up: 2 nodes requested at 10:02 UTC"),
    ("small workers pack: 4 workers of 1 GPU fit one 4-GPU node", rc(), pods_of(*OP2, ("innovation-a100", "in-1")),
     ScaleInput(demands=(demand(gpus=1, workers=4),), busy_nodes=frozenset({"in-1"})), {"innovation-a100": 2},
     "scaling up: 1 node requested at 10:02 UTC"),
    ("within max: 20 wanted, 7 allowed by maxReplicas 8 ... and 4 by the rate limit", rc(),
     pods_of(*OP2, ("innovation-a100", "in-1")), ScaleInput(demands=(demand(workers=20),)), {"innovation-a100": 5},
     "scaling up: 4 nodes requested at 10:02 UTC"),
    ("at max: nothing, and the reason says so", rc(inno_replicas=8, inno_max=8),
     pods_of(*OP2, *[("innovation-a100", f"in-{i}") for i in range(8)]),
     ScaleInput(demands=(demand(),)), {}, "worker group innovation-a100 is at its maximum of 8 nodes"),
    ("nodes requested but not running yet count: 2 in flight cover a 2-node need",
     rc(inno_replicas=3), pods_of(*OP2, ("innovation-a100", "in-1")),
     ScaleInput(demands=(demand(workers=2),)), {}, "scaling up: 2 nodes starting in worker group innovation-a100"),
    ("a job that needs more GPUs per worker than a node has: no group, no note", rc(), pods_of(*OP2),
     ScaleInput(demands=(demand(gpus=16),)), {}, None),
    ("operation work scales the operation group", rc(), pods_of(*OP2),
     ScaleInput(demands=(demand(pools=("operation",), gpus=8),), busy_nodes=frozenset({"op-1", "op-2"})),
     {"operation-h100": 3}, "scaling up: 1 node requested at 10:02 UTC"),
    ("a model the group does not have: no scale-up",
     raycluster(group("innovation-a100", pool="innovation", replicas=0, gpus=4, product="NVIDIA-A100-SXM4-80GB")),
     (), ScaleInput(demands=(demand(models=("H100",)),)), {}, None),
    ("the model from the nodeSelector's GFD product (scale from zero)",
     raycluster(group("innovation-a100", pool="innovation", replicas=0, gpus=4, product="NVIDIA-A100-SXM4-80GB")),
     (), ScaleInput(demands=(demand(models=("A100-SXM4-80GB",)),)), {"innovation-a100": 1},
     "scaling up: 1 node requested at 10:02 UTC"),
]


@pytest.mark.parametrize("name,cluster,pods,inp,want,note", UP, ids=[c[0] for c in UP])
def test_scale_up_for_waiting_demand_within_limits(name, cluster, pods, inp, want, note):
    p = run(cluster, pods, inp)
    assert replicas(p) == want
    assert p.notes.get("j1") == note
    assert not p.drain and not p.deleted


def test_rate_limit_counts_recent_requests_and_forgets_old_ones():
    cluster, pods = rc(), pods_of(*OP2, ("innovation-a100", "in-1"))
    inp = ScaleInput(demands=(demand(workers=20),))
    first = run(cluster, pods, inp)
    assert replicas(first) == {"innovation-a100": 5}
    # 30 s later the RayCluster says 5 (none running yet): the 4 in flight count, the window is full
    again = run(rc(inno_replicas=5), pods, inp, first.memory, T0 + 30)
    assert replicas(again) == {}
    assert again.notes["j1"] == "scaling up: 4 nodes requested at 10:02 UTC"
    # past the window, 4 more (up to maxReplicas 8: 3)
    later = run(rc(inno_replicas=5), pods, inp, again.memory, T0 + 61)
    assert replicas(later) == {"innovation-a100": 8}
    assert later.notes["j1"] == "scaling up: 7 nodes requested at 10:03 UTC"


def test_scale_down_drains_first_then_names_the_pod_after_the_cooldown():
    pods = pods_of(*OP2, ("innovation-a100", "in-1"), ("innovation-a100", "in-2"))
    cluster = rc(inno_replicas=2)
    busy = ScaleInput(busy_nodes=frozenset({"op-1", "op-2", "in-1"}))
    p0 = run(cluster, pods, busy)  # in-2 idle from now on
    assert not p0.drain and not p0.changes
    p1 = run(cluster, pods, busy, p0.memory, T0 + 599)
    assert not p1.drain  # cool-down not over
    p2 = run(cluster, pods, busy, p1.memory, T0 + 600)
    assert p2.drain == ("in-2",) and not p2.changes  # step 1: the broker drains it, nothing deleted yet
    drained = ScaleInput(busy_nodes=busy.busy_nodes, drained_nodes=frozenset({"in-2"}))
    p3 = run(cluster, pods, drained, p2.memory, T0 + 605)
    assert p3.deleted == ("in-2",) and p3.changes[0].replicas == 1 and p3.changes[0].delete_pods == ("w-in-2",)
    patch = scaling.merge_patch(cluster, p3.changes)
    assert patch["metadata"] == {"resourceVersion": "100"}
    g = patch["spec"]["workerGroupSpecs"][1]
    assert g["replicas"] == 1 and g["scaleStrategy"] == {"workersToDelete": ["w-in-2"]}
    assert patch["spec"]["workerGroupSpecs"][0] == cluster["spec"]["workerGroupSpecs"][0]  # the other group as it was


def test_a_node_that_became_busy_again_restarts_its_cooldown():
    pods = pods_of(("innovation-a100", "in-1"), ("innovation-a100", "in-2"))
    cluster = rc(inno_replicas=2, op_replicas=0)
    p0 = run(cluster, pods, ScaleInput())
    p1 = run(cluster, pods, ScaleInput(busy_nodes=frozenset({"in-1", "in-2"})), p0.memory, T0 + 300)
    p2 = run(cluster, pods, ScaleInput(), p1.memory, T0 + 700)
    assert not p2.drain  # idle only since T0 + 700


FLOOR = [
    ("minReplicas", rc(inno_replicas=1, op_replicas=1), (("operation-h100", "op-1"),), {}, ()),
    ("the operation guarantee: 16 GPUs guaranteed keep two 8-GPU nodes", rc(op_replicas=3),
     (("operation-h100", "op-1"), ("operation-h100", "op-2"), ("operation-h100", "op-3")),
     {"operation": 16.0}, ("op-1",)),
    ("the guarantee counts every group of the pool", rc(op_replicas=2), OP2, {"operation": 9.0}, ()),
]


@pytest.mark.parametrize("name,cluster,spec,guaranteed,want", FLOOR, ids=[c[0] for c in FLOOR])
def test_never_below_min_replicas_or_what_the_guarantee_needs(name, cluster, spec, guaranteed, want):
    pods = pods_of(*spec)
    inp = ScaleInput(guaranteed_gpus=guaranteed)
    p0 = run(cluster, pods, inp)
    p1 = run(cluster, pods, inp, p0.memory, T0 + 601)
    assert p1.drain == want


def test_demand_returning_undrains_instead_of_adding_nodes():
    pods = pods_of(("innovation-a100", "in-1"))
    p = run(rc(inno_replicas=1, op_replicas=0), pods,
            ScaleInput(demands=(demand(),), drained_nodes=frozenset({"in-1"})))
    assert p.undrain == ("in-1",)
    assert not p.deleted


def test_pods_already_gone_leave_workers_to_delete():
    cluster = rc(inno_replicas=2, to_delete=["w-gone", "w-in-1"])
    pods = pods_of(("innovation-a100", "in-1"), ("innovation-a100", "in-2"))
    p0 = run(cluster, pods, ScaleInput(drained_nodes=frozenset({"in-2"})))
    (c,) = p0.changes
    assert c.delete_pods == ("w-in-1", "w-in-2")  # w-gone dropped, w-in-1 still pending at KubeRay


# --------------------------------------------------------------------------------------------
# rule 8: pods per approved image
def image_rc(replicas=2, min_r=1, to_delete=None):
    g = group("img-llm", pool="innovation", replicas=replicas, min_r=min_r, max_r=6, gpus=1, to_delete=to_delete)
    g["rayStartParams"]["labels"] = "broker.io/pool=innovation,broker.io/image=llm"
    return raycluster(group("innovation-a100", pool="innovation", replicas=1, min_r=0, max_r=8, gpus=4), g)


def image_pods(*names):
    """Pods of the image group, all on Kubernetes node gpu-1: the broker's node is the pod."""
    return worker_pods([pod(n, "gpu-1", group="img-llm", ip=f"10.1.0.{i}") for i, n in enumerate(names)]
                       + [pod("w-in-1", "in-1", group="innovation-a100", ip="10.0.0.9")], "compute-broker-ray")


def test_an_image_demand_goes_to_its_group_only_one_pod_per_worker():
    pods = image_pods("llm-a", "llm-b")
    # a 3-worker job of the image, 1 GPU each: one pod per worker; both pods busy -> 3 more
    inp = ScaleInput(demands=(ScaleDemand("j1", ("innovation",), (), 1, 3, image="llm"),),
                     busy_nodes=frozenset({"llm-a", "llm-b"}))
    p = run(image_rc(), pods, inp)
    assert replicas(p) == {"img-llm": 5}
    # a general job's demand never goes to the image group (its pods take only the image's jobs)
    general = run(image_rc(), pods, ScaleInput(demands=(demand(gpus=1, workers=3),), busy_nodes=frozenset({"in-1"})))
    assert replicas(general) == {"innovation-a100": 2}
    # an image with no group: no scale-up anywhere
    other = run(image_rc(), pods, ScaleInput(demands=(ScaleDemand("j2", ("innovation",), (), 1, 1, image="seg"),)))
    assert replicas(other) == {} and "j2" not in other.notes


def test_a_spent_pod_is_replaced_once_idle_and_never_counts_as_capacity():
    pods = image_pods("llm-a", "llm-b")
    # llm-a ran its attempt and still runs it: kept; llm-b idle and fresh
    running = ScaleInput(spent_nodes=frozenset({"llm-a"}), busy_nodes=frozenset({"llm-a", "in-1"}))
    assert run(image_rc(), pods, running).changes == ()
    # its attempt ended: the pod goes at once (no cool-down), and the minimum (1) is kept by llm-b
    ended = ScaleInput(spent_nodes=frozenset({"llm-a"}), busy_nodes=frozenset({"in-1"}))
    p = run(image_rc(), pods, ended)
    assert replicas(p) == {"img-llm": 1} and p.changes[0].delete_pods == ("llm-a",) and p.deleted == ("llm-a",)
    # both spent: KubeRay is asked for a fresh pod in place of them (minReplicas 1)
    both = run(image_rc(), pods, ScaleInput(spent_nodes=frozenset({"llm-a", "llm-b"}), busy_nodes=frozenset({"in-1"})))
    assert replicas(both) == {"img-llm": 1} and both.changes[0].delete_pods == ("llm-a", "llm-b")
    # a waiting job of the image does not count an idle spent pod as room: it asks for a fresh one
    wait = ScaleInput(demands=(ScaleDemand("j1", ("innovation",), (), 1, 1, image="llm"),),
                      spent_nodes=frozenset({"llm-a"}), busy_nodes=frozenset({"llm-a", "llm-b", "in-1"}))
    assert replicas(run(image_rc(), pods, wait)) == {"img-llm": 3}
    # a spent pod is never returned to service nor drained for a scale-down
    assert not run(image_rc(), pods, ended).undrain
