"""NvmlReader on machines without a GPU: a stub pynvml for the error paths, and the real one."""

import importlib.util
import logging

import pytest

from agents.nvml import NvmlReader
from tests.agents import nvml_stub
from tests.agents.nvml_stub import Stub


@pytest.mark.parametrize(
    "name,error,reason",
    [
        ("no libnvidia-ml", nvml_stub.NVML_ERROR_LIBRARY_NOT_FOUND, "Library Not Found"),
        ("driver not loaded", nvml_stub.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
        ("no permission", nvml_stub.NVML_ERROR_NO_PERMISSION, "error 4"),
    ],
)
def test_init_failure_reports_cpu_only_once(caplog, name, error, reason):
    r = NvmlReader(nvml=Stub(init_error=error))
    with caplog.at_level(logging.WARNING, logger="broker_agent.nvml"):
        info = r.init()
        assert r.read(1.0) == [] and r.read(2.0) == []
    assert info.cpu_only and reason in info.cpu_only_reason
    assert sum("CPU-only" in m for m in caplog.messages) == 1
    r.shutdown()  # harmless after a failed init


def test_no_gpu_is_cpu_only_and_shuts_nvml_down():
    stub = Stub(n=0)
    info = NvmlReader(nvml=stub).init()
    assert info.cpu_only and "no NVIDIA GPU" in info.cpu_only_reason and stub.shutdown_calls == 1


def test_full_reading_with_units():
    stub = Stub(n=2, processes={1: [(4242, 2 * 1024**3)]})
    r = NvmlReader(nvml=stub)
    info = r.init()
    assert (info.backend, info.device_count, info.driver_version, info.cuda_version, info.cpu_only) == (
        "nvml", 2, "550.54.15", "12.4", False)
    s0, s1 = r.read(5.0)
    assert (s0.index, s0.uuid, s0.model, s0.pci_bus_id, s0.ts) == (0, "GPU-stub-0", "NVIDIA H100 80GB HBM3", "00000000:18:00.0", 5.0)
    assert (s0.memory_total_mb, s0.memory_used_mb, s1.memory_used_mb) == (81920.0, 1024.0, 2048.0)
    assert (s0.util_gpu, s1.util_gpu, s0.util_memory) == (90.0, 91.0, 40.0)
    assert (s0.power_w, s0.energy_mj, s0.temp_gpu, s0.temp_memory) == (350.5, 9_876_543_210, 61.0, 70.0)
    assert (s0.sm_clock_mhz, s0.mem_clock_mhz, s0.pcie_replay) == (1980.0, 2619.0, 3)
    assert (s0.ecc_uncorrectable, s0.ecc_correctable, s0.remapped_rows_pending, s0.remapped_rows_failure) == (2, 7, True, False)
    assert s0.processes == [] and [(p.pid, p.used_memory_mb) for p in s1.processes] == [(4242, 2048.0)]
    assert (s0.gpm.graphics_activity, s0.gpm.tensor_activity, s0.gpm.dram_bw_util) == (80.0, 35.5, 22.0)
    r.shutdown()
    assert stub.shutdown_calls == 1


@pytest.mark.parametrize(
    "name,unsupported,absent",
    [
        ("no power sensor", ["power"], ["power_w"]),
        ("no energy counter", ["energy"], ["energy_mj"]),
        ("no ECC (consumer board)", ["ecc", "remapped_rows"],
         ["ecc_uncorrectable", "ecc_correctable", "remapped_rows_pending", "remapped_rows_failure"]),
        ("no memory temperature field", ["temp_memory_field"], ["temp_memory"]),
        ("no PCIe replay counter", ["pcie_replay"], ["pcie_replay"]),
        ("no utilization (MIG)", ["utilization"], ["util_gpu", "util_memory"]),
    ],
)
def test_not_supported_field_is_absent_and_the_rest_is_read(caplog, name, unsupported, absent):
    r = NvmlReader(nvml=Stub(n=1, unsupported=unsupported))
    r.init()
    with caplog.at_level(logging.WARNING, logger="broker_agent.nvml"):
        [s] = r.read(1.0)
    for f in absent:
        assert getattr(s, f) is None, f
    assert s.uuid == "GPU-stub-0" and s.memory_used_mb == 1024.0 and s.sm_clock_mhz == 1980.0
    assert not caplog.messages  # NOT_SUPPORTED is normal, not a warning


def test_other_field_errors_are_absent_and_logged_once(caplog):
    r = NvmlReader(nvml=Stub(n=1, failing=["power"]))
    r.init()
    with caplog.at_level(logging.WARNING, logger="broker_agent.nvml"):
        for t in range(3):
            assert r.read(float(t))[0].power_w is None
    assert len([m for m in caplog.messages if "power" in m]) == 1


def test_xid_events_drained_without_blocking_per_device():
    r = NvmlReader(nvml=Stub(n=2, xids=[(1, 79), (0, 13), (1, 48)]))
    r.init()
    s0, s1 = r.read(7.0)
    assert [e.xid for e in s0.xid_events] == [13] and [e.xid for e in s1.xid_events] == [79, 48]
    assert all(e.ts == 7.0 for e in s1.xid_events)
    assert all(s.xid_events == [] for s in r.read(8.0))


def test_no_gpm_before_hopper():
    r = NvmlReader(nvml=Stub(n=1, gpm=False))
    r.init()
    assert r.read(1.0)[0].gpm is None


def test_old_driver_without_v3_process_call():
    r = NvmlReader(nvml=Stub(n=1, processes={0: [(7, None)]}, no_v3_processes=True))
    r.init()
    assert [(p.pid, p.used_memory_mb) for p in r.read(1.0)[0].processes] == [(7, None)]


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is None, reason="nvidia-ml-py not installed")
def test_every_pynvml_name_the_reader_uses_exists():
    """The stub stands in for the GPU; this keeps its names honest against nvidia-ml-py."""
    import pynvml

    stub = Stub(n=2, xids=[(0, 79)], processes={0: [(1, 1)]}, no_v3_processes=True)
    r = NvmlReader(nvml=stub)
    r.init()
    r.read(1.0)
    r.shutdown()
    missing = sorted(n for n in stub.accessed if not hasattr(pynvml, n))
    assert missing == []
    assert len(stub.accessed) > 30


def test_real_nvml_on_this_machine_never_crashes():
    r = NvmlReader()
    info = r.init()
    samples = r.read(1.0)
    r.shutdown()
    if info.cpu_only:
        assert samples == [] and info.cpu_only_reason
    else:
        assert len(samples) == info.device_count
