"""A scripted GPU reader: deterministic devices for tests, demos and load tests.

Why scripted and not random: a test that asserts "utilization 95 %" or "Xid 79 reached the
broker" must see the same numbers on every run. Every value is a function of the device
index and the read counter `k` (0, 1, 2, ... per `read()`), never of wall time; only `ts` and
the energy counter follow the `now` passed in.

Patterns (per device, `patterns[i % len(patterns)]`):
  idle     0 % utilization, little memory
  busy     95 % utilization, 60 % memory
  sine     50 +/- 45 % with a 60-read period (phase shifted per device)
  sawtooth 0..99 % rising by 10 per read
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from typing import Iterable, Sequence

from agents.reader import ReaderInfo
from agents.schema import DeviceSample, GpmMetrics, GpuProcess, XidEvent

PATTERNS = ("busy", "sine", "idle", "sawtooth")

# Fields a test may declare unsupported; they come back as None like NVML_ERROR_NOT_SUPPORTED.
OPTIONAL_FIELDS = frozenset(
    {
        "pci_bus_id", "util_gpu", "util_memory", "power_w", "energy_mj", "temp_gpu",
        "temp_memory", "sm_clock_mhz", "mem_clock_mhz", "pcie_replay", "ecc_uncorrectable",
        "ecc_correctable", "remapped_rows_pending", "remapped_rows_failure", "gpm",
    }
)


def utilization(pattern: str, index: int, k: int) -> float:
    """Utilization in percent of device `index` at read `k` under `pattern` (pure)."""
    if pattern == "idle":
        return 0.0
    if pattern == "busy":
        return 95.0
    if pattern == "sine":
        return round(50.0 + 45.0 * math.sin(2 * math.pi * k / 60.0 + index), 3)
    if pattern == "sawtooth":
        return float((k * 10) % 100)
    raise ValueError(f"unknown fake utilization pattern {pattern!r}")


class FakeReader:
    """N fake GPUs. Inject Xid events and processes; declare fields unsupported."""

    def __init__(
        self,
        n: int = 2,
        *,
        model: str = "NVIDIA H100 80GB HBM3",
        memory_total_mb: float = 81559.0,
        patterns: Sequence[str] = PATTERNS,
        unsupported: Iterable[str] = (),
        node_seed: str = "fake-node",
        driver_version: str = "550.54.15",
        cuda_version: str = "12.4",
    ) -> None:
        unknown = set(unsupported) - OPTIONAL_FIELDS
        if unknown:
            raise ValueError(f"fields that cannot be unsupported: {sorted(unknown)}")
        for p in patterns:
            utilization(p, 0, 0)  # validate early
        self.n = n
        self.model = model
        self.memory_total_mb = memory_total_mb
        self.patterns = tuple(patterns)
        self.unsupported = frozenset(unsupported)
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.uuids = [f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node_seed}/{i}')}" for i in range(n)]
        self.k = 0
        self._last_now: float | None = None
        self._energy_mj = [1_000_000_000 + i * 1_000_000 for i in range(n)]
        self._pending_xid: dict[int, list[tuple[int, str | None]]] = defaultdict(list)
        self._processes: dict[int, list[GpuProcess]] = {}
        self._ecc_uncorrectable = [0] * n
        self.initialized = False

    # -- scripting ---------------------------------------------------------------------
    def inject_xid(self, index: int, xid: int, message: str | None = None) -> None:
        """The next `read()` reports this Xid on device `index` (once)."""
        self._pending_xid[index].append((xid, message))

    def inject_ecc_uncorrectable(self, index: int, count: int = 1) -> None:
        self._ecc_uncorrectable[index] += count

    def set_processes(self, index: int, procs: Iterable[tuple[int, float]]) -> None:
        """Compute processes on device `index` as (pid, used_memory_mb)."""
        self._processes[index] = [GpuProcess(pid=p, used_memory_mb=m) for p, m in procs]

    # -- GpuReader -----------------------------------------------------------------------
    def init(self) -> ReaderInfo:
        self.initialized = True
        return ReaderInfo(
            backend="fake",
            device_count=self.n,
            driver_version=self.driver_version,
            cuda_version=self.cuda_version,
        )

    def read(self, now: float) -> list[DeviceSample]:
        dt = 0.0 if self._last_now is None else max(0.0, now - self._last_now)
        self._last_now = now
        out = [self._sample(i, now, dt) for i in range(self.n)]
        self._pending_xid.clear()
        self.k += 1
        return out

    def shutdown(self) -> None:
        self.initialized = False

    # -- internals -----------------------------------------------------------------------
    def _sample(self, i: int, now: float, dt: float) -> DeviceSample:
        pattern = self.patterns[i % len(self.patterns)]
        util = utilization(pattern, i, self.k)
        power = 70.0 + 6.3 * util  # 70 W idle .. ~700 W flat out, like an H100 SXM
        self._energy_mj[i] += int(power * dt * 1000)
        mem_used = round(self.memory_total_mb * (0.005 + 0.6 * util / 100.0), 1)
        values = {
            "index": i,
            "uuid": self.uuids[i],
            "model": self.model,
            "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0",
            "ts": now,
            "memory_total_mb": self.memory_total_mb,
            "memory_used_mb": mem_used,
            "util_gpu": util,
            "util_memory": round(util * 0.4, 3),
            "power_w": round(power, 2),
            "energy_mj": self._energy_mj[i],
            "temp_gpu": round(30.0 + util * 0.4, 1),
            "temp_memory": round(35.0 + util * 0.3, 1),
            "sm_clock_mhz": 345.0 if util == 0 else 1980.0,
            "mem_clock_mhz": 2619.0,
            "pcie_replay": 0,
            "ecc_uncorrectable": self._ecc_uncorrectable[i],
            "ecc_correctable": 0,
            "remapped_rows_pending": False,
            "remapped_rows_failure": False,
            "xid_events": [XidEvent(xid=x, ts=now, message=m) for x, m in self._pending_xid.get(i, [])],
            "processes": list(self._processes.get(i, [])),
            "gpm": GpmMetrics(
                graphics_activity=round(util * 0.9, 3),
                tensor_activity=round(util * 0.5, 3),
                dram_bw_util=round(util * 0.3, 3),
            ),
        }
        for f in self.unsupported:
            values[f] = None
        return DeviceSample(**values)
