"""The trace-driven simulator and the cycle benchmark, kept apart from the scheduling core.

`scheduler/` holds the cycle the broker runs; this package holds what replays and measures it:
`traces` (parse and validate workload traces), `simulate` (replay a trace through `run_cycle`
on a simulated clock), `metrics` (the figures and their definitions) and `bench` (time
`run_cycle` on a seeded scenario). Everything here is pure (stdlib, `quotas`, `scheduler`) so a
replay is deterministic and runs anywhere the core runs. The documented entry points
`python -m scheduler.simulate` and `python -m scheduler.bench` are aliases of the modules here.
"""
