"""`python -m scheduler.bench`: the documented entry point of the cycle benchmark.

A thin alias kept so commands in docs, the Makefile and scripts keep working; the benchmark
lives in `scheduler.sim.bench` (same flags, same output).
"""

import sys

from scheduler.sim.bench import NOW, SMALL, Scenario, build_snapshot, main

__all__ = ["NOW", "SMALL", "Scenario", "build_snapshot", "main"]

if __name__ == "__main__":
    sys.exit(main())
