"""Request bodies of the usage report routes."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from broker.schemas.base import Input


class PricePut(Input):
    gpu_hour: float = Field(ge=0, le=1e6, description="price of one allocated GPU-hour")
    kwh: float = Field(default=0.0, ge=0, le=1e6, description="price of one kWh of GPU energy")
    currency: str = Field(default="DKK", pattern=r"^[A-Z]{3}$")


class WhatIf(Input):
    weeks: float = Field(default=4.0, gt=0, le=26, description="replay the last N weeks of history")
    add: list[str] = Field(default_factory=list, max_length=20,
                           description='node groups to add: "pool=innovation,model=H100,gpus_per_node=8,nodes=2"')
    remove: list[str] = Field(default_factory=list, max_length=20, description="node groups to remove (same form)")
    quota_file: Optional[str] = Field(default=None, max_length=200_000,
                                      description="quota rows to replace or add (YAML or JSON list)")
