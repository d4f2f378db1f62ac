"""Amount arithmetic: the unlimited rules live here and nowhere else."""

from __future__ import annotations

import math

import pytest

from quotas.amount import UNLIMITED, ZERO, Amount, amax, amin

A = Amount.of

CASES = {
    "add_finite": (lambda: A(2) + A(3), A(5)),
    "add_number": (lambda: A(2) + 3, A(5)),
    "radd_number": (lambda: 3 + A(2), A(5)),
    "add_unlimited_absorbs": (lambda: A(2) + UNLIMITED, UNLIMITED),
    "sub_finite": (lambda: A(5) - A(3), A(2)),
    "sub_may_go_negative": (lambda: A(3) - A(5), A(-2)),
    "unlimited_minus_finite": (lambda: UNLIMITED - A(10**9), UNLIMITED),
    "finite_minus_unlimited_is_zero": (lambda: A(7) - UNLIMITED, ZERO),
    "unlimited_minus_unlimited": (lambda: UNLIMITED - UNLIMITED, UNLIMITED),
    "mul": (lambda: A(1.5) * 4, A(6)),
    "unlimited_times_zero": (lambda: UNLIMITED * 0, ZERO),
    "clamp_negative": (lambda: A(-3).clamp0(), ZERO),
    "clamp_positive": (lambda: A(3).clamp0(), A(3)),
    "rounding_keeps_integral_exact": (lambda: A(0.1) + A(0.2), A(0.3)),
    "amin_ignores_unlimited": (lambda: amin(UNLIMITED, 4, A(6)), A(4)),
    "amax_unlimited_wins": (lambda: amax(UNLIMITED, 4), UNLIMITED),
    "of_none_is_unlimited": (lambda: A(None), UNLIMITED),
    "of_inf_is_unlimited": (lambda: A(math.inf), UNLIMITED),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_amount_arithmetic(name: str) -> None:
    compute, want = CASES[name]
    assert compute() == want


@pytest.mark.parametrize("a,b,lt", [(A(1), A(2), True), (A(2), A(1), False), (A(5), UNLIMITED, True),
                                    (UNLIMITED, A(5), False), (UNLIMITED, UNLIMITED, False)],
                         ids=["1<2", "2<1", "finite<unlimited", "unlimited<finite", "unlimited<unlimited"])
def test_amount_ordering(a: Amount, b: Amount, lt: bool) -> None:
    assert (a < b) is lt
    assert (a <= b) is (lt or a == b)


def test_nan_rejected() -> None:
    with pytest.raises(ValueError):
        A(float("nan"))


@pytest.mark.parametrize("amount,json,text", [(A(3), 3, "3"), (A(2.5), 2.5, "2.5"), (UNLIMITED, None, "unlimited")],
                         ids=["int", "fraction", "unlimited"])
def test_presentation(amount: Amount, json, text: str) -> None:
    assert amount.to_json() == json and str(amount) == text


def test_hash_matches_equality() -> None:
    assert len({A(1), A(1.0), A(1 + 1e-12)}) == 1
