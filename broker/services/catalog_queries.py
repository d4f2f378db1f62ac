"""Catalog queries shared by several use cases: departments, projects, pools, nodes."""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import select
from sqlmodel import Session

from broker.models import Department, Node, Pool, Project


def projects(session: Session) -> Sequence[tuple[Project, Department]]:
    q = select(Project, Department).join(Department, Department.id == Project.department_id).order_by(Project.id)
    return session.execute(q).all()


def project(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def pools(session: Session) -> Sequence[Pool]:
    return session.execute(select(Pool).order_by(Pool.name)).scalars().all()


def nodes(session: Session) -> Sequence[Node]:
    return session.execute(select(Node).order_by(Node.pool, Node.id)).scalars().all()
