"""Per-project results storage: how much a project keeps, against its limit.

Each project's results directory (`Settings.results_dir`, mounted at /results in its jobs)
survives the jobs. Its size is measured by walking it, which may be slow on a big tree, so
it is measured off the request path: by the scheduling loop before each launch of the
project's jobs and by the usage route (in a worker thread), and remembered here. The submit
check reads only the remembered figure: a project at or over `results_max_gb_per_project`
gets 422 RESULTS_FULL for new jobs (running jobs are not stopped) until it frees space.

Limits: the figure is this broker host's view of the results root; with several nodes the root
must be a shared filesystem for it to mean anything (like the checkpoint root).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from broker.errors import Invalid
from broker.settings import Settings

GIB = 1 << 30
_sizes: dict[str, tuple[int, float]] = {}  # results dir -> (bytes, measured at)
_lock = threading.Lock()


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root, onerror=lambda e: None):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def measure(settings: Settings, project: str) -> dict:
    """Walk the project's results directory now; remember and return its usage."""
    d = settings.results_dir(project)
    size = tree_bytes(d) if d.exists() else 0
    with _lock:
        _sizes[str(d)] = (size, time.time())
    return usage(settings, project)


def usage(settings: Settings, project: str) -> dict:
    """The last measured usage (bytes None: not measured yet in this process)."""
    d = settings.results_dir(project)
    with _lock:
        got = _sizes.get(str(d))
    limit = int(settings.results_max_gb_per_project * GIB)
    size = got[0] if got else None
    return {"path": str(d), "bytes": size, "limit_bytes": limit, "measured_at": got[1] if got else None,
            "full": bool(limit) and size is not None and size >= limit}


def check_room(settings: Settings, project: str) -> None:
    """Refuse new jobs of a project whose results are at or over the limit (last measurement)."""
    u = usage(settings, project)
    if u["full"]:
        raise Invalid(f"project {project!r} keeps {u['bytes'] / GIB:.2f} GiB of results, at its limit of "
                      f"{settings.results_max_gb_per_project:g} GiB: delete results before submitting more",
                      code="RESULTS_FULL", details={k: u[k] for k in ("bytes", "limit_bytes")})
