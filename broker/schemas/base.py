"""What every API shape shares: the one input base class, common patterns, errors, health.

`Input` is the base of every request body: unknown fields are refused (`extra="forbid"`), so a
body that names a server-owned field (status, node, gpu ids, attempt...) or has a typo gets 422
instead of being silently ignored; fields may be given by name or by alias.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}$"


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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
    details: dict[str, Any] = {}
