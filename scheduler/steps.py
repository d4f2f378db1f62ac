"""Named results that the cycle's steps hand each other.

Why named tuples: these values are read on the per-job hot path. A `NamedTuple` unpacks and
indexes like the positional tuple it replaces (fields are C descriptors) while giving every
field a name; it costs only on creation, so the types made more than once per blocked job
stay tuple aliases (see below). `Blocked` is a small slotted class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from scheduler.index import Shape
    from scheduler.model import Job, ReasonCode


class Limits(NamedTuple):
    """A project's hard limits and quota flags for one request on one flavor.

    Invariant: `level` is "" (passes its limits), "project" or "department" (that limit
    fails, on resource index `resource`); the three flags are False whenever `level` is set.
    """

    level: str
    resource: int  # index into RESOURCES, -1 when no limit fails
    within_guarantee: bool
    within_nominal: bool
    borrowing: bool


class QuotaFail(NamedTuple):
    """The first quota failure met for a job: where, which level, which resource.
    Made through `failed_at()`, which hands out one shared instance per value."""

    fid: int
    level: str  # project | department | borrow | reserved
    resource: int


_QUOTA_FAILS: dict[tuple[int, str, int], QuotaFail] = {}


def failed_at(fid: int, level: str, resource: int) -> QuotaFail:
    """The shared QuotaFail for these values (immutable; values are few: flavors x 4 x 3)."""
    key = (fid, level, resource)
    got = _QUOTA_FAILS.get(key)
    if got is None:
        got = _QUOTA_FAILS[key] = QuotaFail(fid, level, resource)
    return got


# The two per-job records below stay plain tuples, named by a type alias and unpacked by name
# where they are read: they are made once per blocked job and flavor (about 20,000 times in
# the benchmark's cycle), and a NamedTuple's Python-level constructor measured +10 % of the
# cycle's instructions there.

Reclaim = tuple[int, bool, bool]
"""(fid, within guarantee, within nominal): a flavor on which preemption may be tried."""

Deferred = tuple["Job", "Shape", list[int], "ReasonCode", dict, int]
"""(job, shape, fids, code, details, position): a capacity-blocked job whose reason, with its
estimated start, is built at the end of the cycle."""


class Started(NamedTuple):
    """A job admitted in this cycle, as the backfill timelines see it."""

    end: float
    job_id: str
    fid: int
    placed: list[tuple[int, int]]  # (node index, workers)
    shape: "Shape"


class Blocked:
    """Why a job was not admitted, as memoised per (project, shape) while the state is unchanged.

    `fids` is None for a plain wait (quota, budget, static reasons); for a capacity block it
    is the flavors whose capacity was looked at (the estimate is computed over them).
    """

    __slots__ = ("code", "details", "fids", "text")

    def __init__(self, code: "ReasonCode", details: Any, fids: list[int] | None = None) -> None:
        self.code, self.details, self.fids = code, details, fids
        self.text: str | None = None  # the sentence, once a replay built it (`_Cycle.replay`)

    @property
    def capacity(self) -> bool:
        return self.fids is not None
