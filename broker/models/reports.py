"""Tables of the usage reports: the price of a GPU-hour and of a kWh per pool (admin-set).

A pool without a row has no price: its report rows carry no cost (never a made-up zero).
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel

from broker.models.base import now


class PoolPrice(SQLModel, table=True):
    __tablename__ = "pool_prices"

    pool: str = Field(primary_key=True, max_length=64)
    gpu_hour: float = 0.0  # price of one allocated GPU-hour
    kwh: float = 0.0  # price of one kWh of GPU energy
    currency: str = Field(default="DKK", max_length=8)
    updated_at: float = Field(default_factory=now)
    updated_by: str = Field(default="", max_length=200)
