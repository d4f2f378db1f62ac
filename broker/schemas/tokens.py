"""API token shapes: the plaintext appears only in `TokenCreated` (the 201 of a create)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from broker.schemas.base import SLUG, Input

TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$"


class OwnTokenCreate(Input):
    name: str = Field(pattern=TOKEN_NAME)
    ttl_days: Optional[float] = Field(None, gt=0, le=365, description="default 90 days")


class TokenCreate(Input):
    name: str = Field(pattern=TOKEN_NAME)
    kind: Literal["user", "agent"] = "user"
    role: str = Field("user", max_length=32, description="'user' (act with the owner's memberships) or a role")
    user: Optional[str] = Field(None, max_length=64)
    project: Optional[str] = Field(None, pattern=SLUG)
    department: Optional[str] = Field(None, pattern=SLUG)
    node: Optional[str] = Field(None, max_length=200)
    ttl_days: Optional[float] = Field(None, gt=0, le=365)


class TokenPublic(BaseModel):
    id: str
    prefix: str
    name: str
    kind: str
    role: str
    project: Optional[str] = None
    department: Optional[str] = None
    node: Optional[str] = None
    owner: Optional[str] = None
    created_at: float
    expires_at: Optional[float] = None
    revoked_at: Optional[float] = None


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret; shown once, store it now")


class TokenList(BaseModel):
    items: list[TokenPublic]
