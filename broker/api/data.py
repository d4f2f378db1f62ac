"""Routes for project secrets (write-only) and datasets (registration, grants, access)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from broker.api.deps import CallerDep, Datasets, Secrets, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse
from broker.schemas.data import (DatasetAccessList, DatasetCreate, DatasetGrantPublic, DatasetGrantPut, DatasetList,
                                 DatasetPublic, SecretList, SecretPublic, SecretPut)

router = APIRouter(tags=["data"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 422, 503)}


# ---------------------------------------------------------------- secrets
@router.get("/api/v1/projects/{project}/secrets", response_model=SecretList, responses=ERRORS)
def list_secrets(svc: Secrets, project: str, principal: User):
    return JSON(svc.list(principal, project))


@router.get("/api/v1/projects/{project}/secrets/{name}", response_model=SecretPublic, responses=ERRORS)
def get_secret(svc: Secrets, project: str, name: str, principal: User):
    return JSON(svc.get(principal, project, name))


@router.put("/api/v1/projects/{project}/secrets/{name}", response_model=SecretPublic, responses=ERRORS)
def put_secret(svc: Secrets, project: str, name: str, body: SecretPut, principal: User, caller: CallerDep):
    """Create the secret (201) or rotate it to a new version (200). The value is never returned."""
    out, created = svc.put(principal, caller, project, name, body.value)
    return JSON(out, status_code=201 if created else 200)


@router.delete("/api/v1/projects/{project}/secrets/{name}", status_code=204, responses=ERRORS)
def delete_secret(svc: Secrets, project: str, name: str, principal: User, caller: CallerDep):
    svc.delete(principal, caller, project, name)
    return Response(status_code=204)


# ---------------------------------------------------------------- datasets
@router.post("/api/v1/datasets", status_code=201, response_model=DatasetPublic, responses=ERRORS)
def create_dataset(svc: Datasets, body: DatasetCreate, principal: User, caller: CallerDep):
    return JSON(svc.create(principal, caller, **body.model_dump()), status_code=201)


@router.get("/api/v1/datasets", response_model=DatasetList, responses=ERRORS)
def list_datasets(svc: Datasets, principal: User):
    return JSON(svc.list(principal))


@router.put("/api/v1/datasets/{dataset}/grants/{project}", response_model=DatasetGrantPublic, responses=ERRORS)
def grant_dataset(svc: Datasets, dataset: str, project: str, body: DatasetGrantPut, principal: User,
                  caller: CallerDep):
    return JSON(svc.grant(principal, caller, dataset, project, mode=body.mode, allow_process=body.allow_process))


@router.delete("/api/v1/datasets/{dataset}/grants/{project}", status_code=204, responses=ERRORS)
def revoke_dataset(svc: Datasets, dataset: str, project: str, principal: User, caller: CallerDep):
    svc.revoke(principal, caller, dataset, project)
    return Response(status_code=204)


@router.get("/api/v1/datasets/{dataset}/access", response_model=DatasetAccessList, responses=ERRORS)
def dataset_access(svc: Datasets, dataset: str, principal: User):
    """The jobs that mounted the dataset (newest first); the same facts are in the audit log."""
    return JSON(svc.access(principal, dataset))
