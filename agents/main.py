"""`broker-agent`: the node agent's console script.

    broker-agent --broker-url http://broker:8000 --token-file /etc/broker/agent.token
    broker-agent --once --stdout --fake-gpus 2      # one report as JSON, then exit

Never crashes on a missing driver: without NVML the node reports as CPU-only (said once in the
log). The loop sleeps only here; everything it calls takes `now` as an argument.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from agents import __version__
from agents.agent import Agent, AgentConfig, encode
from agents.attribution import Attributor
from agents.exporter import DcgmExporter
from agents.host import HostReader
from agents.push import Backoff, DiskBuffer, HttpSender, MemoryBuffer, Pusher, SeqCounter
from agents.reader import GpuReader

log = logging.getLogger("broker_agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="broker-agent", description="Compute Broker node agent")
    p.add_argument("--broker-url", default=os.environ.get("BROKER_URL", ""), help="e.g. http://broker:8000")
    p.add_argument("--token", default=None, help="agent token (prefer --token-file or BROKER_AGENT_TOKEN)")
    p.add_argument("--token-file", default=os.environ.get("BROKER_AGENT_TOKEN_FILE"), type=Path)
    p.add_argument("--node-id", default=os.environ.get("BROKER_NODE_ID") or socket.gethostname())
    p.add_argument("--hostname", default=None)
    p.add_argument("--fake-gpus", type=int, default=None, metavar="N", help="use N scripted fake GPUs instead of NVML")
    p.add_argument("--gpu-indices", default=None, metavar="I,J",
                   help="read only these NVML GPU indices (a node that owns part of the machine's GPUs)")
    p.add_argument("--sample-interval", type=float, default=1.0, help="seconds between readings (default 1)")
    p.add_argument("--push-interval", type=float, default=10.0, help="seconds between pushes (default 10)")
    p.add_argument("--buffer-dir", type=Path, default=None, help="on-disk outage buffer (default: in memory)")
    p.add_argument("--buffer-max-reports", type=int, default=8640, help="buffer bound in reports (default: 24 h)")
    p.add_argument("--buffer-max-mb", type=float, default=512.0)
    p.add_argument("--metrics-port", type=int, default=None, help="serve dcgm-compatible /metrics on this port")
    p.add_argument("--metrics-addr", default="0.0.0.0")
    p.add_argument("--proc-root", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    p.add_argument("--no-attribution", action="store_true", help="do not map GPU processes to jobs")
    p.add_argument("--once", action="store_true", help="take one reading, report it, exit")
    p.add_argument("--stdout", action="store_true", help="print the report as JSON instead of pushing it")
    p.add_argument("--log-level", default=os.environ.get("BROKER_AGENT_LOG_LEVEL", "info"))
    p.add_argument("--version", action="version", version=f"broker-agent {__version__}")
    args = p.parse_args(argv)
    if args.sample_interval <= 0 or args.push_interval <= 0:
        p.error("intervals must be positive")
    if args.fake_gpus is not None and not 0 <= args.fake_gpus <= 64:
        p.error("--fake-gpus must be between 0 and 64")
    if not args.stdout and not args.broker_url and args.metrics_port is None:
        p.error("give --broker-url (and a token), --metrics-port, or --once --stdout")
    return args


def read_token(args: argparse.Namespace) -> str:
    if args.token:
        return args.token.strip()
    if args.token_file:
        return args.token_file.read_text().strip()
    return os.environ.get("BROKER_AGENT_TOKEN", "").strip()


def make_reader(args: argparse.Namespace) -> GpuReader:
    if args.fake_gpus is not None:
        from agents.fake import FakeReader

        return FakeReader(args.fake_gpus, node_seed=args.node_id)
    from agents.nvml import NvmlReader

    indices = None if args.gpu_indices is None else [int(i) for i in args.gpu_indices.split(",") if i.strip()]
    return NvmlReader(indices=indices)


def build_agent(args: argparse.Namespace, now: float) -> Agent:
    pusher = None
    buffered_max = None
    if args.broker_url and not args.stdout:
        token = read_token(args)
        if not token:
            log.warning("no agent token given: the broker will refuse the reports")
        max_bytes = int(args.buffer_max_mb * 1024 * 1024)
        buffer = (
            DiskBuffer(args.buffer_dir, args.buffer_max_reports, max_bytes)
            if args.buffer_dir
            else MemoryBuffer(args.buffer_max_reports, max_bytes)
        )
        buffered_max = buffer.max_seq()
        if args.token_file and not args.token:  # read per push: a rotated (projected) token is picked up
            token = lambda: args.token_file.read_text().strip()  # noqa: E731
        pusher = Pusher(buffer, HttpSender(args.broker_url, token), backoff=Backoff())
    seq = SeqCounter(now, (args.buffer_dir / "next_seq") if args.buffer_dir else None, buffered_max)
    exporter = DcgmExporter(args.hostname or socket.gethostname()) if args.metrics_port is not None else None
    return Agent(
        AgentConfig(
            node_id=args.node_id,
            hostname=args.hostname or "",
            sample_interval_s=args.sample_interval,
            push_interval_s=args.push_interval,
        ),
        make_reader(args),
        seq=seq,
        host_reader=HostReader(),
        attributor=None if args.no_attribution else Attributor(args.proc_root),
        pusher=pusher,
        exporter=exporter,
    )


def main(argv: list[str] | None = None, stop: threading.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (main thread) or until `stop` is set.

    `stop` lets a host process run the agent in a thread, e.g. the Ray actor the broker may
    start on every Ray node: `threading.Thread(target=main, args=(argv, ev)).start()`.
    """
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    now = time.time()
    agent = build_agent(args, now)
    agent.start(now)
    if args.once:
        return _once(agent, args)
    server = None
    if agent.exporter is not None:
        server = agent.exporter.serve(args.metrics_port, args.metrics_addr)
        log.info("serving /metrics on %s:%d", args.metrics_addr, args.metrics_port)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("broker-agent %s for node %s started (%s)", __version__, args.node_id, agent.info.backend)
    while not stop.is_set():
        due = agent.tick(time.time())
        stop.wait(max(0.0, due - time.time()))
    agent.stop(time.time())
    if server is not None:
        server.shutdown()
        server.server_close()
    return 0


def _once(agent: Agent, args: argparse.Namespace) -> int:
    if agent.host_reader is not None:  # prime psutil's cpu_percent so the one reading has it
        agent.host_reader.read(time.time())
        time.sleep(0.1)
    agent.sample(time.time())
    if args.stdout or agent.pusher is None:
        report = agent.build_report(time.time())
        agent.reader.shutdown()
        sys.stdout.write(encode(report).decode() + "\n")
        sys.stdout.flush()
        return 0
    agent.push(time.time())
    agent.reader.shutdown()
    return 0 if len(agent.pusher.buffer) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
