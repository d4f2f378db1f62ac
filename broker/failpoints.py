"""Named failpoints: where the fault-injection tests make the broker die, `kill -9` style.

Why: a crash between two commits (admission and launch, launch and STARTING, preemption and
stop) is the case that breaks exactly-once; a test must be able to put the crash *there*, not
wherever a timer happens to land. Production never arms one: the setting `BROKER_FAILPOINT` is
empty by default and `hit()` is then one string comparison.

`arm("after_admit_commit")` makes the first `hit("after_admit_commit")` end the process with
`os._exit(137)` (no cleanup, no atexit, no flushing of anything but stderr: what SIGKILL does);
`arm("after_admit_commit@3")` dies at the third hit. One failpoint is armed at a time.

The names (each `hit` in the code uses one of them):

- `submit_after_commit`    the group-commit writer committed a batch; no client got its 201
- `before_admit_commit`    a cycle's admissions are written, not yet committed
- `after_admit_commit`     admissions committed, nothing launched
- `after_launch`           the executor launched an attempt; the job is still ADMITTED
- `after_preempt_commit`   victims are PREEMPTED in the DB, no stop was sent
"""

from __future__ import annotations

import os
import sys
import threading

NAMES = frozenset({"submit_after_commit", "before_admit_commit", "after_admit_commit", "after_launch",
                   "after_preempt_commit"})
EXIT_CODE = 137  # what a shell reports for a SIGKILLed process

_lock = threading.Lock()
_armed = ""
_left = 0


def arm(spec: str) -> None:
    """Arm `name` or `name@N` (die at the N-th hit); "" disarms. Unknown names are refused, so
    a typo in a test cannot pass silently by never dying."""
    global _armed, _left
    name, _, nth = (spec or "").partition("@")
    if name and name not in NAMES:
        raise ValueError(f"unknown failpoint {name!r}; known: {sorted(NAMES)}")
    with _lock:
        _armed, _left = name, int(nth or 1)


def armed() -> str:
    return _armed


def hit(name: str) -> None:
    """Die here when `name` is armed and its count is reached; otherwise return at once."""
    global _left
    if name != _armed:
        return
    with _lock:
        _left -= 1
        if _left > 0:
            return
    sys.stderr.write(f"failpoint {name}: exiting with {EXIT_CODE}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)
