"""Small builders shared by the agent tests."""

from __future__ import annotations

from agents.schema import DeviceSample, GpmMetrics, GpuProcess, Heartbeat, TelemetryReport


def device(index: int = 0, ts: float = 0.0, **kw) -> DeviceSample:
    base = dict(index=index, uuid=f"GPU-{index:08d}", model="NVIDIA H100 80GB HBM3", ts=ts,
                memory_total_mb=81559.0, memory_used_mb=1000.0, util_gpu=50.0)
    base.update(kw)
    return DeviceSample(**base)


def proc(pid: int, job: str | None = None, project: str | None = None, mem: float = 100.0) -> GpuProcess:
    return GpuProcess(pid=pid, used_memory_mb=mem, job_id=job, project=project)


def gpm(g: float, t: float, d: float) -> GpmMetrics:
    return GpmMetrics(graphics_activity=g, tensor_activity=t, dram_bw_util=d)


def report(seq: int = 1, gpus=(), node: str = "n1", now: float = 0.0) -> TelemetryReport:
    return TelemetryReport(node_id=node, hostname=node, agent_version="t", sent_at=now, seq=seq,
                           heartbeat=Heartbeat(started_at=0.0, gpu_backend="fake"), gpus=list(gpus))
