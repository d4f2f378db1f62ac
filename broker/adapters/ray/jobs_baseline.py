"""Ray's own Jobs API, used only as the baseline of `broker bench dispatch`.

Users never see Ray's APIs; this module exists so the benchmark can time the same command with
the same entrypoint resources through `JobSubmissionClient.submit_job`, and it lives under
`broker/adapters/ray*.py` because only those modules import `ray`.
"""

from __future__ import annotations

import time
from typing import Callable

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayJobsBaseline:
    def __init__(self, dashboard_url: str) -> None:
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(dashboard_url)

    def run(self, entrypoint: str, *, cpus: float, gpus: float, started: Callable[[], float | None],
            timeout_s: float = 120.0) -> float:
        """Submit `entrypoint`, return seconds from submit until `started()` reports the epoch
        time the process ran, then wait for the job to end (so the next run finds an idle
        cluster)."""
        t0 = time.time()
        job = self.client.submit_job(entrypoint=entrypoint, entrypoint_num_cpus=cpus,
                                     entrypoint_num_gpus=gpus)
        deadline = t0 + timeout_s
        ran = None
        while ran is None:
            if time.time() > deadline:
                raise TimeoutError(f"Ray job {job} did not start within {timeout_s} s")
            ran = started()
            if ran is None:
                time.sleep(0.005)
        while str(self.client.get_job_status(job).value) not in TERMINAL:
            if time.time() > deadline:
                raise TimeoutError(f"Ray job {job} did not end within {timeout_s} s")
            time.sleep(0.02)
        return ran - t0
