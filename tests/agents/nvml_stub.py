"""A stand-in for the pynvml module: scripted devices and scripted NVML errors.

It records every attribute the reader touches, so a test can check those names against the
real nvidia-ml-py (the API spelling is the part a GPU-less machine can still verify).
"""

from __future__ import annotations

from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15


class NVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found"}.get(self.value, f"error {self.value}")


class Stub:
    """Every public attribute below mirrors a pynvml name."""

    def __init__(self, n=2, *, init_error=None, unsupported=(), failing=(), gpm=True, xids=(), processes=None,
                 no_v3_processes=False):
        self.accessed: set[str] = set()
        self._n, self._init_error = n, init_error
        self._unsupported, self._failing = set(unsupported), set(failing)
        self._gpm, self._xids = gpm, list(xids)  # xids: [(device_index, xid)]
        self._processes = processes or {}
        self._no_v3 = no_v3_processes
        self.shutdown_calls = 0

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in ("accessed", "shutdown_calls"):
            object.__getattribute__(self, "accessed").add(name)
        return object.__getattribute__(self, name)

    # constants and types
    NVMLError = NVMLError
    NVML_SUCCESS = NVML_SUCCESS
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_TIMEOUT = NVML_ERROR_TIMEOUT
    NVML_ERROR_FUNCTION_NOT_FOUND = NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
    NVML_VOLATILE_ECC = 0
    NVML_FI_DEV_MEMORY_TEMP = 82
    nvmlEventTypeXidCriticalError = 0x8
    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_GRAPHICS_UTIL, NVML_GPM_METRIC_ANY_TENSOR_UTIL, NVML_GPM_METRIC_DRAM_BW_UTIL = 1, 5, 10

    class c_nvmlGpmMetricsGet_t:  # noqa: N801 - pynvml's name
        def __init__(self):
            self.version = self.numMetrics = 0
            self.sample1 = self.sample2 = None
            self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)]

    def _check(self, field: str):
        if field in self._unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if field in self._failing:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)

    # library
    def nvmlInit(self):
        if self._init_error is not None:
            raise NVMLError(self._init_error)

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self):
        return self._n

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    # device
    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetIndex(self, h):
        return h[1]

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-stub-{h[1]}"

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=f"00000000:{h[1] + 0x18:02X}:00.0".encode())

    def nvmlDeviceGetMemoryInfo(self, h):
        self._check("memory")
        return SimpleNamespace(total=80 * 1024**3, used=(h[1] + 1) * 1024**3, free=0)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check("utilization")
        return SimpleNamespace(gpu=90 + h[1], memory=40)

    def nvmlDeviceGetPowerUsage(self, h):
        self._check("power")
        return 350_500  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._check("energy")
        return 9_876_543_210

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._check("temp_gpu")
        return 61

    def nvmlDeviceGetFieldValues(self, h, ids):
        self._check("temp_memory")
        ret = NVML_ERROR_NOT_SUPPORTED if "temp_memory_field" in self._unsupported else NVML_SUCCESS
        return [SimpleNamespace(nvmlReturn=ret, valueType=1, value=SimpleNamespace(uiVal=70, dVal=0.0))]

    def nvmlDeviceGetClockInfo(self, h, clock):
        self._check("clocks")
        return 1980 if clock == 1 else 2619

    def nvmlDeviceGetPcieReplayCounter(self, h):
        self._check("pcie_replay")
        return 3

    def nvmlDeviceGetTotalEccErrors(self, h, kind, counter):
        self._check("ecc")
        return 2 if kind == 1 else 7

    def nvmlDeviceGetRemappedRows(self, h):
        self._check("remapped_rows")
        return (0, 0, 1, 0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if self._no_v3:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        self._check("processes")
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._processes.get(h[1], [])]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._processes.get(h[1], [])]

    # GPM
    def nvmlGpmQueryDeviceSupport(self, h):
        return SimpleNamespace(isSupportedDevice=1 if self._gpm else 0)

    def nvmlGpmSampleAlloc(self):
        return object()

    def nvmlGpmSampleFree(self, s):
        return None

    def nvmlGpmSampleGet(self, h, s):
        return s

    def nvmlGpmMetricsGet(self, req):
        for j in range(req.numMetrics):
            m = req.metrics[j]
            m.value = {1: 80.0, 5: 35.5, 10: 22.0}[m.metricId]
            m.nvmlReturn = NVML_SUCCESS
        return req

    # events
    def nvmlEventSetCreate(self):
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h, types, es):
        self._check("events")

    def nvmlEventSetWait_v2(self, es, timeout_ms):
        assert timeout_ms == 0  # never block the sampling loop
        if not self._xids:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        idx, xid = self._xids.pop(0)
        return SimpleNamespace(device=("handle", idx), eventType=0x8, eventData=xid)

    def nvmlEventSetFree(self, es):
        return None
