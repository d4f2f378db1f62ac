"""FakeExecutor keeps the Executor invariants the services rely on."""

from __future__ import annotations

import threading
import time

from broker.adapters.fake import FakeExecutor, Outcome, node
from broker.ports import Executor, LaunchSpec, WorkerLaunch, WorkerState


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def spec(job="j1", attempt=1, workers=2):
    return LaunchSpec(job_id=job, attempt=attempt, image="img", command=("x",), env={}, runtime="container",
                      workers=tuple(WorkerLaunch(rank=r, node=f"n{r}", gpus=1, cpus=1, memory_gb=1, gpu_indices=(r,))
                                    for r in range(workers)), max_runtime_s=60)


def test_is_an_executor_and_serves_scripted_nodes():
    ex: Executor = FakeExecutor([node("a"), node("b", pool="operation", gpus=8)])
    assert [n.id for n in ex.nodes()] == ["a", "b"] and ex.nodes()[1].capacity.gpus == 8


def test_outcome_drives_states_on_the_clock():
    clk = Clock()
    ex = FakeExecutor(clock=clk, outcome_for=lambda s: Outcome(start_s=1, run_s=5, exit_code=3, log=b"hello\n"))
    ex.launch(spec())
    assert {w.state for w in ex.status("j1", 1).workers} == {WorkerState.STARTING}
    clk.t = 102
    assert {w.state for w in ex.status("j1", 1).workers} == {WorkerState.RUNNING}
    clk.t = 107
    st = ex.status("j1", 1).workers
    assert {(w.state, w.exit_code, w.ended_at) for w in st} == {(WorkerState.EXITED, 3, 106)}
    assert [w.cuda_visible_devices for w in st] == ["0", "1"]
    assert ex.read_log("j1", 1, 0) == b"hello\n" and ex.read_log("j1", 1, 0, offset=2, max_bytes=2) == b"ll"


def test_launch_is_idempotent_and_unknown_attempts_do_not_exist():
    ex = FakeExecutor()
    ex.launch(spec())
    ex.launch(spec())
    assert ex.attempts() == [("j1", 1)] and ex.launches == [("j1", 1), ("j1", 1)]
    assert ex.status("j1", 2).exists is False and ex.read_log("nope", 1, 0) == b""


def test_stop_finish_lose_release():
    ex = FakeExecutor()
    ex.launch(spec("a"))
    ex.launch(spec("b"))
    ex.launch(spec("c"))
    ex.stop("a", 1, 30, "stopped by cancel")
    assert {(w.state, w.exit_code, w.message) for w in ex.status("a", 1).workers} == {
        (WorkerState.EXITED, 143, "stopped by cancel")}
    ex.finish("b", 1, exit_code=0, rank=1)
    assert [w.state for w in ex.status("b", 1).workers] == [WorkerState.RUNNING, WorkerState.EXITED]
    ex.lose("c", 1)
    assert {w.state for w in ex.status("c", 1).workers} == {WorkerState.LOST}
    ex.release("a", 1)
    ex.release("a", 1)
    assert ("a", 1) not in ex.attempts()


# -- attempt ends told at once (broker.ports.EndNotifier) --------------------------------------

def _told(ex):
    told = []
    ex.set_on_end(lambda job_id, attempt: told.append((job_id, attempt, time.time())))
    return told


def _wait_for(cond, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_a_scripted_end_is_told_when_its_time_passes_on_the_real_clock():
    ex = FakeExecutor(outcome_for=lambda s: Outcome(start_s=0.05, run_s=0.15 if s.job_id == "short" else 0.4))
    told = _told(ex)
    try:
        t0 = time.time()
        ex.launch(spec("long"))
        ex.launch(spec("short"))  # ends first although launched last: the sleeper wakes sooner
        assert _wait_for(lambda: len(told) == 2)
        assert [(j, a) for j, a, _ in told] == [("short", 1), ("long", 1)]
        assert told[0][2] - t0 >= 0.2 and told[1][2] - t0 >= 0.45, "never before the end"
        assert told[0][2] - t0 < 0.2 + 1.0, "told about when it ended, not much later"
        assert {w.state for w in ex.status("short", 1).workers} == {WorkerState.EXITED}
    finally:
        ex.shutdown()


def test_an_injected_clock_tells_nothing_behind_the_tests_back():
    clk = Clock()
    ex = FakeExecutor(clock=clk, outcome_for=lambda s: Outcome(run_s=0.01))
    told = _told(ex)
    ex.launch(spec())
    clk.t += 1  # the worker has ended as far as status goes ...
    assert {w.state for w in ex.status("j1", 1).workers} == {WorkerState.EXITED}
    time.sleep(0.1)
    assert told == [] and not ex._ends.running, "... but no timer runs for a clock that is not time.time"


def test_finish_lose_and_stop_tell_at_once_start_and_release_do_not():
    clk = Clock()
    ex = FakeExecutor(clock=clk)
    told = _told(ex)
    for j in "abcd":
        ex.launch(spec(j))
    ex.start("d", 1)
    ex.finish("a", 1, exit_code=0, rank=1)
    ex.lose("b", 1)
    ex.stop("c", 1, 30)
    ex.stop("c", 1, 30)  # already ended: nothing new to tell
    ex.release("d", 1)
    assert [(j, a) for j, a, _ in told] == [("a", 1), ("b", 1), ("c", 1)]


def test_a_released_attempt_is_not_told_and_shutdown_stops_the_timer():
    ex = FakeExecutor(outcome_for=lambda s: Outcome(run_s=0.3))
    told = _told(ex)
    ex.launch(spec("gone"))
    ex.release("gone", 1)
    ex.launch(spec("kept"))
    assert ex._ends.running
    assert _wait_for(lambda: told)
    time.sleep(0.05)
    assert [(j, a) for j, a, _ in told] == [("kept", 1)]

    ex.launch(spec("late"))
    threads = [t for t in threading.enumerate() if t.name == "fake-executor-ends"]
    ex.shutdown()
    assert not ex._ends.running and not any(t.is_alive() for t in threads)
    time.sleep(0.4)
    assert [(j, a) for j, a, _ in told] == [("kept", 1)], "nothing told after shutdown"


def test_a_failing_hook_does_not_stop_the_timer():
    ex = FakeExecutor(outcome_for=lambda s: Outcome(run_s=0.05))
    told = []

    def hook(job_id, attempt):
        told.append(job_id)
        if job_id == "first":
            raise RuntimeError("broker side failed")

    ex.set_on_end(hook)
    try:
        ex.launch(spec("first"))
        assert _wait_for(lambda: told == ["first"])
        ex.launch(spec("second"))
        assert _wait_for(lambda: told == ["first", "second"])
    finally:
        ex.shutdown()
