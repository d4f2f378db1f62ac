"""Runtime settings shapes (image allow-list, max runtime per workload class)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from broker.schemas.base import Input


class SettingPut(Input):
    value: dict[str, Any]


class SettingPublic(BaseModel):
    key: str
    value: dict[str, Any]
    version: int
    etag: str
    default: bool


class SettingList(BaseModel):
    items: list[SettingPublic]
