"""`Wakeup`: how a use case tells the scheduling loop "look again now" without knowing it.

A submit, a cancel or a quota change should start work in milliseconds, not at the next
interval; so should the end of an attempt (the executor says so through `ended`, see
`broker.ports.EndNotifier`), since the GPUs it held stay allocated until the loop sees it. The
services get one `Wakeup` at construction and call it after their transaction commits; the
periodic tasks connect their tick to it when they start and disconnect when they stop.
Unconnected (an app without background tasks, a test) a call does nothing.
"""

from __future__ import annotations

from typing import Callable


class Wakeup:
    def __init__(self) -> None:
        self._on_submit: Callable[[], None] | None = None
        self._on_cancel: Callable[[], None] | None = None
        self._on_end: Callable[[], None] | None = None

    def connect(self, on_submit: Callable[[], None] | None, on_cancel: Callable[[], None] | None = None,
                on_end: Callable[[], None] | None = None) -> None:
        """Route wake-ups to these callables (`on_cancel` and `on_end` default to `on_submit`);
        None disconnects all three."""
        self._on_submit, self._on_cancel = on_submit, on_cancel or on_submit
        self._on_end = on_end or on_submit

    def submitted(self) -> None:
        """After a committed submit (or another change that may let work start)."""
        hook = self._on_submit
        if hook is not None:
            hook()

    def cancelled(self) -> None:
        """After a cancel request on a job holding resources."""
        hook = self._on_cancel
        if hook is not None:
            hook()

    def ended(self, job_id: str = "", attempt: int = 0) -> None:
        """An executor saw an attempt end (`broker.ports.EndNotifier`); called from its thread,
        often in bursts, so the routed callable must be cheap (the tick's wake is a flag). Which
        attempt is not needed: the tick observes every attempt that holds resources."""
        hook = self._on_end
        if hook is not None:
            hook()
