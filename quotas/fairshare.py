"""Fair share: exponentially decayed past usage and weighted dominant-resource share.

Why decay: yesterday's heavy user should yield to others today, but not forever. With a
half-life H, a project that has used G GPUs steadily carries a decayed usage of G*H/ln 2
GPU-seconds; `past_equivalent` turns that back into G so it can be added to the current
allocation on the same scale.
"""

from __future__ import annotations

import math
from typing import Mapping

LN2 = math.log(2.0)


def decay(usage: float, elapsed_s: float, half_life_s: float) -> float:
    """Invariant: usage halves every half_life_s; no time passed (or no half-life) changes nothing."""
    if elapsed_s <= 0 or half_life_s <= 0 or math.isinf(half_life_s):
        return usage
    return usage * 0.5 ** (elapsed_s / half_life_s)


def accumulate(decayed_usage: float, gpus: float, elapsed_s: float, half_life_s: float) -> float:
    """Invariant: decayed usage after holding `gpus` for elapsed_s (exact integral of the decay)."""
    if elapsed_s <= 0:
        return decayed_usage
    if half_life_s <= 0 or math.isinf(half_life_s):
        return decayed_usage + gpus * elapsed_s
    k = LN2 / half_life_s
    f = math.exp(-k * elapsed_s)
    return decayed_usage * f + gpus * (1.0 - f) / k


def past_equivalent(decayed_usage_gpu_s: float, half_life_s: float) -> float:
    """Invariant: steady use of G GPUs maps to G (decayed GPU-seconds x ln2 / half-life)."""
    if half_life_s <= 0 or math.isinf(half_life_s):
        return 0.0
    return decayed_usage_gpu_s * LN2 / half_life_s


def dominant_share(allocation: Mapping[str, float], capacity: Mapping[str, float], weight: float = 1.0) -> float:
    """Invariant: share = max over resources of allocation/capacity, divided by weight (>0)."""
    best = 0.0
    for r, a in allocation.items():
        c = capacity.get(r, 0.0)
        if c > 0:
            s = a / c
            if s > best:
                best = s
        elif a > 0:
            best = math.inf
    return best / weight if weight > 0 else math.inf
