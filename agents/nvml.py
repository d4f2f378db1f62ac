"""The NVML GPU reader: the only module in the project that imports pynvml (nvidia-ml-py).

Why every field is read in its own try: NVML answers NVML_ERROR_NOT_SUPPORTED for whatever a
board or driver lacks (no power sensor on some boards, no memory temperature before HBM, no
ECC on consumer cards, no GPM before Hopper). One unsupported field must cost that field
only, never the sample or the agent. Unsupported -> the field is None (absent on the wire);
other errors -> None too, and logged once per (device, field, error).

Why `init()` never raises: the agent runs on every node, CPU-only ones included. Without
libnvidia-ml (NVMLError_LibraryNotFound), without a loaded driver (DriverNotLoaded) or with
no GPU, the reader reports a CPU-only node, logs the reason once, and `read()` returns [].

Xid errors come from an NVML event set registered for nvmlEventTypeXidCriticalError and
polled with a 0 ms timeout on every read, so a read never blocks on events. GPM metrics
(graphics activity, tensor activity, DRAM bandwidth) are computed between the previous and
the current GPM sample of the device, on devices where nvmlGpmQueryDeviceSupport says so.

The pynvml module is injectable (`nvml=`) so the error paths are unit-tested with a stub on
machines without a GPU; production passes nothing and gets the real module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from agents.reader import ReaderInfo
from agents.schema import DeviceSample, GpmMetrics, GpuProcess, XidEvent

log = logging.getLogger("broker_agent.nvml")

_MIB = 1024 * 1024
_MAX_EVENTS_PER_READ = 1024


def _load_pynvml() -> Any:
    import pynvml  # noqa: PLC0415 - the one place the project imports it

    return pynvml


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, (bytes, bytearray)) else str(v)


def _cuda_version(v: int) -> str:
    """NVML encodes CUDA 12.4 as 12040."""
    return f"{v // 1000}.{(v % 1000) // 10}"


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str
    model: str
    pci_bus_id: str | None
    memory_total_mb: float | None
    gpm_prev: Any = None  # GPM sample buffers; None: GPM not used on this device
    gpm_cur: Any = None
    gpm_req: Any = None
    processes_fn: Callable[[Any], Any] | None = None
    warned: set[tuple[str, int]] = field(default_factory=set)


class NvmlReader:
    """GpuReader over NVML. See the module docstring for the error policy."""

    def __init__(self, nvml: Any = None, *, enable_gpm: bool = True, indices: "list[int] | None" = None) -> None:
        """`indices`: read only these NVML device indices (a node that owns part of the
        machine's GPUs, e.g. one of `broker up`'s local nodes); None reads every GPU."""
        self._indices = None if indices is None else set(indices)
        self._nv_given = nvml
        self._nv: Any = None
        self._devices: list[_Device] = []
        self._event_set: Any = None
        self._enable_gpm = enable_gpm
        self._info = ReaderInfo(backend="nvml", cpu_only=True, cpu_only_reason="not initialized")

    # -- GpuReader -------------------------------------------------------------------------
    def init(self) -> ReaderInfo:
        try:
            nv = self._nv_given if self._nv_given is not None else _load_pynvml()
        except Exception as e:  # nvidia-ml-py not installed
            return self._cpu_only(f"nvidia-ml-py is not importable: {e}")
        self._nv = nv
        try:
            nv.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, _NoPermission, OSError
            self._nv = None
            return self._cpu_only(f"NVML unavailable: {e}")
        try:
            count = int(nv.nvmlDeviceGetCount())
        except Exception as e:
            self._safe_shutdown()
            return self._cpu_only(f"NVML device count failed: {e}")
        if count == 0:
            self._safe_shutdown()
            return self._cpu_only("NVML found no NVIDIA GPU")
        driver = self._opt(lambda: _s(nv.nvmlSystemGetDriverVersion()))
        cuda = self._opt(lambda: _cuda_version(int(nv.nvmlSystemGetCudaDriverVersion())))
        for i in range(count):
            if self._indices is not None and i not in self._indices:
                continue
            try:
                self._devices.append(self._open_device(i))
            except Exception as e:  # a device that cannot even be opened is skipped, loudly
                log.warning("NVML: skipping GPU %d: %s", i, e)
        self._event_set = self._register_xid_events()
        self._info = ReaderInfo(
            backend="nvml", device_count=len(self._devices), driver_version=driver, cuda_version=cuda
        )
        log.info("NVML: %d GPU(s), driver %s, CUDA %s", len(self._devices), driver, cuda)
        return self._info

    def read(self, now: float) -> list[DeviceSample]:
        if self._nv is None or not self._devices:
            return []
        xids = self._poll_xid(now)
        return [self._read_device(d, now, xids.get(d.index, [])) for d in self._devices]

    def shutdown(self) -> None:
        nv = self._nv
        if nv is None:
            return
        if self._event_set is not None:
            self._opt(lambda: nv.nvmlEventSetFree(self._event_set))
            self._event_set = None
        for d in self._devices:
            for s in (d.gpm_prev, d.gpm_cur):
                if s is not None:
                    self._opt(lambda s=s: nv.nvmlGpmSampleFree(s))
        self._devices = []
        self._safe_shutdown()

    # -- init helpers ----------------------------------------------------------------------
    def _cpu_only(self, reason: str) -> ReaderInfo:
        log.warning("no usable NVIDIA GPU: reporting a CPU-only node (%s)", reason)
        self._info = ReaderInfo(backend="nvml", cpu_only=True, cpu_only_reason=reason[:256])
        return self._info

    def _safe_shutdown(self) -> None:
        nv, self._nv = self._nv, None
        if nv is not None:
            try:
                nv.nvmlShutdown()
            except Exception as e:  # the library is gone either way
                log.debug("nvmlShutdown: %s", e)

    @staticmethod
    def _opt(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            return None

    def _open_device(self, i: int) -> _Device:
        nv = self._nv
        h = nv.nvmlDeviceGetHandleByIndex(i)
        mem = self._opt(lambda: nv.nvmlDeviceGetMemoryInfo(h))
        pci = self._opt(lambda: nv.nvmlDeviceGetPciInfo(h))
        d = _Device(
            index=i,
            handle=h,
            uuid=_s(nv.nvmlDeviceGetUUID(h)),
            model=_s(self._opt(lambda: nv.nvmlDeviceGetName(h)) or ""),
            pci_bus_id=_s(pci.busId) if pci is not None else None,
            memory_total_mb=(mem.total / _MIB) if mem is not None else None,
        )
        if self._enable_gpm:
            self._init_gpm(d)
        return d

    def _init_gpm(self, d: _Device) -> None:
        nv = self._nv
        try:
            if not nv.nvmlGpmQueryDeviceSupport(d.handle).isSupportedDevice:
                return
            d.gpm_prev = nv.nvmlGpmSampleAlloc()
            d.gpm_cur = nv.nvmlGpmSampleAlloc()
            nv.nvmlGpmSampleGet(d.handle, d.gpm_prev)
            req = nv.c_nvmlGpmMetricsGet_t()
            req.version = nv.NVML_GPM_METRICS_GET_VERSION
            ids = (nv.NVML_GPM_METRIC_GRAPHICS_UTIL, nv.NVML_GPM_METRIC_ANY_TENSOR_UTIL, nv.NVML_GPM_METRIC_DRAM_BW_UTIL)
            req.numMetrics = len(ids)
            for j, m in enumerate(ids):
                req.metrics[j].metricId = m
            d.gpm_req = req
        except Exception as e:  # pre-Hopper, old driver, or MIG: no GPM, plain utilization only
            log.info("NVML: GPU %d has no GPM metrics (%s)", d.index, e)
            d.gpm_prev = d.gpm_cur = d.gpm_req = None

    def _register_xid_events(self) -> Any:
        nv = self._nv
        try:
            es = nv.nvmlEventSetCreate()
        except Exception as e:
            log.warning("NVML: no event set, Xid errors will not be reported (%s)", e)
            return None
        registered = 0
        for d in self._devices:
            try:
                nv.nvmlDeviceRegisterEvents(d.handle, nv.nvmlEventTypeXidCriticalError, es)
                registered += 1
            except Exception as e:
                log.warning("NVML: GPU %d cannot report Xid events (%s)", d.index, e)
        if registered == 0:
            self._opt(lambda: nv.nvmlEventSetFree(es))
            return None
        return es

    # -- read helpers ----------------------------------------------------------------------
    def _field(self, d: _Device, name: str, fn: Callable[[], Any]) -> Any:
        """One NVML call for one field: its value, or None when unsupported or failing."""
        nv = self._nv
        try:
            return fn()
        except nv.NVMLError as e:
            code = getattr(e, "value", -1)
            if code != nv.NVML_ERROR_NOT_SUPPORTED and (name, code) not in d.warned:
                d.warned.add((name, code))
                log.warning("NVML: GPU %d field %s failed: %s", d.index, name, e)
            return None
        except Exception as e:  # ctypes or version mismatches: never fatal
            if (name, -1) not in d.warned:
                d.warned.add((name, -1))
                log.warning("NVML: GPU %d field %s failed: %s", d.index, name, e)
            return None

    def _read_device(self, d: _Device, now: float, xids: list[XidEvent]) -> DeviceSample:
        nv, h = self._nv, d.handle
        f = lambda name, fn: self._field(d, name, fn)  # noqa: E731
        mem = f("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        util = f("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        power_mw = f("power", lambda: nv.nvmlDeviceGetPowerUsage(h))
        remap = f("remapped_rows", lambda: nv.nvmlDeviceGetRemappedRows(h))
        return DeviceSample(
            index=d.index,
            uuid=d.uuid,
            model=d.model,
            pci_bus_id=d.pci_bus_id,
            ts=now,
            memory_total_mb=(mem.total / _MIB) if mem is not None else d.memory_total_mb,
            memory_used_mb=(mem.used / _MIB) if mem is not None else None,
            util_gpu=float(util.gpu) if util is not None else None,
            util_memory=float(util.memory) if util is not None else None,
            power_w=(power_mw / 1000.0) if power_mw is not None else None,
            energy_mj=f("energy", lambda: int(nv.nvmlDeviceGetTotalEnergyConsumption(h))),
            temp_gpu=f("temp_gpu", lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
            temp_memory=f("temp_memory", lambda: self._field_value(h, nv.NVML_FI_DEV_MEMORY_TEMP)),
            sm_clock_mhz=f("sm_clock", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))),
            mem_clock_mhz=f("mem_clock", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))),
            pcie_replay=f("pcie_replay", lambda: int(nv.nvmlDeviceGetPcieReplayCounter(h))),
            ecc_uncorrectable=f("ecc_uncorrectable", lambda: int(nv.nvmlDeviceGetTotalEccErrors(
                h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC))),
            ecc_correctable=f("ecc_correctable", lambda: int(nv.nvmlDeviceGetTotalEccErrors(
                h, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC))),
            remapped_rows_pending=bool(remap[2]) if remap is not None else None,
            remapped_rows_failure=bool(remap[3]) if remap is not None else None,
            xid_events=xids,
            processes=f("processes", lambda: self._processes(d)) or [],
            gpm=self._gpm(d),
        )

    def _field_value(self, h: Any, field_id: int) -> float | None:
        """nvmlDeviceGetFieldValues for one field; None when that field's own return fails."""
        nv = self._nv
        v = nv.nvmlDeviceGetFieldValues(h, [field_id])[0]
        if v.nvmlReturn != nv.NVML_SUCCESS:
            return None
        member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
        return float(getattr(v.value, member.get(int(v.valueType), "uiVal")))

    def _processes(self, d: _Device) -> list[GpuProcess]:
        nv = self._nv
        if d.processes_fn is None:
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(d.handle)
                d.processes_fn = nv.nvmlDeviceGetComputeRunningProcesses
            except nv.NVMLError as e:  # old driver without the v3 entry point
                if getattr(e, "value", None) != getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND", None):
                    raise
                d.processes_fn = nv.nvmlDeviceGetComputeRunningProcesses_v2
                procs = d.processes_fn(d.handle)
        else:
            procs = d.processes_fn(d.handle)
        out = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            out.append(GpuProcess(pid=int(p.pid), used_memory_mb=(used / _MIB) if used is not None else None))
        return out

    def _gpm(self, d: _Device) -> GpmMetrics | None:
        if d.gpm_req is None:
            return None
        nv = self._nv
        try:
            nv.nvmlGpmSampleGet(d.handle, d.gpm_cur)
            req = d.gpm_req
            req.sample1, req.sample2 = d.gpm_prev, d.gpm_cur
            nv.nvmlGpmMetricsGet(req)
            vals = [
                float(req.metrics[j].value) if req.metrics[j].nvmlReturn == nv.NVML_SUCCESS else None
                for j in range(3)
            ]
        except Exception as e:
            if ("gpm", -1) not in d.warned:
                d.warned.add(("gpm", -1))
                log.warning("NVML: GPU %d GPM read failed: %s", d.index, e)
            return None
        finally:
            d.gpm_prev, d.gpm_cur = d.gpm_cur, d.gpm_prev
        clamp = lambda v: None if v is None else max(0.0, v)  # noqa: E731
        return GpmMetrics(graphics_activity=clamp(vals[0]), tensor_activity=clamp(vals[1]), dram_bw_util=clamp(vals[2]))

    def _poll_xid(self, now: float) -> dict[int, list[XidEvent]]:
        """Drain pending Xid events without blocking (0 ms timeout)."""
        if self._event_set is None:
            return {}
        nv = self._nv
        out: dict[int, list[XidEvent]] = {}
        for _ in range(_MAX_EVENTS_PER_READ):
            try:
                data = nv.nvmlEventSetWait_v2(self._event_set, 0)
            except nv.NVMLError as e:
                if getattr(e, "value", None) != nv.NVML_ERROR_TIMEOUT:
                    log.warning("NVML: Xid event wait failed: %s", e)
                break
            except Exception as e:
                log.warning("NVML: Xid event wait failed: %s", e)
                break
            if not (int(data.eventType) & nv.nvmlEventTypeXidCriticalError):
                continue
            idx = self._opt(lambda: int(nv.nvmlDeviceGetIndex(data.device)))
            if idx is None:
                continue
            out.setdefault(idx, []).append(XidEvent(xid=int(data.eventData), ts=now))
        return out


def gpu_count() -> int:
    """The NVIDIA GPUs this machine has (0 without a driver or without nvidia-ml-py)."""
    try:
        nv = _load_pynvml()
        nv.nvmlInit()
    except Exception:  # noqa: BLE001 - no library, no driver: no GPUs
        return 0
    try:
        return int(nv.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return 0
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
