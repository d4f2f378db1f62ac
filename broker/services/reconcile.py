"""Reconciliation: repair drift between the DB (the truth) and the executor (observed).

Drift this repairs, each within one reconcile interval:
- an attempt the executor still holds (runner actors, placement group) whose job no longer
  holds resources in the DB (finished, requeued as a newer attempt, cancelled while the broker
  was down) -> released;
- a job stuck in STARTING or RUNNING whose attempt the executor no longer knows -> LOST, then
  requeued or failed (done by the scheduling loop's observe step, which sees `exists=False`);
- a job ADMITTED but never launched (the broker stopped between admission and launch) ->
  launched by the loop's launch step, which is idempotent per attempt.

Order matters: the executor is read before the DB, so an attempt admitted and launched between
the two reads is in the DB's holding set and is never released by mistake.
"""

from __future__ import annotations

import logging
from typing import Sequence

from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.ports import Executor
from broker.services import scheduling_queries as repo

log = logging.getLogger("broker.reconcile")


def release_orphans(engine: Engine, executor: Executor) -> Sequence[tuple[str, int]]:
    """Release executor attempts the DB does not hold; return what was released."""
    live = set(executor.attempts())
    if not live:
        return []
    with Session(engine) as s:
        holding = {(j.id, j.attempt) for j in repo.holding_jobs(s)}
    orphans = sorted(live - holding)
    for job_id, attempt in orphans:
        try:
            executor.release(job_id, attempt)
            log.info("released orphaned attempt %s/%s", job_id, attempt)
        except Exception as e:
            log.warning("could not release orphaned attempt %s/%s: %s", job_id, attempt, e)
    return orphans
