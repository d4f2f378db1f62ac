"""Builders for telemetry tests: reports, fresh nodes, agent tokens."""

from __future__ import annotations

import uuid

from sqlmodel import Session

from agents.schema import DeviceSample, GpuProcess, Heartbeat, TelemetryReport, XidEvent
from broker.models import Node
from broker.services.bootstrap import create_token


def gpu(index=0, ts=0.0, util=50.0, mem=1000.0, job=None, project=None, attempt=1, xid=None, **kw) -> DeviceSample:
    procs = [GpuProcess(pid=100 + index, used_memory_mb=mem, job_id=job, attempt=attempt if job else None,
                        project=project)] if job else []
    xids = [XidEvent(xid=xid, ts=ts)] if xid is not None else []
    return DeviceSample(index=index, uuid=f"GPU-{index}", model="NVIDIA A100", ts=ts, memory_total_mb=40960.0,
                        memory_used_mb=mem, util_gpu=util, processes=procs, xid_events=xids, **kw)


def report(node: str, seq: int, gpus=(), started_at: float = 1.0, sent_at: float = 0.0, **hb) -> TelemetryReport:
    return TelemetryReport(node_id=node, hostname=node, agent_version="test", sent_at=sent_at, seq=seq,
                           heartbeat=Heartbeat(started_at=started_at, gpu_backend="fake", **hb), gpus=list(gpus))


def new_node(engine, state: str = "ready", reason: str = "", pool: str = "innovation") -> str:
    nid = f"tn-{uuid.uuid4().hex[:8]}"
    with Session(engine) as s:
        s.add(Node(id=nid, hostname=nid, pool=pool, gpu_model="A100", gpus=4, cpus=32, memory_gb=256,
                   state=state, state_reason=reason))
        s.commit()
    return nid


def agent_token(engine, node_id: str) -> str:
    with Session(engine) as s:
        plain, _ = create_token(s, name=f"agent-{node_id}", role="agent", kind="agent", node_id=node_id)
        s.commit()
    return plain


def node_state(engine, node_id: str) -> tuple[str, str, float | None]:
    with Session(engine) as s:
        n = s.get(Node, node_id)
        s.refresh(n)
        return n.state, n.state_reason, n.last_heartbeat
