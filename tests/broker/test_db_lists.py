"""`broker.db.one_of` / `pairs_in`: the same rows as IN on both databases, for empty, small and
large lists; on PostgreSQL one statement text whatever the list's length (psycopg parses a new
or long text anew each time, which several 500-value IN lists a tick paid for)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, tuple_
from sqlmodel import Session

from broker.db import one_of, pairs_in
from broker.models import Attempt, Job


@pytest.fixture(scope="module")
def rows(engine):
    with Session(engine) as s:
        for i in range(30):
            s.add(Job(id=f"lst-{i:03d}", project_id="ouh-liver", name="t", command=["x"]))
        s.flush()
        for i in range(30):
            for n in (1, 2):
                s.add(Attempt(job_id=f"lst-{i:03d}", number=n, status="SUCCEEDED"))
        s.commit()
    return engine


@pytest.mark.parametrize("size", [0, 1, 7, 700])
def test_the_same_rows_as_in(rows, size):
    ids = [f"lst-{i:03d}" for i in range(0, size * 3, 3)] + ["nope"] * (size > 0)
    pairs = [(f"lst-{i:03d}", 1 + i % 2) for i in range(size)] + [("nope", 1)] * (size > 0)
    with Session(rows) as s:
        got = set(s.execute(select(Job.id).where(one_of(s, Job.id, ids))).scalars())
        want = set(s.execute(select(Job.id).where(Job.id.in_(ids[:500]))).scalars()) | \
            set(s.execute(select(Job.id).where(Job.id.in_(ids[500:]))).scalars())
        assert got == want == {i for i in ids if i < "lst-030"}
        got2 = set(s.execute(select(Attempt.job_id, Attempt.number)
                             .where(pairs_in(s, Attempt.job_id, Attempt.number, pairs))).tuples())
        want2 = set(s.execute(select(Attempt.job_id, Attempt.number)
                              .where(tuple_(Attempt.job_id, Attempt.number).in_(pairs[:300]))).tuples()) | \
            set(s.execute(select(Attempt.job_id, Attempt.number)
                          .where(tuple_(Attempt.job_id, Attempt.number).in_(pairs[300:]))).tuples())
        assert got2 == want2 == {p for p in pairs if p[0] < "lst-030"}


def test_one_statement_text_on_postgresql(rows):
    with Session(rows) as s:
        if s.get_bind().dialect.name != "postgresql":
            pytest.skip("SQLite keeps IN lists (no server to parse them)")
        def text(stmt) -> str:  # as sent: IN lists expanded to one placeholder per value
            return str(stmt.compile(s.get_bind(), compile_kwargs={"render_postcompile": True}))
        texts = {text(select(Job.id).where(one_of(s, Job.id, ["a"] * n))) for n in (1, 5, 500)}
        pair_texts = {text(select(Attempt.job_id).where(pairs_in(s, Attempt.job_id, Attempt.number, [("a", 1)] * n)))
                      for n in (1, 5, 500)}
        assert len(texts) == 1 and len(pair_texts) == 1
        assert len({text(select(Job.id).where(Job.id.in_(["a"] * n))) for n in (1, 5)}) == 2  # what IN does
