"""Prometheus /metrics with dcgm-exporter-compatible names and labels.

Why mimic dcgm-exporter: operations already run its Grafana dashboards (NVIDIA's "DCGM
Exporter Dashboard"), which query these metric names and the labels gpu, UUID, modelName,
Hostname. We keep dcgm-exporter 3.x names and units (MiB, W, mJ, MHz, percent; the
DCGM_FI_PROF_* activity metrics as 0-1 ratios) and add two labels of our own: job and project
(empty when no attributed process runs on the GPU), the broker's version of the pod/namespace
labels dcgm-exporter adds on Kubernetes.

A field the device does not support is simply not exported for that GPU (as dcgm-exporter
does), never exported as 0. The collector renders the latest reading per GPU at scrape time,
so label sets of finished jobs disappear with the next reading.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from agents.schema import DeviceSample

LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION", "job", "project")

Getter = Callable[[DeviceSample], float | None]


def _pct_ratio(attr: str) -> Getter:
    def get(s: DeviceSample) -> float | None:
        v = getattr(s.gpm, attr) if s.gpm is not None else None
        return None if v is None else v / 100.0

    return get


def _fb_free(s: DeviceSample) -> float | None:
    if s.memory_total_mb is None or s.memory_used_mb is None:
        return None
    return max(0.0, s.memory_total_mb - s.memory_used_mb)


def _flag(attr: str) -> Getter:
    def get(s: DeviceSample) -> float | None:
        v = getattr(s, attr)
        return None if v is None else float(bool(v))

    return get


def _attr(attr: str) -> Getter:
    return lambda s: getattr(s, attr)


# (name, prometheus type, help, getter); help strings follow dcgm-exporter's default CSV.
METRICS: tuple[tuple[str, str, str, Getter], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", _attr("sm_clock_mhz")),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", _attr("mem_clock_mhz")),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", _attr("temp_memory")),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", _attr("temp_gpu")),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", _attr("power_w")),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
     "Total energy consumption since boot (in mJ).", _attr("energy_mj")),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", _attr("pcie_replay")),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", _attr("util_gpu")),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", _attr("util_memory")),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", _fb_free),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", _attr("memory_used_mb")),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
     "Total number of single-bit volatile ECC errors.", _attr("ecc_correctable")),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
     "Total number of double-bit volatile ECC errors.", _attr("ecc_uncorrectable")),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed", _flag("remapped_rows_failure")),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "Whether rows are pending remapping", _flag("remapped_rows_pending")),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.",
     _pct_ratio("graphics_activity")),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active.",
     _pct_ratio("tensor_activity")),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is active sending or receiving data.",
     _pct_ratio("dram_bw_util")),
)
XID_METRIC = ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.")


def owner_labels(s: DeviceSample) -> tuple[str, str]:
    """(job, project) for the GPU: the attributed jobs on it, comma-joined when shared."""
    jobs = sorted({p.job_id for p in s.processes if p.job_id})
    projects = sorted({p.project for p in s.processes if p.project})
    return ",".join(jobs), ",".join(projects)


class DcgmExporter:
    """Holds the latest reading per GPU and renders it at scrape time."""

    def __init__(self, hostname: str, driver_version: str | None = None) -> None:
        self.hostname = hostname
        self.driver_version = driver_version or ""
        self._latest: dict[int, DeviceSample] = {}
        self._last_xid: dict[int, int] = {}
        self._lock = threading.Lock()

    def update(self, samples: Iterable[DeviceSample]) -> None:
        with self._lock:
            for s in samples:
                self._latest[s.index] = s
                if s.xid_events:
                    self._last_xid[s.index] = s.xid_events[-1].xid

    def _labels(self, s: DeviceSample) -> dict[str, str]:
        job, project = owner_labels(s)
        return {
            "gpu": str(s.index),
            "UUID": s.uuid,
            "pci_bus_id": s.pci_bus_id or "",
            "device": f"nvidia{s.index}",
            "modelName": s.model,
            "Hostname": self.hostname,
            "DCGM_FI_DRIVER_VERSION": self.driver_version,
            "job": job,
            "project": project,
        }

    def families(self) -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        """(name, type, help, [(labels, value)]) for every metric, from the latest readings."""
        with self._lock:
            latest = [self._latest[i] for i in sorted(self._latest)]
            last_xid = dict(self._last_xid)
        labels = [self._labels(s) for s in latest]
        out = []
        for name, typ, doc, get in METRICS:
            rows = [(lab, float(v)) for s, lab in zip(latest, labels) if (v := get(s)) is not None]
            out.append((name, typ, doc, rows))
        out.append((XID_METRIC[0], "gauge", XID_METRIC[1], [(lab, float(last_xid.get(s.index, 0))) for s, lab in zip(latest, labels)]))
        return out

    def render(self) -> bytes:
        """Prometheus text format 0.0.4, counters under their bare dcgm names (no "_total").

        Rendered here rather than by prometheus_client's generate_latest, which appends
        "_total" to every counter family and so would rename DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION.
        """
        lines: list[str] = []
        for name, typ, doc, rows in self.families():
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {typ}")
            for lab, v in rows:
                body = ",".join(f'{k}="{_escape(val)}"' for k, val in lab.items())
                lines.append(f"{name}{{{body}}} {floatToGoString(v)}")
        return ("\n".join(lines) + "\n").encode()

    def serve(self, port: int, addr: str = "0.0.0.0") -> ThreadingHTTPServer:
        """Serve GET /metrics on a daemon thread; returns the server (call .shutdown() to stop)."""
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = exporter.render()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        server = ThreadingHTTPServer((addr, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
