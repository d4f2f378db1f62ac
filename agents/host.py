"""Host metrics via psutil: CPU, memory, disk of the node the agent runs on.

`cpu_percent` is measured between two calls (psutil's `interval=None` mode), so the first
reading after start is None rather than a misleading 0.
"""

from __future__ import annotations

import os

import psutil

from agents.schema import HostSample

_MB = 1024 * 1024
_GB = 1024 * 1024 * 1024


class HostReader:
    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path
        self._primed = False

    def read(self, now: float) -> HostSample:
        cpu = psutil.cpu_percent(interval=None)
        cpu_value = cpu if self._primed else None
        self._primed = True
        vm = psutil.virtual_memory()
        try:
            du = psutil.disk_usage(self.disk_path)
            disk_used, disk_total = du.used / _GB, du.total / _GB
        except OSError:
            disk_used = disk_total = None
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = None
        return HostSample(
            ts=now,
            cpu_percent=min(100.0, max(0.0, cpu_value)) if cpu_value is not None else None,
            cpu_count=psutil.cpu_count(),
            load1=load1,
            mem_used_mb=(vm.total - vm.available) / _MB,
            mem_total_mb=vm.total / _MB,
            disk_path=self.disk_path,
            disk_used_gb=disk_used,
            disk_total_gb=disk_total,
        )
