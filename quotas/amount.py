"""`Amount`: the one number type every quota, usage and budget figure goes through.

Why a type and not a float: quota values may be *unlimited*, and arithmetic with an
unlimited operand has rules (unlimited - x stays unlimited, min(x, unlimited) = x) that raw
`+`/`-` on floats get wrong silently (float("inf") - float("inf") is NaN). Keeping every
quota number in `Amount` makes those rules live in one place.

Invariant: a finite Amount is a non-negative-or-negative float rounded to 1e-9 (usage
subtraction may go negative transiently, comparisons stay exact for integral GPU counts);
UNLIMITED compares greater than every finite Amount and equals only itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

Number = Union[int, float]

_ROUND = 9
_INF = math.inf


@dataclass(frozen=True, slots=True, order=False)
class Amount:
    """A quota quantity, finite or unlimited. Immutable and hashable."""

    value: float  # math.inf means unlimited

    # -- construction -----------------------------------------------------------------
    @staticmethod
    def of(x: "Amount | Number | None") -> "Amount":
        """Coerce a number (None means unlimited) into an Amount."""
        if isinstance(x, Amount):
            return x
        if x is None:
            return UNLIMITED
        if isinstance(x, float) and math.isnan(x):
            raise ValueError("an Amount cannot be NaN")
        if x == math.inf:
            return UNLIMITED
        return _make(round9(float(x)))

    @property
    def unlimited(self) -> bool:
        return self.value == math.inf

    # -- arithmetic (unlimited absorbs) -------------------------------------------------
    def __add__(self, other: "Amount | Number") -> "Amount":
        b = other.value if type(other) is Amount else Amount.of(other).value  # fast path: no coercion
        a = self.value
        if a == _INF or b == _INF:
            return UNLIMITED
        return _make(round9(a + b))

    __radd__ = __add__

    def __sub__(self, other: "Amount | Number") -> "Amount":
        """unlimited - x = unlimited; x - unlimited = 0 (nothing is left of a finite pool)."""
        b = other.value if type(other) is Amount else Amount.of(other).value
        a = self.value
        if a == _INF:
            return UNLIMITED
        if b == _INF:
            return ZERO
        return _make(round9(a - b))

    def __mul__(self, k: Number) -> "Amount":
        if self.unlimited:
            return UNLIMITED if k > 0 else ZERO
        return _make(round9(self.value * k))

    __rmul__ = __mul__

    def clamp0(self) -> "Amount":
        """max(self, 0): what is left can never be negative."""
        return self if self.value >= 0 else ZERO  # unlimited (inf) is >= 0

    # -- comparison ----------------------------------------------------------------------
    def _cmp_value(self, other: "Amount | Number") -> float:
        return other.value if type(other) is Amount else Amount.of(other).value

    def __lt__(self, other: "Amount | Number") -> bool:
        return self.value < self._cmp_value(other)

    def __le__(self, other: "Amount | Number") -> bool:
        return self.value <= self._cmp_value(other)

    def __gt__(self, other: "Amount | Number") -> bool:
        return self.value > self._cmp_value(other)

    def __ge__(self, other: "Amount | Number") -> bool:
        return self.value >= self._cmp_value(other)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Amount, int, float)):
            return self.value == Amount.of(other).value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)

    # -- presentation ----------------------------------------------------------------------
    def to_json(self) -> float | None:
        """JSON form: a number, or null for unlimited."""
        return None if self.unlimited else (int(self.value) if self.value.is_integer() else self.value)

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return "Amount(unlimited)" if self.unlimited else f"Amount({self.to_json()})"

    def __str__(self) -> str:
        return "unlimited" if self.unlimited else str(self.to_json())


def round9(x: float) -> float:
    """round(x, 9), exactly, with two fast paths: an integral float (GPU, CPU and GiB counts
    nearly always are) is its own rounding, and round() with digits goes through a decimal
    conversion that costs ten times the check, so other values (fractional quota shares and
    the rooms left under them, which recur all through a scheduling cycle) are remembered
    in a bounded table: round is a pure function of x."""
    if x.is_integer():
        return x
    r = _ROUNDED.get(x)
    if r is None:
        if len(_ROUNDED) >= _ROUNDED_MAX:
            _ROUNDED.clear()
        r = _ROUNDED[x] = round(x, _ROUND)
    return r


_ROUNDED: dict[float, float] = {}
_ROUNDED_MAX = 1 << 16


_new = object.__new__
_set_value = Amount.value.__set__  # the slot's own setter (what the frozen __init__ ends in)


def _make(value: float) -> Amount:
    """Amount(value) without the frozen dataclass __init__ round trip (half the cost).

    Why: quota arithmetic creates tens of thousands of Amounts per scheduling cycle. Only for
    values already rounded by the caller; the result is an ordinary, immutable Amount.
    """
    a = _new(Amount)
    _set_value(a, value)
    return a


def amin(*xs: "Amount | Number") -> Amount:
    """Minimum of Amounts (unlimited is the identity)."""
    return Amount.of(min(Amount.of(x).value for x in xs))


def amax(*xs: "Amount | Number") -> Amount:
    return Amount.of(max(Amount.of(x).value for x in xs))


ZERO = Amount(0.0)
UNLIMITED = Amount(math.inf)
