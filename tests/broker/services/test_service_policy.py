"""The controller's pure decisions: restart backoff and the autoscaler's count (named cases)."""

from __future__ import annotations

import pytest

from broker.services.service_policy import autoscale, backoff

BACKOFF = [
    ("first failure waits the initial", {"backoff_initial_s": 1, "backoff_max_s": 60}, 1, 1.0),
    ("doubles", {"backoff_initial_s": 1, "backoff_max_s": 60}, 4, 8.0),
    ("capped", {"backoff_initial_s": 1, "backoff_max_s": 60}, 10, 60.0),
    ("zero initial: at once", {"backoff_initial_s": 0, "backoff_max_s": 60}, 5, 0.0),
    ("defaults", {}, 2, 2.0),
]


@pytest.mark.parametrize("name,restart,failures,want", BACKOFF, ids=[c[0] for c in BACKOFF])
def test_backoff(name, restart, failures, want):
    assert backoff(restart, failures) == want


def _scale(inflight, desired, *, samples=(), scaled_at=None, now=100.0, lo=1, hi=4):
    return autoscale(inflight=inflight, target=2, lo=lo, hi=hi, desired=desired, samples=list(samples),
                     scaled_at=scaled_at, now=now, cooldown_s=30)[0]


AUTOSCALE = [
    ("up at once", dict(inflight=5, desired=1), 3),
    ("never above max", dict(inflight=50, desired=1), 4),
    ("never below min", dict(inflight=0, desired=1, lo=1), 1),
    ("down waits for the cool-down", dict(inflight=0, desired=3, scaled_at=90.0), 3),
    ("down after the cool-down", dict(inflight=0, desired=3, scaled_at=60.0), 1),
    ("down to the highest need seen in the cool-down", dict(inflight=0, desired=4, scaled_at=60.0,
                                                          samples=[(80.0, 3), (95.0, 1)]), 3),
    ("old samples forgotten", dict(inflight=0, desired=4, scaled_at=0.0, samples=[(10.0, 4)]), 1),
]


@pytest.mark.parametrize("name,kw,want", AUTOSCALE, ids=[c[0] for c in AUTOSCALE])
def test_autoscale(name, kw, want):
    assert _scale(**kw) == want
