"""Small helpers shared by the simulator's tests: a stand-in cycle and outcome lookup."""

from __future__ import annotations

from scheduler.model import Admission, CycleResult, Flavor, Placement, Preemption
from scheduler.sim.metrics import JobOutcome


def scripted(victims_for: dict[str, str] | None = None, borrowers: frozenset[str] = frozenset()):
    """A stand-in cycle: fifo with head-of-line blocking over free GPUs (first fit), and
    `victims_for[pending_id] = running_id`: preempt that victim when the pending job is blocked;
    jobs in `borrowers` are admitted as borrowing. It lets the simulator's own bookkeeping be
    checked independently of the real core."""
    victims_for = victims_for or {}

    def cycle(snap, now, policy):
        free = {n.id: n.capacity.gpus for n in snap.nodes}
        for r in snap.running:
            for p in r.placements:
                free[p.node] -= r.job.per_worker.gpus
        running = {r.job.id for r in snap.running}
        adms, pres = [], []
        # preemptors first (as reclaim would order them), then arrival order
        for j in sorted(snap.pending, key=lambda j: (j.id not in victims_for, j.submit_time, j.id)):
            pl = []
            for w in range(j.workers):
                node = next((n for n, g in sorted(free.items()) if g >= j.per_worker.gpus), None)
                if node is None:
                    break
                free[node] -= j.per_worker.gpus
                pl.append(Placement(w, node))
            if len(pl) < j.workers:
                for p in pl:
                    free[p.node] += j.per_worker.gpus
                if victims_for.get(j.id) in running:
                    pres.append(Preemption(victims_for[j.id], j.id, "RECLAIM_NOMINAL", "test"))
                break
            adms.append(Admission(j.id, Flavor("sim", "gpu"), tuple(pl), borrowing=j.id in borrowers))
        return CycleResult(admissions=tuple(adms), preemptions=tuple(pres))

    return cycle


def by_id(result) -> dict[str, JobOutcome]:
    return {o.id: o for o in result.outcomes}
