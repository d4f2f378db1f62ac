"""The GPU reader port: what the agent needs from NVML, behind a Protocol.

Two implementations: `agents.nvml.NvmlReader` (the only module importing pynvml) and
`agents.fake.FakeReader` (scripted devices for tests, demos and load tests).

Invariants every reader keeps:
- `init()` never raises for a missing library, driver or GPU: it returns `ReaderInfo` with
  `cpu_only=True` and a reason, and `read()` then returns no devices.
- `read(now)` returns one `DeviceSample` per device with `ts=now`; a field the device does not
  support is None; `xid_events` holds the Xid events seen since the previous `read()`.
- Processes carry pid and memory only; attribution to jobs happens later
  (`agents.attribution`), so readers stay free of /proc and podman.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agents.schema import DeviceSample


@dataclass(frozen=True, slots=True)
class ReaderInfo:
    backend: str  # "nvml" | "fake" | "none"
    device_count: int = 0
    driver_version: str | None = None
    cuda_version: str | None = None
    cpu_only: bool = False
    cpu_only_reason: str | None = None


class GpuReader(Protocol):
    def init(self) -> ReaderInfo: ...

    def read(self, now: float) -> list[DeviceSample]: ...

    def shutdown(self) -> None: ...


class NullReader:
    """A CPU-only node: no devices, ever."""

    def __init__(self, reason: str = "no GPU reader configured") -> None:
        self._reason = reason

    def init(self) -> ReaderInfo:
        return ReaderInfo(backend="none", cpu_only=True, cpu_only_reason=self._reason)

    def read(self, now: float) -> list[DeviceSample]:
        return []

    def shutdown(self) -> None:
        return None
