"""Backfill (placeholder until the reservation logic lands)."""

from __future__ import annotations


class Reservations:
    def blocks(self, cyc, s, fids) -> bool:
        return False

    def allowed_fn(self, cyc, job, fid):
        return None


def reserve_or_estimate(cyc, job, s, fids):
    return None
