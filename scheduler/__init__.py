"""The pure scheduling core: `run_cycle(snapshot, now, policy) -> CycleResult`."""

from scheduler.cycle import run_cycle

__all__ = ["run_cycle"]
