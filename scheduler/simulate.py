"""`python -m scheduler.simulate`: the documented entry point of the trace-driven simulator.

A thin alias kept so commands in docs and scripts keep working; the simulator lives in
`scheduler.sim.simulate` (same flags, same output).
"""

import sys

from scheduler.sim.simulate import SimConfig, SimResult, main, simulate

__all__ = ["SimConfig", "SimResult", "main", "simulate"]

if __name__ == "__main__":
    sys.exit(main())
