"""Job routes: parse, authorize, call one service, return the public shape. Nothing else."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from broker.api.json import JSON
from starlette.concurrency import run_in_threadpool

from broker.api.admin_deps import request_origin
from broker.api.deps import User
from broker.errors import Invalid
from broker.schemas import ErrorResponse, JobCreate, JobEventList, JobList, JobPublic
from broker.services.jobs import body_hash

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 404, 409, 413, 422)}


def _csv(values: list[str] | None) -> list[str]:
    return [v for raw in values or [] for v in raw.split(",") if v]


@router.post("", status_code=201, response_model=JobPublic, responses=ERRORS,
             summary="Submit a job (stored PENDING; the scheduler admits it)")
async def submit(request: Request, spec: JobCreate, principal: User,
                 idempotency_key: Annotated[Optional[str], Header(description="1..255 printable characters")] = None):
    svc = request.app.state.jobs
    source, rid = request_origin(request)
    if svc.cache_ready(spec):
        row, event = svc.prepare(principal=principal, spec=spec, source=source, request_id=rid)
    else:
        row, event = await run_in_threadpool(svc.prepare, principal=principal, spec=spec, source=source,
                                             request_id=rid)
    headers = {}
    if idempotency_key is not None:
        if len(idempotency_key) > 255 or not idempotency_key.strip() or not idempotency_key.isprintable():
            raise Invalid("Idempotency-Key must be 1..255 printable characters", code="BAD_IDEMPOTENCY_KEY")
        body, replayed = await run_in_threadpool(svc.submit_idempotent, principal=principal, row=row, event=event,
                                                 key=idempotency_key, body_hash=body_hash(spec))
        if replayed:
            headers["Idempotent-Replayed"] = "true"
    else:
        body = await svc.submit_rows(row, event)
    hook = getattr(request.app.state, "on_submit", None)
    if hook is not None and "Idempotent-Replayed" not in headers:
        hook()
    return JSON(body, status_code=201, headers=headers)


@router.get("", response_model=JobList, responses=ERRORS, summary="List jobs, newest first")
def list_jobs(request: Request, principal: User,
              project: Annotated[Optional[list[str]], Query(description="project id(s); repeat or comma-separate")] = None,
              status: Annotated[Optional[list[str]], Query(description="status(es); repeat or comma-separate")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100,
              cursor: Annotated[Optional[str], Query(max_length=200)] = None):
    body = request.app.state.jobs.list(principal=principal, projects=_csv(project), statuses=_csv(status),
                                       cursor=cursor, limit=limit)
    return JSON(body)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS, summary="A job with attempts and placements")
def get_job(request: Request, job_id: str, principal: User):
    return JSON(request.app.state.jobs.get(principal=principal, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS,
             summary="Cancel: a pending job at once, a running one after its workers stop")
def cancel(request: Request, job_id: str, principal: User):
    state = request.app.state
    body, stop = state.jobs.cancel(principal=principal, job_id=job_id)
    if getattr(state, "audit_job", None) is not None:
        state.audit_job(request, principal, "job.cancel", body)
    if stop is not None:
        if state.jobs.executor is not None:
            state.jobs.executor.stop(stop[0], stop[1], state.settings.grace_period_s, "stopped by cancel", "cancelled")
        hook = getattr(state, "on_cancel", None) or getattr(state, "on_submit", None)
        if hook is not None:
            hook()
    return JSON(body)


@router.get("/{job_id}/events", response_model=JobEventList, responses=ERRORS, summary="The job's event log")
def events(request: Request, job_id: str, principal: User,
           after: Annotated[int, Query(ge=0, description="only events with id > after")] = 0,
           limit: Annotated[int, Query(ge=1, le=500)] = 500):
    return JSON(request.app.state.jobs.events(principal=principal, job_id=job_id, after=after, limit=limit))


@router.get("/{job_id}/logs", responses={200: {"content": {"text/plain": {}}}, **ERRORS, 503: {"model": ErrorResponse}},
            response_class=Response, summary="A worker's log; ?follow=true streams until the attempt ends")
async def logs(request: Request, job_id: str, principal: User,
               worker: Annotated[int, Query(ge=0, le=1023)] = 0,
               attempt: Annotated[Optional[int], Query(ge=1)] = None,
               offset: Annotated[int, Query(ge=0)] = 0,
               follow: bool = False):
    svc = request.app.state.logs
    if not follow:
        data = await run_in_threadpool(svc.read, principal=principal, job_id=job_id, worker=worker,
                                       attempt=attempt, offset=offset)
        return Response(data, media_type="text/plain; charset=utf-8")
    att, _ = await run_in_threadpool(svc.locate, principal=principal, job_id=job_id, worker=worker, attempt=attempt)
    svc.require_executor()  # 503 before the stream starts when no executor is attached
    return StreamingResponse(svc.follow(job_id=job_id, attempt=att, worker=worker, offset=offset),
                             media_type="text/plain; charset=utf-8")
