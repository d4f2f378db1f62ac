"""Entry point of the `broker` console script.

Command groups live in `broker/cli_*.py` and register on the typer objects of
`broker.cli_common`; importing them here is the whole wiring. Add one import line per module.
"""

from __future__ import annotations

from broker.cli_common import app  # noqa: F401  (the console script target: broker.cli:app)

import broker.cli_jobs  # noqa: F401,E402  jobs submit|list|get|cancel|logs|events
import broker.cli_bench_submit  # noqa: F401,E402  bench submit
import broker.cli_up  # noqa: F401,E402  up
import broker.cli_bench_dispatch  # noqa: F401,E402  bench dispatch
import broker.cli_bench_ingest  # noqa: F401,E402  bench ingest (telemetry)
import broker.cli_nodes  # noqa: F401,E402  nodes list|cordon|drain|uncordon|move

# ---- registered by other modules (one import line each) ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
