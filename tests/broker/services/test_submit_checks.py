"""never_fits and eligible pools: pure table tests over node and pool rows (no DB)."""

from __future__ import annotations

import pytest

from broker.errors import Invalid
from broker.models import Node, Pool
from broker.services.submit_checks import Inventory, WorkerShape, eligible_pools, never_fits


def pool(name, cls, lend=False):
    return Pool(name=name, workload_class=cls, lend_to_innovation=lend)


def node(id, pool, gpus=4, cpus=32, mem=256, model="A100"):
    return Node(id=id, pool=pool, gpus=gpus, cpus=cpus, memory_gb=mem, gpu_model=model)


POOLS = {"operation": pool("operation", "operation", lend=True), "innovation": pool("innovation", "innovation")}
INV = Inventory(pools=POOLS, nodes=(node("i1", "innovation"), node("i2", "innovation"), node("o1", "operation", 8, model="H100")))


def shape(gpus=1, cpus=1, mem=1, models=()):
    return WorkerShape(gpus, cpus, mem, tuple(models))


CASES = [
    # name, inventory, class, pool, shape, workers, expected fragment (None = fits)
    ("fits", INV, "innovation", None, shape(4), 1, None),
    ("innovation-borrows-operation-node", INV, "innovation", None, shape(8), 1, None),
    ("too-many-gpus", INV, "innovation", None, shape(9), 1, "9 gpus (largest node has 8)"),
    ("pinned-innovation-only-4", INV, "innovation", "innovation", shape(5), 1, "largest node has 4"),
    ("operation-never-uses-innovation-nodes", Inventory(POOLS, (node("i1", "innovation"),)), "operation", None,
     shape(1), 1, "no node belongs"),
    ("model-filter", INV, "innovation", None, shape(1, models=["B200"]), 1, "GPU model B200"),
    ("model-filter-fits", INV, "innovation", None, shape(8, models=["H100"]), 1, None),
    ("cpus", INV, "innovation", None, shape(0, cpus=100), 1, "100 cpus (largest node has 32)"),
    ("gang-total", INV, "innovation", "innovation", shape(4), 3, "the gang asks for 12 GPUs"),
    ("gang-fits", INV, "innovation", "innovation", shape(4), 2, None),
    ("no-inventory-yet", Inventory(POOLS, ()), "innovation", None, shape(64), 1, None),
    ("lend-off", Inventory({"operation": pool("operation", "operation"), "innovation": POOLS["innovation"]},
                           INV.nodes), "innovation", None, shape(8), 1, "largest node has 4"),
]


@pytest.mark.parametrize("inv,cls,pin,shp,workers,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_never_fits(inv, cls, pin, shp, workers, fragment):
    why = never_fits(inv, workload_class=cls, pool=pin, shape=shp, workers=workers)
    if fragment is None:
        assert why is None
    else:
        assert why is not None and fragment in why[0], why


@pytest.mark.parametrize("cls,pin,code", [
    ("operation", "innovation", "POOL_NOT_ALLOWED"), ("innovation", "nowhere", "UNKNOWN_POOL")])
def test_eligible_pools_refuses_bad_pins(cls, pin, code):
    with pytest.raises(Invalid) as ei:
        eligible_pools(POOLS, cls, pin)
    assert ei.value.code == code


def test_eligible_pools_by_class():
    assert eligible_pools(POOLS, "operation", None) == ["operation"]
    assert eligible_pools(POOLS, "innovation", None) == ["innovation", "operation"]


def test_never_fits_cached_remembers_per_inventory_and_still_raises_bad_pins():
    from broker.services.submit_checks import never_fits_cached

    inv = Inventory(pools=POOLS, nodes=INV.nodes)
    a = never_fits_cached(inv, workload_class="innovation", pool=None, shape=shape(9), workers=1)
    b = never_fits_cached(inv, workload_class="innovation", pool=None, shape=shape(9), workers=1)
    assert a is b and a is not None and len(inv.memo) == 1
    assert never_fits_cached(inv, workload_class="innovation", pool=None, shape=shape(1), workers=1) is None
    for _ in range(2):
        with pytest.raises(Invalid):
            never_fits_cached(inv, workload_class="operation", pool="innovation", shape=shape(1), workers=1)


def test_ttl_cache_reloads_after_ttl_and_max_age_bounds_rechecks():
    from broker.services.submit_checks import TTLCache

    t, loads = [0.0], []

    def loader():
        loads.append(t[0])
        return len(loads)

    c = TTLCache(loader, ttl_s=5.0, clock=lambda: t[0])
    assert c.get() == 1 and c.get() == 1
    t[0] = 0.5
    assert c.get(max_age=1.0) == 1  # younger than max_age: no reload
    t[0] = 1.5
    assert c.get(max_age=1.0) == 2 and c.get(max_age=1.0) == 2  # one reload, then fresh again
    t[0] = 7.0
    assert c.fresh() is None and c.get() == 3
    assert loads == [0.0, 1.5, 7.0]
