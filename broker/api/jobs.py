"""Job routes: parse, authorize, call one service, return the public shape. Nothing else."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from broker.api.deps import CallerDep, Jobs, Logs, Origin, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse, JobCreate, JobEventList, JobList, JobPublic

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 404, 409, 413, 422)}


def _csv(values: list[str] | None) -> list[str]:
    return [v for raw in values or [] for v in raw.split(",") if v]


@router.post("", status_code=201, response_model=JobPublic, responses=ERRORS,
             summary="Submit a job (stored PENDING; the scheduler admits it)")
async def submit(spec: JobCreate, principal: User, where: Origin, svc: Jobs,
                 idempotency_key: Annotated[Optional[str], Header(description="1..255 printable characters")] = None):
    source, rid = where
    body, replayed = await svc.submit(principal=principal, spec=spec, source=source, request_id=rid,
                                      idempotency_key=idempotency_key)
    return JSON(body, status_code=201, headers={"Idempotent-Replayed": "true"} if replayed else {})


@router.get("", response_model=JobList, responses=ERRORS, summary="List jobs, newest first")
def list_jobs(principal: User, svc: Jobs,
              project: Annotated[Optional[list[str]], Query(description="project id(s); repeat or comma-separate")] = None,
              status: Annotated[Optional[list[str]], Query(description="status(es); repeat or comma-separate")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100,
              cursor: Annotated[Optional[str], Query(max_length=200)] = None):
    return JSON(svc.list(principal=principal, projects=_csv(project), statuses=_csv(status), cursor=cursor,
                         limit=limit))


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS, summary="A job with attempts and placements")
def get_job(job_id: str, principal: User, svc: Jobs):
    return JSON(svc.get(principal=principal, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS,
             summary="Cancel: a pending job at once, a running one after its workers stop")
def cancel(job_id: str, principal: User, caller: CallerDep, svc: Jobs):
    return JSON(svc.cancel(principal=principal, caller=caller, job_id=job_id))


@router.get("/{job_id}/events", response_model=JobEventList, responses=ERRORS, summary="The job's event log")
def events(job_id: str, principal: User, svc: Jobs,
           after: Annotated[int, Query(ge=0, description="only events with id > after")] = 0,
           limit: Annotated[int, Query(ge=1, le=500)] = 500):
    return JSON(svc.events(principal=principal, job_id=job_id, after=after, limit=limit))


@router.get("/{job_id}/logs", responses={200: {"content": {"text/plain": {}}}, **ERRORS, 410: {"model": ErrorResponse},
                       503: {"model": ErrorResponse}},
            response_class=Response, summary="A worker's log; ?follow=true streams until the attempt ends")
async def logs(job_id: str, principal: User, svc: Logs,
               worker: Annotated[int, Query(ge=0, le=1023)] = 0,
               attempt: Annotated[Optional[int], Query(ge=1)] = None,
               offset: Annotated[int, Query(ge=0)] = 0,
               follow: bool = False):
    if not follow:
        got = await run_in_threadpool(svc.read, principal=principal, job_id=job_id, worker=worker,
                                      attempt=attempt, offset=offset)
        return Response(got.data, media_type="text/plain; charset=utf-8", headers=got.headers)
    att, _ = await run_in_threadpool(svc.locate, principal=principal, job_id=job_id, worker=worker, attempt=attempt)
    svc.require_executor()  # 503 before the stream starts when no executor is attached
    headers = await run_in_threadpool(svc.headers, job_id, att, worker)
    return StreamingResponse(svc.follow(job_id=job_id, attempt=att, worker=worker, offset=offset),
                             media_type="text/plain; charset=utf-8", headers=headers)
