"""What every API shape shares: the one input base class, common patterns, errors, health.

`Input` is the base of every request body: unknown fields are refused (`extra="forbid"`), so a
body that names a server-owned field (status, node, gpu ids, attempt...) or has a typo gets 422
instead of being silently ignored; fields may be given by name or by alias. No string in it
(nested in lists and dicts, keys included) may hold a NUL or a lone surrogate: PostgreSQL
refuses the first in text and JSON, and the second cannot be encoded as UTF-8, so both are
refused here, with the field named, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from typing import Any, Literal

import re

from pydantic import BaseModel, ConfigDict, field_validator

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}$"


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, v: Any) -> Any:
        if _unstorable(v):
            raise ValueError("contains a character that cannot be stored (NUL or a lone surrogate)")
        return v


def _unstorable(v: Any) -> bool:
    if isinstance(v, str):
        return _UNSTORABLE.search(v) is not None
    if isinstance(v, dict):
        return any(_unstorable(k) or _unstorable(x) for k, x in v.items())
    if isinstance(v, (list, tuple, set, frozenset)):
        return any(_unstorable(x) for x in v)
    return False  # numbers, enums, nested Inputs (they check their own fields)


class Items(BaseModel):
    """Generic list envelope for the catalog endpoints."""

    items: list[Any]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}
