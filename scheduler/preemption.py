"""Preemption (placeholder until victim selection lands)."""

from __future__ import annotations


def try_preempt(cyc, job, s, reclaim) -> bool:
    return False
