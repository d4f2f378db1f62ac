"""`Wakeup` routes each kind of wake-up to what the periodic tasks connected."""

from __future__ import annotations

import pytest

from broker.services.wakeup import Wakeup


@pytest.mark.parametrize("connect, expected", [
    pytest.param(lambda w, a, b, c: w.connect(a), ["a", "a", "a"], id="one callable takes all three"),
    pytest.param(lambda w, a, b, c: w.connect(a, b), ["a", "b", "a"], id="end defaults to submit, not cancel"),
    pytest.param(lambda w, a, b, c: w.connect(a, b, c), ["a", "b", "c"], id="each its own"),
    pytest.param(lambda w, a, b, c: (w.connect(a, b, c), w.connect(None)), [], id="disconnected: nothing"),
    pytest.param(lambda w, a, b, c: None, [], id="never connected: nothing"),
])
def test_submitted_cancelled_ended_reach_their_callable(connect, expected):
    calls, w = [], Wakeup()
    connect(w, lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c"))
    w.submitted()
    w.cancelled()
    w.ended("job-1", 1)
    assert calls == expected
