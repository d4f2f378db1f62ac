"""What `broker up` keeps in its data dir so that a crash of the broker loses no running work.

The embedded Ray head and the node agents run in process groups of their own, so a `kill -9`
of the broker leaves them running, and the runner actors and placement groups of running jobs
are detached. Two files make a restart use them instead of starting over:

- `broker.lock`: an exclusive `flock` held for the broker's whole life (the kernel drops it when
  the process dies, however it dies). A second `broker up` on the same data dir refuses to
  start: never two heads, two schedulers or two sets of agents for one data dir.
- `embedded.json`: the head's address, process group and start time, each further local Ray
  node's and each agent's process group and start time, written once they run and removed on a
  clean stop.

On start, with the lock held: a recorded head that still runs and answers is reconnected to
(the executor re-adopts every running attempt: same attempt, same start time; the recorded
agents are kept); otherwise what the previous run left is ended (the head's remains, its
agents, and every worker the runners recorded beside their logs) before a new head starts.
Process identities are (pid, start time), so a reused pid is never signalled.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOCK_NAME, STATE_NAME = "broker.lock", "embedded.json"


class DataDirBusy(RuntimeError):
    """Another `broker up` holds this data dir."""


class DataDirLock:
    """An exclusive, non-blocking flock on `<data dir>/broker.lock`, holding our pid."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirBusy(f"another broker (pid {holder}) is running with data dir {self.path.parent}; "
                              "stop it first, or use another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


@dataclass
class Proc:
    pgid: int
    start_ticks: int
    name: str = ""


@dataclass
class Embedded:
    """What the running `broker up` started and a restart may take over."""

    head_address: str = ""
    head: Proc | None = None
    agents: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)  # the local Ray nodes after the head's

    def save(self, data_dir: Path) -> None:
        path = Path(data_dir) / STATE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @staticmethod
    def load(data_dir: Path) -> "Embedded | None":
        try:
            raw = json.loads((Path(data_dir) / STATE_NAME).read_text())
            head = Proc(**raw["head"]) if raw.get("head") else None
            return Embedded(raw.get("head_address", ""), head, [Proc(**a) for a in raw.get("agents", [])],
                            [Proc(**w) for w in raw.get("workers", [])])
        except (OSError, ValueError, TypeError, KeyError):
            return None

    @staticmethod
    def forget(data_dir: Path) -> None:
        (Path(data_dir) / STATE_NAME).unlink(missing_ok=True)
