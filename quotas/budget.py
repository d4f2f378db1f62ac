"""GPU-hour budgets per period, for a project and for its department.

Why reservations: a running job may still use gpus x (its remaining max_runtime). Admitting a
job only when spent + reserved + its own reservation fits every budget above it means a budget
can never be overrun, so running jobs never have to be killed for budget reasons (unlike
Slurm's GrpTRESMins, which cancels work when the minutes run out).

`spent` is what the caller already accounted (finished work plus the elapsed part of running
work); `reserved` is the remaining part of running work: gpus x max(0, start + max_runtime - now).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from quotas.amount import UNLIMITED, ZERO, Amount

SECONDS_PER_HOUR = 3600.0


def reservation_gpu_hours(gpus: int, seconds: float) -> Amount:
    """Invariant: a reservation is never negative (time already past reserves nothing)."""
    return Amount.of(gpus * max(0.0, seconds) / SECONDS_PER_HOUR)


def remaining_reservation(gpus: int, start_time: float, max_runtime_s: float, now: float) -> Amount:
    """Invariant: remaining + elapsed = gpus x max_runtime for a job still within its runtime."""
    return reservation_gpu_hours(gpus, start_time + max_runtime_s - now)


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    ok: bool
    owner: str = ""  # the first owner whose budget would be exceeded
    budget: Amount = UNLIMITED
    spent: Amount = ZERO
    reserved: Amount = ZERO
    requested: Amount = ZERO

    @property
    def left(self) -> Amount:
        return (self.budget - self.spent - self.reserved).clamp0()


class BudgetLedger:
    """Spent and reserved GPU-hours per owner (project or department id) during one cycle."""

    def __init__(self, budgets: Mapping[str, Amount], spent: Mapping[str, float]) -> None:
        self.budget = {o: Amount.of(b) for o, b in budgets.items()}
        self.spent = {o: Amount.of(s) for o, s in spent.items()}
        self.reserved: dict[str, Amount] = {}

    def left(self, owner: str) -> Amount:
        """Invariant: left = budget - spent - reserved, never below zero."""
        b = self.budget.get(owner, UNLIMITED)
        return (b - self.spent.get(owner, ZERO) - self.reserved.get(owner, ZERO)).clamp0()

    def check(self, owners: tuple[str, ...], request: Amount) -> BudgetCheck:
        """Invariant: ok only if spent + reserved + request <= budget for every owner above the job."""
        for o in owners:
            b = self.budget.get(o, UNLIMITED)
            if b.unlimited:
                continue
            s, r = self.spent.get(o, ZERO), self.reserved.get(o, ZERO)
            if s + r + request > b:
                return BudgetCheck(False, o, b, s, r, request)
        return BudgetCheck(True, requested=request)

    def reserve(self, owners: tuple[str, ...], amount: Amount) -> Callable[[], None]:
        """Invariant: reserving then undoing leaves the ledger as it was."""
        for o in owners:
            self.reserved[o] = self.reserved.get(o, ZERO) + amount

        def undo() -> None:
            for o in owners:
                self.reserved[o] = self.reserved[o] - amount

        return undo
