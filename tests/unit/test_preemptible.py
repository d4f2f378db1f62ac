"""`Job.preemptible=False` (an operation service's `min` replicas): never a victim, of any kind.

Named cases: the same snapshot with the would-be victim marked preemptible or not; the other
running job is chosen instead where it frees enough, else nothing is preempted.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from scheduler import run_cycle
from scheduler.model import Flavor
from tests.unit.schedkit import OP, job, node, project, running, snapshot

OPF = Flavor("operation", "A100")
NOW = 10_000.0


def _op_snap(victims, need: int):
    """An operation job of project ops (guarantee 8) behind lent jobs on one 8-GPU operation node."""
    return snapshot([node("o1", pool="operation")], [job("clinical", gpus=need, cls=OP, project="ops", submit=NOW)],
                    victims, projects=[project("ops", nominal=8, guaranteed=8, flavor=("operation", "A100")),
                                       project("svc")])


def _lent(jid: str, gpus: tuple[int, ...], preemptible: bool = True, cls=OP):
    j = replace(job(jid, gpus=len(gpus), project="svc", cls=cls), preemptible=preemptible)
    return running(j, ("o1", gpus), start=NOW - 5_000.0, flavor=OPF, borrowing=True)


CASES = [
    # (name, victims, need, expected victims)
    ("preemptible replicas are victims", [_lent("r0", (0, 1, 2, 3)), _lent("r1", (4, 5, 6, 7))], 4, {"r0", "r1"}),
    ("a min replica is spared, the extra one goes",
     [_lent("r0", (0, 1, 2, 3), preemptible=False), _lent("r1", (4, 5, 6, 7))], 4, {"r1"}),
    ("nothing frees enough without a min replica",
     [_lent("r0", (0, 1, 2, 3), preemptible=False), _lent("r1", (4, 5, 6, 7))], 8, set()),
]


@pytest.mark.parametrize("name,victims,need,expected", CASES, ids=[c[0] for c in CASES])
def test_non_preemptible_jobs_are_never_victims(name, victims, need, expected):
    r = run_cycle(_op_snap(victims, need), NOW)
    got = {p.job_id for p in r.preemptions}
    if expected == {"r0", "r1"}:  # either one suffices for 4 GPUs
        assert len(got) == 1 and got <= expected
    else:
        assert got == expected
