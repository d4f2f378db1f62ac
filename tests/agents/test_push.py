"""Batching, outage with ordered replay, bounded buffer, backoff with jitter: all on a fake clock."""

import json
import random

import pytest

from agents.agent import Agent, AgentConfig
from agents.fake import FakeReader
from agents.push import Backoff, DiskBuffer, MemoryBuffer, Pusher, SendResult, SeqCounter
from agents.schema import TelemetryReport
from agents.agent import encode
from tests.agents.builders import report


class FakeBroker:
    """A Sender that stores what it accepts and can be switched down (status 0 or 5xx)."""

    def __init__(self):
        self.down_status: int | None = None
        self.received: list[TelemetryReport] = []
        self.attempts = 0
        self.script: list[int] = []  # statuses to answer first, then normal behaviour

    def send(self, body: bytes) -> SendResult:
        self.attempts += 1
        if self.script:
            return SendResult(status=self.script.pop(0))
        if self.down_status is not None:
            return SendResult(status=self.down_status, error="down")
        self.received.append(TelemetryReport.model_validate_json(body))
        return SendResult(status=200)


def make_agent(broker, buffer=None, n=2, sample=1.0, push=10.0, rng_seed=0, backoff=Backoff(1.0, 30.0)):
    buffer = buffer if buffer is not None else MemoryBuffer()
    pusher = Pusher(buffer, broker, backoff=backoff, rng=random.Random(rng_seed))
    return Agent(AgentConfig(node_id="n1", hostname="n1", sample_interval_s=sample, push_interval_s=push),
                 FakeReader(n), seq=SeqCounter(0.0), pusher=pusher)


def run(agent, until: float, step: float = 0.5, start: float = 0.0):
    t = start
    while t <= until:
        agent.tick(t)
        t += step


def sample_times(reports):
    return [s.ts for r in reports for s in r.gpus if s.index == 0]


def test_batches_one_report_per_push_interval():
    broker = FakeBroker()
    agent = make_agent(broker)
    agent.start(0.0)
    run(agent, 30.0)
    assert [len(r.gpus) for r in broker.received] == [20, 20, 20]  # 10 readings x 2 GPUs
    assert sample_times(broker.received) == [float(t) for t in range(30)]
    seqs = [r.seq for r in broker.received]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_tick_returns_next_due_time():
    agent = make_agent(FakeBroker(), sample=1.0, push=10.0)
    agent.start(0.0)
    assert agent.tick(0.0) == 1.0
    assert agent.tick(9.2) == 10.0  # late tick skips missed slots, stays on the grid


@pytest.mark.parametrize("down_status", [0, 503, 500, 401])
def test_outage_then_ordered_replay_without_loss(down_status):
    broker = FakeBroker()
    agent = make_agent(broker)
    agent.start(0.0)
    run(agent, 15.0)
    broker.down_status = down_status
    run(agent, 120.0, start=15.5)
    assert len(agent.pusher.buffer) >= 10
    stored_before = len(broker.received)
    broker.down_status = None
    run(agent, 500.0, start=120.5)
    assert len(agent.pusher.buffer) == 0 and agent.pusher.buffer.dropped == 0
    assert len(broker.received) > stored_before
    assert sample_times(broker.received) == [float(t) for t in range(500)]  # every reading, in order
    seqs = [r.seq for r in broker.received]
    assert seqs == sorted(seqs)


def test_backoff_spaces_retries_during_outage():
    broker = FakeBroker()
    agent = make_agent(broker, backoff=Backoff(1.0, 30.0))
    agent.start(0.0)
    broker.down_status = 0
    run(agent, 600.0, step=0.25)
    # 60 pushes due; with a 30 s cap retries are at most ~600/15 + pushes, not one per tick
    assert broker.attempts <= 60 + 600 / 15
    assert agent.pusher.failures >= 10


def test_drop_oldest_beyond_the_bound_and_count():
    broker = FakeBroker()
    agent = make_agent(broker, buffer=MemoryBuffer(max_reports=5))
    agent.start(0.0)
    broker.down_status = 0
    run(agent, 100.0)  # 10 reports built, only 5 fit
    assert len(agent.pusher.buffer) == 5 and agent.pusher.buffer.dropped == 5
    broker.down_status = None
    run(agent, 200.0, start=100.5)
    times = sample_times(broker.received)
    assert times[0] == 50.0 and times == [float(t) for t in range(50, 200)]  # the newest survive, in order
    last = broker.received[-1]
    assert last.heartbeat.dropped_reports == 5  # the broker hears about the loss


@pytest.mark.parametrize("bound_kind", ["reports", "bytes"])
def test_disk_buffer_bound(tmp_path, bound_kind):
    body = b"x" * 100
    buf = DiskBuffer(tmp_path, max_reports=3) if bound_kind == "reports" else DiskBuffer(tmp_path, max_bytes=350)
    for seq in range(1, 7):
        buf.append(seq, body)
    assert len(buf) == 3 and buf.dropped == 3
    assert buf.oldest() == (4, body)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{s:020d}.json" for s in (4, 5, 6)]


