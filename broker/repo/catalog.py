"""Catalog queries: departments, projects, pools, nodes, tokens."""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import select
from sqlmodel import Session

from broker.models import ApiToken, Department, Node, Pool, Project


def projects(session: Session) -> Sequence[tuple[Project, Department]]:
    q = select(Project, Department).join(Department, Department.id == Project.department_id).order_by(Project.id)
    return session.execute(q).all()


def project(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def pools(session: Session) -> Sequence[Pool]:
    return session.execute(select(Pool).order_by(Pool.name)).scalars().all()


def nodes(session: Session) -> Sequence[Node]:
    return session.execute(select(Node).order_by(Node.pool, Node.id)).scalars().all()


def token_by_prefix(session: Session, prefix: str) -> ApiToken | None:
    return session.execute(select(ApiToken).where(ApiToken.prefix == prefix)).scalars().first()
