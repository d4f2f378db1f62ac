"""`broker jobs why` on every reason the scheduler gives, through the API and the real script code.

Each reason comes from the real scheduling core: the cycle cases of tests/unit/test_cycle_cases.py
are run, and for every reason code the first case that produces it lends its PendingReason
(message, details with their numbers, queue position, estimate), stored on a job through the
same conversion the scheduling loop uses. `why` must say it in words with those numbers and
what would help, never as raw JSON or epoch seconds. A reason code no case produces fails the
coverage test, so a new code cannot ship without its explanation.
"""

from __future__ import annotations

import re
import time

import pytest
from sqlmodel import Session

from broker import jobstate
from broker.cli import render
from broker.cli.jobs import HINTS
from broker.services.scheduling import _plain
from scheduler.cycle import run_cycle
from scheduler.model import ReasonCode
from tests.broker.conftest import job_body
from tests.unit.test_cycle_cases import CASES


def _reasons_by_code() -> dict[str, object]:
    found: dict[str, object] = {}
    for name in sorted(CASES):
        case = CASES[name]()
        result = run_cycle(case.snap, case.now, case.policy)
        for reason in result.pending.values():
            if reason.message:  # explain on (one case turns it off on purpose)
                found.setdefault(reason.code.value, reason)
    return found


REASONS = _reasons_by_code()


def test_the_scheduler_cases_cover_every_reason_code():
    assert set(REASONS) == {c.value for c in ReasonCode}, set(c.value for c in ReasonCode) - set(REASONS)
    assert set(HINTS) >= set(REASONS)  # and `why` has advice for each


@pytest.mark.parametrize("code", sorted(REASONS))
def test_why_explains_each_reason_with_its_numbers(cli, client, engine, code):
    reason = REASONS[code]
    job = client.post("/api/v1/jobs", json=job_body()).json()
    eta = time.time() + 47 * 60 + 30
    with Session(engine) as s:
        jobstate.set_pending_reason(s, job["id"], code=code, message=reason.message, details=_plain(reason.details),
                                    queue_position=reason.queue_position or 2, estimated_start=eta)
        s.commit()
    r = cli("jobs", "why", job["id"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert reason.message.rstrip(".") in out, out
    assert f"What helps: {HINTS[code]}" in out
    assert "in ~47 min" in out and "in the queue" in out
    for key, value in _plain(reason.details).items():
        if key.endswith("_s") and isinstance(value, (int, float)):  # seconds, said as a duration
            assert f"{key[:-2].replace('_', ' ')}:" in out and render.duration(value) in out, (key, value, out)
            continue
        assert key.replace("_", " ") in out, (key, out)
        for number in re.findall(r"\d+(?:\.\d+)?", str(value))[:3]:
            assert number.rstrip("0").rstrip(".") in out, (key, value, out)
    assert "{" not in out and not re.search(r"\b1[789]\d{8}\b", out), out  # no raw JSON, no epoch seconds