def test_disk_buffer_survives_restart_and_seq_continues(tmp_path):
    broker = FakeBroker()
    broker.down_status = 0
    buf = DiskBuffer(tmp_path / "buf")
    agent = make_agent(broker, buffer=buf)
    agent.seq = SeqCounter(0.0, tmp_path / "buf" / "next_seq", buf.max_seq())
    agent.start(0.0)
    run(agent, 40.0)
    kept = len(buf)
    assert kept == 4
    # the agent process dies; a new one starts on the same dir
    buf2 = DiskBuffer(tmp_path / "buf")
    seq2 = SeqCounter(0.0, tmp_path / "buf" / "next_seq", buf2.max_seq())
    assert len(buf2) == kept and seq2.next() > buf2.max_seq()
    broker.down_status = None
    Pusher(buf2, broker).flush(41.0)
    assert sample_times(broker.received) == [float(t) for t in range(40)]


def test_seq_counter_never_goes_back_across_restarts(tmp_path):
    path = tmp_path / "next_seq"
    a = SeqCounter(1000.0, path)
    first = [a.next() for _ in range(3)]
    b = SeqCounter(999.0, path)  # clock went back a little; persisted value wins
    assert b.next() > first[-1]
    assert SeqCounter(2000.0, None).next() == 2_000_000  # start time in ms without persistence


@pytest.mark.parametrize(
    "name,status,kept,rejected",
    [
        ("malformed report is dropped", 422, 0, 1),
        ("too large is dropped", 413, 0, 1),
        ("bad token is kept", 401, 1, 0),
        ("forbidden is kept", 403, 1, 0),
        ("throttled is kept", 429, 1, 0),
        ("unknown endpoint is kept", 404, 1, 0),
        ("duplicate counts as stored", 409, 0, 0),
    ],
)
def test_status_policy(name, status, kept, rejected):
    broker = FakeBroker()
    broker.script = [status]
    p = Pusher(MemoryBuffer(), broker, rng=random.Random(1))
    p.enqueue(1, b"{}")
    p.flush(0.0)
    assert (len(p.buffer), p.rejected) == (kept, rejected)


def test_retry_after_is_honoured():
    class Throttle:
        def send(self, body):
            return SendResult(status=429, retry_after_s=20.0)

    p = Pusher(MemoryBuffer(), Throttle(), backoff=Backoff(1.0, 300.0), rng=random.Random(0))
    p.enqueue(1, b"{}")
    p.flush(100.0)
    assert p.next_attempt_at >= 120.0


@pytest.mark.parametrize(
    "failures,ceiling",
    [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (9, 256.0), (10, 300.0), (1000, 300.0)],
)
def test_backoff_jitter_bounds(failures, ceiling):
    b = Backoff(base_s=1.0, cap_s=300.0)
    assert b.ceiling(failures) == ceiling
    rng = random.Random(failures)
    delays = [b.delay(failures, rng) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # really jittered, not constant


def test_flush_waits_for_backoff():
    broker = FakeBroker()
    broker.script = [503]
    p = Pusher(MemoryBuffer(), broker, backoff=Backoff(10.0, 10.0), rng=random.Random(0))
    p.enqueue(1, encode(report(seq=1)))
    p.flush(0.0)
    assert p.flush(1.0).sent == 0 and broker.attempts == 1  # still backing off: no request
    assert p.flush(10.0).sent == 1


def test_wire_json_round_trips():
    broker = FakeBroker()
    agent = make_agent(broker, n=1)
    agent.start(0.0)
    run(agent, 10.0)
    body = json.loads(broker.received[0].model_dump_json())
    assert body["node_id"] == "n1" and body["heartbeat"]["gpu_backend"] == "fake"


def test_large_batches_are_split_into_reports_under_the_body_limit():
    broker = FakeBroker()
    sizes = []

    class Sizing(FakeBroker):
        def send(self, body):
            sizes.append(len(body))
            return broker.send(body)

    agent = make_agent(Sizing(), n=16)  # 16 GPUs x 10 readings = 160 samples per push interval
    agent.config = AgentConfig(node_id="n1", hostname="n1", max_samples_per_report=64)
    agent.start(0.0)
    run(agent, 10.0)
    assert [len(r.gpus) for r in broker.received] == [64, 64, 32]
    assert sample_times(broker.received) == [float(t) for t in range(10)]
    seqs = [r.seq for r in broker.received]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert max(sizes) < 256 * 1024


def test_default_report_of_an_8_gpu_node_fits_the_body_limit():
    from agents.agent import encode

    r = FakeReader(8)
    r.init()
    samples = [s for k in range(25) for s in r.read(float(k))]
    body = encode(report(seq=1, gpus=samples[: AgentConfig(node_id="x").max_samples_per_report]))
    assert len(body) < 200 * 1024
