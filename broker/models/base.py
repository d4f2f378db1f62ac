"""What every table module shares: ids, the clock default, JSON columns."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field


def new_id(nbytes: int = 8) -> str:
    """Short random hex id (16 chars, 64 bits: a collision among a million jobs has odds of
    about 3e-8, and a colliding insert is retried with a new id anyway)."""
    return secrets.token_hex(nbytes)


def now() -> float:
    return time.time()


def json_field(**kw: Any) -> Any:
    """A non-null JSON column (small lists and maps, never queried)."""
    return Field(default_factory=kw.pop("default_factory", dict), sa_column=Column(JSON, nullable=False))
