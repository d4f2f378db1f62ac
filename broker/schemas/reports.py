"""Request bodies of the usage report routes."""

from __future__ import annotations

from pydantic import Field

from broker.schemas.base import Input


class PricePut(Input):
    gpu_hour: float = Field(ge=0, le=1e6, description="price of one allocated GPU-hour")
    kwh: float = Field(default=0.0, ge=0, le=1e6, description="price of one kWh of GPU energy")
    currency: str = Field(default="DKK", pattern=r"^[A-Z]{3}$")
