"""FakeExecutor keeps the Executor invariants the services rely on."""

from __future__ import annotations

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
