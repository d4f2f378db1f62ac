"""Service routes: parse, authorize, call one service, return the public shape. Nothing else.

The entry point of a service (`/svc/{project}/{service}/...`, the proxy) is in
`broker.api.svc_proxy`.
"""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from broker.api.deps import Logs, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse
from broker.schemas.services import (ReplicaList, RevisionList, ScaleIn, ServiceCreate, ServiceEventList,
                                     ServiceList, ServicePatch, ServicePublic)
from broker.services.services import ServiceManager

router = APIRouter(prefix="/api/v1/services", tags=["services"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 422)}


def _manager(request: Request) -> ServiceManager:
    return request.app.state.services.service_manager


Manager = Annotated[ServiceManager, Depends(_manager)]


@router.post("", status_code=201, response_model=ServicePublic, responses=ERRORS,
             summary="Deploy a service (replicas are jobs the scheduler admits)")
def deploy(spec: ServiceCreate, principal: User, svc: Manager):
    return JSON(svc.deploy(principal=principal, spec=spec), status_code=201)


@router.get("", response_model=ServiceList, responses=ERRORS, summary="List services")
def list_services(principal: User, svc: Manager,
                  project: Annotated[Optional[list[str]], Query(description="project id(s)")] = None):
    return JSON(svc.list(principal=principal, projects=[p for raw in project or [] for p in raw.split(",") if p]))


@router.get("/{service_id}", response_model=ServicePublic, responses=ERRORS, summary="A service")
def get_service(service_id: str, principal: User, svc: Manager):
    return JSON(svc.get(principal=principal, service_id=service_id))


@router.patch("/{service_id}", response_model=ServicePublic, responses=ERRORS,
              summary="Change image/command/env/probes (a new revision, rolled out) or replica bounds")
def patch_service(service_id: str, change: ServicePatch, principal: User, svc: Manager):
    return JSON(svc.patch(principal=principal, service_id=service_id, change=change))


@router.post("/{service_id}/scale", response_model=ServicePublic, responses=ERRORS, summary="Set desired replicas")
def scale(service_id: str, body: ScaleIn, principal: User, svc: Manager):
    return JSON(svc.scale(principal=principal, service_id=service_id, body=body))


@router.delete("/{service_id}", response_model=ServicePublic, responses=ERRORS,
               summary="Delete: replicas drain and stop, then the service is gone")
def delete_service(service_id: str, principal: User, svc: Manager):
    return JSON(svc.delete(principal=principal, service_id=service_id))


@router.get("/{service_id}/revisions", response_model=RevisionList, responses=ERRORS, summary="Revisions, newest first")
def revisions(service_id: str, principal: User, svc: Manager):
    return JSON(svc.revisions(principal=principal, service_id=service_id))


@router.get("/{service_id}/replicas", response_model=ReplicaList, responses=ERRORS,
            summary="Live replicas: status, node, GPU ids, health")
def replicas(service_id: str, principal: User, svc: Manager):
    return JSON(svc.replicas(principal=principal, service_id=service_id))


@router.get("/{service_id}/events", response_model=ServiceEventList, responses=ERRORS, summary="The service's events")
def events(service_id: str, principal: User, svc: Manager,
           after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 500):
    return JSON(svc.events(principal=principal, service_id=service_id, after=after, limit=limit))


@router.get("/{service_id}/replicas/{replica}/logs", responses={200: {"content": {"text/plain": {}}}, **ERRORS},
            response_class=Response, summary="One replica's log (by replica index or job id)")
async def replica_logs(service_id: str, replica: str, principal: User, svc: Manager, logs: Logs,
                       offset: Annotated[int, Query(ge=0)] = 0, follow: bool = False):
    job_id = await run_in_threadpool(svc.replica_job, principal=principal, service_id=service_id, replica=replica)
    if not follow:
        got = await run_in_threadpool(logs.read, principal=principal, job_id=job_id, worker=0, attempt=None,
                                      offset=offset)
        return Response(got.data, media_type="text/plain; charset=utf-8", headers=got.headers)
    att, _ = await run_in_threadpool(logs.locate, principal=principal, job_id=job_id, worker=0, attempt=None)
    logs.require_executor()
    headers = await run_in_threadpool(logs.headers, job_id, att, 0)
    return StreamingResponse(logs.follow(job_id=job_id, attempt=att, worker=0, offset=offset),
                             media_type="text/plain; charset=utf-8", headers=headers)


@router.post("/{service_id}/keys", status_code=201, responses=ERRORS,
             summary="A new API key for the service's entry point (shown once)")
def create_key(service_id: str, principal: User, svc: Manager):
    return JSON(svc.create_key(principal=principal, service_id=service_id), status_code=201)


@router.delete("/{service_id}/keys", responses=ERRORS, summary="Revoke every API key of the service")
def revoke_keys(service_id: str, principal: User, svc: Manager):
    return JSON(svc.revoke_keys(principal=principal, service_id=service_id))
