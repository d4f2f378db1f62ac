"""The baseline the submit benchmark compares against: a plain FastAPI + SQLModel insert.

One ORM object per request, one transaction per request (commit + refresh), the response
built by FastAPI from a response model: what a straightforward implementation of
`POST /api/v1/jobs` looks like. Same table, same body, same database as the real endpoint.
"""


from typing import Annotated, Optional

from fastapi import Depends, FastAPI
from sqlmodel import Field, Session, SQLModel

from broker.db import make_engine
from broker.models import Job, new_id
from broker.schemas import JobCreate
from broker.settings import Settings


class BaselineJobPublic(SQLModel):
    id: str
    name: str
    project_id: str
    status: str
    image: str
    command: list
    env: dict
    gpus: int
    cpus: float
    memory_gb: float
    workers: int
    created_at: float
    priority: int = 0
    pool: Optional[str] = Field(default=None)


def create_baseline_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings)
    app = FastAPI(title="baseline")

    def session():
        with Session(engine) as s:
            yield s

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/api/v1/jobs", status_code=201, response_model=BaselineJobPublic)
    def create(spec: JobCreate, s: Annotated[Session, Depends(session)]):
        job = Job(id=new_id(), name=spec.name, project_id=spec.project, workload_class=spec.workload_class,
                  image=spec.image, command=spec.command, env=spec.env, runtime=spec.runtime,
                  gpus=spec.resources.gpus, cpus=spec.resources.cpus, memory_gb=spec.resources.memory_gb,
                  gpu_models=spec.resources.models(), workers=spec.workers, max_runtime_s=spec.max_runtime_s,
                  priority=spec.priority, max_retries=spec.max_retries)
        s.add(job)
        s.commit()
        s.refresh(job)
        return job

    return app


def baseline_app() -> FastAPI:
    """The uvicorn factory of the benchmark's server subprocess (settings from the environment)."""
    return create_baseline_app(Settings())
