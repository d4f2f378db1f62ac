"""GPU-hour budgets and fair-share helpers."""

from __future__ import annotations

import math

import pytest

from quotas.amount import UNLIMITED, Amount
from quotas.budget import BudgetLedger, remaining_reservation, reservation_gpu_hours
from quotas.fairshare import accumulate, decay, dominant_share, past_equivalent

A = Amount.of

# (budgets, spent, reserve first, check owners, request, ok, failing owner)
LEDGER_CASES = {
    "unlimited_always_ok": ({}, {}, 0, ("p", "d"), 1e9, True, ""),
    "fits_exactly": ({"p": A(10)}, {"p": 6.0}, 0, ("p",), 4, True, ""),
    "one_over": ({"p": A(10)}, {"p": 6.0}, 0, ("p",), 5, False, "p"),
    "reserved_counts": ({"p": A(10)}, {"p": 0.0}, 8, ("p",), 3, False, "p"),
    "department_above_project": ({"p": A(100), "d": A(5)}, {"d": 4.0}, 0, ("p", "d"), 2, False, "d"),
    "spent_above_budget": ({"p": A(1)}, {"p": 3.0}, 0, ("p",), 0.1, False, "p"),
}


@pytest.mark.parametrize("name", sorted(LEDGER_CASES))
def test_ledger_check(name: str) -> None:
    budgets, spent, reserve, owners, request, ok, owner = LEDGER_CASES[name]
    ledger = BudgetLedger(budgets, spent)
    if reserve:
        ledger.reserve(owners, A(reserve))
    got = ledger.check(owners, A(request))
    assert got.ok is ok and got.owner == owner


def test_reserve_undo_restores() -> None:
    ledger = BudgetLedger({"p": A(10)}, {"p": 2.0})
    before = ledger.left("p")
    undo = ledger.reserve(("p",), A(5))
    assert ledger.left("p") == A(3)
    undo()
    assert ledger.left("p") == before == A(8)


def test_left_never_negative_and_unlimited() -> None:
    ledger = BudgetLedger({"p": A(1)}, {"p": 5.0})
    assert ledger.left("p") == A(0) and ledger.left("nobody") == UNLIMITED


@pytest.mark.parametrize("gpus,start,runtime,now,want", [
    (4, 0.0, 7200.0, 0.0, 8.0), (4, 0.0, 7200.0, 3600.0, 4.0), (4, 0.0, 3600.0, 9999.0, 0.0), (0, 0.0, 3600.0, 0.0, 0.0)],
    ids=["fresh", "half_done", "past_max_runtime", "cpu_only"])
def test_remaining_reservation(gpus: int, start: float, runtime: float, now: float, want: float) -> None:
    assert remaining_reservation(gpus, start, runtime, now) == A(want)
    assert reservation_gpu_hours(gpus, -5) == A(0)


@pytest.mark.parametrize("usage,elapsed,half,want", [(100.0, 10.0, 10.0, 50.0), (100.0, 0.0, 10.0, 100.0),
                                                     (100.0, 30.0, 10.0, 12.5), (100.0, 5.0, 0.0, 100.0)],
                         ids=["one_half_life", "no_time", "three_half_lives", "no_half_life"])
def test_decay(usage: float, elapsed: float, half: float, want: float) -> None:
    assert decay(usage, elapsed, half) == pytest.approx(want)


def test_steady_use_maps_back_to_gpus() -> None:
    half = 3600.0
    u = 0.0
    for _ in range(200):  # 200 half-lives of steady 8 GPUs: converges
        u = accumulate(u, 8, half, half)
    assert past_equivalent(u, half) == pytest.approx(8.0)
    assert accumulate(10.0, 8, 60.0, math.inf) == 10.0 + 480.0


@pytest.mark.parametrize("alloc,cap,weight,want", [
    ({"gpus": 4, "cpus": 8}, {"gpus": 16, "cpus": 64}, 1.0, 0.25),
    ({"gpus": 1, "cpus": 48}, {"gpus": 16, "cpus": 64}, 1.0, 0.75),
    ({"gpus": 4}, {"gpus": 16}, 2.0, 0.125),
    ({"gpus": 0}, {"gpus": 0}, 1.0, 0.0),
    ({"gpus": 1}, {"gpus": 0}, 1.0, math.inf)],
    ids=["gpu_dominant", "cpu_dominant", "weighted", "nothing", "no_capacity"])
def test_dominant_share(alloc, cap, weight, want) -> None:
    assert dominant_share(alloc, cap, weight) == want
