"""Runtime settings routes: everyone reads (which registries are allowed), platform-admins
change them with If-Match."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Header

from broker.api.deps import CallerDep, AdminSettings, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse
from broker.schemas.settings import SettingList, SettingPublic, SettingPut

router = APIRouter(tags=["settings"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 412, 422, 428)}


@router.get("/api/v1/admin/settings", response_model=SettingList, responses=ERRORS,
            summary="Image registry allow-list and max runtime per class")
def list_settings(svc: AdminSettings, principal: User):
    return JSON(svc.list(principal))


@router.put("/api/v1/admin/settings/{key}", response_model=SettingPublic, responses=ERRORS,
            summary="Platform-admins: change a setting (If-Match required)")
def put_setting(svc: AdminSettings, key: str, body: SettingPut, principal: User, caller: CallerDep,
                if_match: Annotated[Optional[str], Header(alias="If-Match", max_length=200)] = None):
    out = svc.put(principal, caller, key, body.value, if_match)
    return JSON(out, headers={"ETag": out["etag"]})
