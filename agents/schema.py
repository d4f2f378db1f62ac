"""The wire contract between node agents and the broker: one `TelemetryReport` per push.

This is the only module of `agents/` that the broker imports, so it depends on pydantic and
the standard library only.

Why the shape is what it is:
- One report carries every reading taken since the previous push (default: 10 readings per
  GPU, one per second). `gpus` is therefore a flat list of `DeviceSample`, each with its own
  `ts`; the broker bulk-inserts it as rows without reshaping.
- Fields a device or driver does not support are *absent* (None), never a made-up zero: a
  missing power reading must not look like an idle GPU in a utilization report.
- `seq` is strictly increasing per agent (it starts at the agent's start time in
  milliseconds, or at the persisted next value, whichever is larger), so the broker can
  drop replayed duplicates with one comparison per node and an agent restart never reuses
  an old number.
- Unknown fields are ignored (`extra="ignore"`): a newer agent can talk to an older broker.
  `schema_version` is raised only for incompatible changes.

Units: memory in MiB, power in W, energy in mJ (the NVML total-energy counter since driver
load), temperatures in degrees C, clocks in MHz, utilization and GPM activity in percent
(0-100), timestamps in epoch seconds (float, UTC).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# Bounds that keep one request small enough to validate and insert in one go; a report from
# 16 GPUs sampled every second for 60 s is 960 samples.
MAX_SAMPLES_PER_REPORT = 20_000
MAX_XID_PER_SAMPLE = 256
MAX_PROCESSES_PER_SAMPLE = 512

Percent = Annotated[float, Field(ge=0.0, le=100.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]
NonNegInt = Annotated[int, Field(ge=0)]
ShortStr = Annotated[str, Field(max_length=256)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class XidEvent(_Wire):
    """One Xid error NVML reported for the device since the previous reading."""

    xid: NonNegInt
    ts: float
    # NVML eventData carries the Xid number only; message is for fakes and future sources.
    message: ShortStr | None = None


class GpuProcess(_Wire):
    """A compute process on the device, attributed to a job worker where the agent could."""

    pid: NonNegInt
    used_memory_mb: NonNegFloat | None = None
    job_id: ShortStr | None = None
    attempt: NonNegInt | None = None
    rank: NonNegInt | None = None
    project: ShortStr | None = None


class GpmMetrics(_Wire):
    """Hopper+ GPU Performance Monitoring metrics, percent over the last sample interval.

    Plain `util_gpu` says "a kernel was running"; these say how busy the engines really were.
    """

    graphics_activity: NonNegFloat | None = None
    tensor_activity: NonNegFloat | None = None
    dram_bw_util: NonNegFloat | None = None


class DeviceSample(_Wire):
    """One reading of one GPU at `ts`."""

    index: NonNegInt
    uuid: ShortStr
    model: ShortStr = ""
    pci_bus_id: ShortStr | None = None
    ts: float
    memory_total_mb: NonNegFloat | None = None
    memory_used_mb: NonNegFloat | None = None
    util_gpu: Percent | None = None
    util_memory: Percent | None = None
    power_w: NonNegFloat | None = None
    energy_mj: NonNegInt | None = None
    temp_gpu: float | None = None
    temp_memory: float | None = None
    sm_clock_mhz: NonNegFloat | None = None
    mem_clock_mhz: NonNegFloat | None = None
    pcie_replay: NonNegInt | None = None
    ecc_uncorrectable: NonNegInt | None = None  # volatile (since driver load)
    ecc_correctable: NonNegInt | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    xid_events: list[XidEvent] = Field(default_factory=list, max_length=MAX_XID_PER_SAMPLE)
    processes: list[GpuProcess] = Field(default_factory=list, max_length=MAX_PROCESSES_PER_SAMPLE)
    gpm: GpmMetrics | None = None


class HostSample(_Wire):
    ts: float
    cpu_percent: Percent | None = None
    cpu_count: NonNegInt | None = None
    load1: NonNegFloat | None = None
    mem_used_mb: NonNegFloat | None = None
    mem_total_mb: NonNegFloat | None = None
    disk_path: ShortStr | None = None
    disk_used_gb: NonNegFloat | None = None
    disk_total_gb: NonNegFloat | None = None


class Heartbeat(_Wire):
    """What the agent says about itself; every accepted report counts as a heartbeat."""

    started_at: float
    gpu_backend: Literal["nvml", "fake", "none"]
    cpu_only: bool = False  # True: no usable NVML (no library, no driver or no GPU)
    cpu_only_reason: ShortStr | None = None
    driver_version: ShortStr | None = None
    cuda_version: ShortStr | None = None
    device_count: NonNegInt = 0
    buffered_reports: NonNegInt = 0  # waiting on disk to be sent after this one
    dropped_reports: NonNegInt = 0  # lost to the buffer bound since the agent started


class TelemetryReport(_Wire):
    """One push from one agent. Invariant: `seq` is strictly increasing per `node_id`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    node_id: Annotated[str, Field(min_length=1, max_length=128)]
    hostname: ShortStr
    agent_version: ShortStr
    sent_at: float
    seq: NonNegInt
    heartbeat: Heartbeat
    host: HostSample | None = None  # the latest host reading
    gpus: list[DeviceSample] = Field(default_factory=list, max_length=MAX_SAMPLES_PER_REPORT)


class TelemetryAck(_Wire):
    """The broker's answer to a push. `duplicate`: seq was already stored; drop it anyway."""

    accepted: bool
    duplicate: bool = False
    samples: NonNegInt = 0
    node_status: str | None = None


__all__ = [
    "SCHEMA_VERSION",
    "DeviceSample",
    "GpmMetrics",
    "GpuProcess",
    "Heartbeat",
    "HostSample",
    "TelemetryAck",
    "TelemetryReport",
    "XidEvent",
]
