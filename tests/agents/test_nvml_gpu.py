"""The real NVML reader on a real GPU. Skipped, with the reason, where there is none."""

import json

import pytest

from agents.agent import encode
from agents.nvml import NvmlReader
from tests.agents.builders import report

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvml():
    r = NvmlReader()
    info = r.init()
    if info.cpu_only:
        pytest.skip(f"no NVIDIA GPU/driver here: {info.cpu_only_reason}")
    yield r, info
    r.shutdown()


def test_reads_every_device(nvml):
    r, info = nvml
    first = r.read(1.0)
    second = r.read(2.0)
    assert len(first) == len(second) == info.device_count >= 1
    for s in second:
        assert s.uuid.startswith(("GPU-", "MIG-")) and s.model
        assert s.memory_total_mb and s.memory_total_mb > 0
        assert s.memory_used_mb is not None and 0 <= s.memory_used_mb <= s.memory_total_mb
        assert s.util_gpu is None or 0 <= s.util_gpu <= 100
        assert s.temp_gpu is None or 0 < s.temp_gpu < 120
    print("NVML_READING", json.dumps(json.loads(encode(report(gpus=second)))["gpus"], indent=1))
    print("NVML_INFO", info)


def test_energy_counter_is_monotonic(nvml):
    r, _ = nvml
    a = [s.energy_mj for s in r.read(3.0)]
    b = [s.energy_mj for s in r.read(4.0)]
    for x, y in zip(a, b):
        if x is not None and y is not None:
            assert y >= x
