"""The agent's loop body: sample every `sample_interval_s`, push every `push_interval_s`.

`Agent.tick(now)` does whatever is due at `now` and returns when the next thing is due; the
console script sleeps until then, tests just call `tick` with the times they want. Nothing in
here sleeps, reads the clock or touches the network except through the injected pusher.

Invariant: every sample taken is either in the next report or, once built into a report, in
the pusher's buffer (until acknowledged or dropped by the buffer bound).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from agents import __version__
from agents.attribution import Attributor
from agents.exporter import DcgmExporter
from agents.host import HostReader
from agents.push import Pusher, SeqCounter
from agents.reader import GpuReader, ReaderInfo
from agents.schema import DeviceSample, Heartbeat, HostSample, TelemetryReport

log = logging.getLogger("broker_agent")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_id: str
    hostname: str = ""
    sample_interval_s: float = 1.0
    push_interval_s: float = 10.0
    # One report stays well under the broker's request body limit (256 KiB by default; a
    # sample is ~550 bytes of JSON): more samples than this are split into several reports.
    max_samples_per_report: int = 200
    max_pending_samples: int = 100_000  # a stalled push must not grow memory without bound

    def host(self) -> str:
        return self.hostname or socket.gethostname()


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        reader: GpuReader,
        *,
        seq: SeqCounter,
        host_reader: HostReader | None = None,
        attributor: Attributor | None = None,
        pusher: Pusher | None = None,
        exporter: DcgmExporter | None = None,
    ) -> None:
        self.config, self.reader, self.seq = config, reader, seq
        self.host_reader, self.attributor = host_reader, attributor
        self.pusher, self.exporter = pusher, exporter
        self.info = ReaderInfo(backend="none", cpu_only=True, cpu_only_reason="not started")
        self.started_at = 0.0
        self._pending: list[DeviceSample] = []
        self._host: HostSample | None = None
        self.next_sample_at = 0.0
        self.next_push_at = 0.0

    def start(self, now: float) -> ReaderInfo:
        self.info = self.reader.init()
        self.started_at = now
        self.next_sample_at = now
        self.next_push_at = now + self.config.push_interval_s
        if self.exporter is not None:
            self.exporter.driver_version = self.info.driver_version or ""
        return self.info

    def sample(self, now: float) -> list[DeviceSample]:
        try:
            samples = self.reader.read(now)
        except Exception as e:  # a reader bug must cost one sample, not the agent
            log.exception("GPU read failed: %s", e)
            samples = []
        if self.attributor is not None and samples:
            samples = self.attributor.attribute(samples)
        if self.host_reader is not None:
            self._host = self.host_reader.read(now)
        self._pending.extend(samples)
        overflow = len(self._pending) - self.config.max_pending_samples
        if overflow > 0:
            del self._pending[:overflow]
        if self.exporter is not None:
            self.exporter.update(samples)
        return samples

    def build_report(self, now: float) -> TelemetryReport:
        """A report of the oldest pending samples (at most max_samples_per_report); takes them out."""
        cut = self.config.max_samples_per_report
        samples, self._pending = self._pending[:cut], self._pending[cut:]
        buffered = len(self.pusher.buffer) if self.pusher is not None else 0
        dropped = self.pusher.buffer.dropped if self.pusher is not None else 0
        info = self.info
        return TelemetryReport(
            node_id=self.config.node_id,
            hostname=self.config.host(),
            agent_version=__version__,
            sent_at=now,
            seq=self.seq.next(),
            heartbeat=Heartbeat(
                started_at=self.started_at,
                gpu_backend=info.backend if info.backend in ("nvml", "fake", "none") else "none",
                cpu_only=info.cpu_only,
                cpu_only_reason=info.cpu_only_reason,
                driver_version=info.driver_version,
                cuda_version=info.cuda_version,
                device_count=info.device_count,
                buffered_reports=buffered,
                dropped_reports=dropped,
            ),
            host=self._host,
            gpus=samples,
        )

    def push(self, now: float) -> None:
        if self.pusher is None:
            self._pending.clear()
            return
        while True:
            report = self.build_report(now)
            self.pusher.enqueue(report.seq, encode(report))
            if not self._pending:
                break
        self.pusher.flush(now)

    def tick(self, now: float) -> float:
        """Do what is due at `now`; return the time the next thing is due."""
        # push before sampling: the report due at t holds the readings of [t - push_interval, t)
        if now >= self.next_push_at:
            self.push(now)
            self.next_push_at = _advance(self.next_push_at, self.config.push_interval_s, now)
        elif self.pusher is not None and len(self.pusher.buffer) and now >= self.pusher.next_attempt_at:
            self.pusher.flush(now)
        if now >= self.next_sample_at:
            self.sample(now)
            self.next_sample_at = _advance(self.next_sample_at, self.config.sample_interval_s, now)
        due = min(self.next_sample_at, self.next_push_at)
        if self.pusher is not None and len(self.pusher.buffer):
            due = min(due, max(now, self.pusher.next_attempt_at))
        return due

    def stop(self, now: float) -> None:
        """Last push (best effort; what fails stays in the buffer) and reader shutdown."""
        try:
            if self.pusher is not None:
                self.push(now)
        finally:
            self.reader.shutdown()


def encode(report: TelemetryReport) -> bytes:
    """Wire bytes of a report: unsupported (None) fields are left out, not sent as null."""
    return report.model_dump_json(exclude_none=True).encode()


def _advance(due: float, interval: float, now: float) -> float:
    """Next due time on the original grid; skips missed slots instead of bursting to catch up."""
    nxt = due + interval
    if nxt <= now:
        nxt = now + interval - ((now - due) % interval)
    return nxt
