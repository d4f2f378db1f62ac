"""The job state machine: every edge allowed or forbidden, CAS races, attempts, requeue."""

from __future__ import annotations

import itertools
import threading

import pytest
from sqlmodel import Session, select

from broker import jobstate
from broker.errors import InvalidTransition
from broker.models import Attempt, Job, JobEvent, JobStatus

S = JobStatus
EDGES = {
    (S.PENDING, S.ADMITTED), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.ADMITTED, S.STARTING), (S.ADMITTED, S.RUNNING), (S.ADMITTED, S.SUCCEEDED), (S.ADMITTED, S.FAILED),
    (S.ADMITTED, S.CANCELLED), (S.ADMITTED, S.PREEMPTED), (S.ADMITTED, S.LOST),
    (S.STARTING, S.RUNNING), (S.STARTING, S.SUCCEEDED), (S.STARTING, S.FAILED), (S.STARTING, S.CANCELLED),
    (S.STARTING, S.PREEMPTED), (S.STARTING, S.LOST),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED), (S.RUNNING, S.PREEMPTED),
    (S.RUNNING, S.LOST),
    (S.PREEMPTED, S.PENDING), (S.PREEMPTED, S.FAILED), (S.PREEMPTED, S.CANCELLED),
    (S.LOST, S.PENDING), (S.LOST, S.FAILED), (S.LOST, S.CANCELLED),
}
ALL_PAIRS = list(itertools.product(list(S), list(S)))
# a path from PENDING to each state, to put a job there through real transitions
PATH = {
    S.PENDING: [], S.ADMITTED: [S.ADMITTED], S.STARTING: [S.ADMITTED, S.STARTING],
    S.RUNNING: [S.ADMITTED, S.STARTING, S.RUNNING], S.SUCCEEDED: [S.ADMITTED, S.RUNNING, S.SUCCEEDED],
    S.FAILED: [S.FAILED], S.CANCELLED: [S.CANCELLED], S.PREEMPTED: [S.ADMITTED, S.RUNNING, S.PREEMPTED],
    S.LOST: [S.ADMITTED, S.RUNNING, S.LOST],
}


def make_job(s: Session, status: S = S.PENDING, **kw) -> Job:
    """Builder: a job driven to `status` through the machine itself."""
    job = Job(project_id="ouh-liver", name="t", command=["x"], **kw)
    s.add(job)
    s.flush()
    for to in PATH[status]:
        assert jobstate.transition(s, job, to, expected_version=job.version)
    return job


@pytest.mark.parametrize("frm,to", ALL_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALL_PAIRS])
def test_the_transition_table_is_exactly_the_documented_edges(frm, to):
    assert jobstate.can_transition(frm, to) == ((frm, to) in EDGES)


def test_terminal_states_have_no_way_out():
    for t in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
        assert not jobstate.ALLOWED[t]


@pytest.mark.parametrize("frm,to", sorted(EDGES), ids=[f"{a.value}->{b.value}" for a, b in sorted(EDGES)])
def test_each_allowed_edge_applies_bumps_version_and_writes_an_event(engine, frm, to):
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s, frm)
        v = job.version
        assert jobstate.transition(s, job, to, expected_version=v, message="why")
        s.commit()
        row = s.get(Job, job.id)
        s.refresh(row)
        assert (row.status, row.version) == (to.value, v + 1)
        ev = s.exec(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc())).first()
        assert (ev.from_status, ev.to_status, ev.message) == (frm.value, to.value, "why")


FORBIDDEN = [(a, b) for a, b in ALL_PAIRS if (a, b) not in EDGES]


@pytest.mark.parametrize("frm,to", FORBIDDEN, ids=[f"{a.value}->{b.value}" for a, b in FORBIDDEN])
def test_each_forbidden_edge_raises_and_changes_nothing(engine, frm, to):
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s, frm)
        v = job.version
        with pytest.raises(InvalidTransition) as ei:
            jobstate.transition(s, job, to, expected_version=v)
        assert ei.value.status == 409 and ei.value.details == {"from": frm.value, "to": to.value}
        s.commit()
        s.refresh(job)
        assert (job.status, job.version) == (frm.value, v)


def test_stale_version_loses_the_race_and_writes_nothing(engine):
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s)
        s.commit()
    with Session(engine) as a, Session(engine) as b:
        ja, jb = a.get(Job, job.id), b.get(Job, job.id)
        assert jobstate.transition(a, ja, S.ADMITTED, expected_version=1)
        a.commit()
        assert not jobstate.transition(b, jb, S.CANCELLED, expected_version=1)
        b.commit()
    with Session(engine) as s:
        row = s.get(Job, job.id)
        assert (row.status, row.version) == ("ADMITTED", 2)
        kinds = s.exec(select(JobEvent.to_status).where(JobEvent.job_id == job.id)).all()
        assert kinds == ["ADMITTED"]


def test_concurrent_writers_on_one_version_exactly_one_wins(engine):
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s)
        s.commit()
    results, barrier = [], threading.Barrier(4)

    def writer(to):
        with Session(engine) as s2:
            j = s2.get(Job, job.id)
            barrier.wait()
            ok = jobstate.transition(s2, j, to, expected_version=1)
            s2.commit()
            results.append(ok)

    ts = [threading.Thread(target=writer, args=(to,)) for to in (S.ADMITTED, S.CANCELLED, S.ADMITTED, S.FAILED)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert sorted(results) == [False, False, False, True]
    with Session(engine) as s:
        assert s.get(Job, job.id).version == 2


def test_admission_opens_an_attempt_and_the_end_closes_it(engine):
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s)
        jobstate.transition(s, job, S.ADMITTED, expected_version=1, now=10.0)
        jobstate.transition(s, job, S.RUNNING, expected_version=2, now=12.0)
        jobstate.transition(s, job, S.FAILED, expected_version=3, now=20.0, exit_code=3, message="exit 3")
        s.commit()
        att = s.get(Attempt, (job.id, 1))
        assert (att.status, att.admitted_at, att.started_at, att.ended_at, att.exit_code, att.reason) == (
            "FAILED", 10.0, 12.0, 20.0, 3, "exit 3")
        assert (job.admitted_at, job.started_at, job.finished_at, job.exit_code) == (10.0, 12.0, 20.0, 3)


@pytest.mark.parametrize("max_retries,want", [(0, S.FAILED), (1, S.PENDING)], ids=["no-retries", "one-retry"])
def test_lost_requeues_as_new_attempt_while_retries_allow(engine, max_retries, want):
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s, S.LOST, max_retries=max_retries)
        assert jobstate.requeue_or_fail(s, job, expected_version=job.version, now=50.0) is want
        s.commit()
        att = s.get(Attempt, (job.id, 1))
        assert (att.status, att.ended_at) == ("LOST", 50.0)
        if want is S.PENDING:
            assert (job.attempt, job.admitted_at, job.started_at, job.flavor_pool) == (2, None, None, None)
            # the second attempt may be admitted and will then fail: no retries left
            jobstate.transition(s, job, S.ADMITTED, expected_version=job.version)
            jobstate.transition(s, job, S.LOST, expected_version=job.version)
            assert jobstate.requeue_or_fail(s, job, expected_version=job.version) is S.FAILED
            s.commit()
            assert sorted(a.number for a in s.exec(select(Attempt).where(Attempt.job_id == job.id)).all()) == [1, 2]
            assert "LOST 2 time(s)" in job.message
        else:
            assert job.status == "FAILED" and "no retries left" in job.message


def test_preemptions_never_use_up_retries(engine):
    """Innovation work is preempted routinely: a job preempted twice and then lost once has
    used one retry, not three; preemption alone always requeues, even with max_retries=0."""
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s, S.PREEMPTED, max_retries=0)
        assert jobstate.requeue_or_fail(s, job, expected_version=job.version) is S.PENDING
        job.max_retries = 1
        for _ in range(2):  # attempt 2 preempted as well
            jobstate.transition(s, job, S.ADMITTED, expected_version=job.version)
            jobstate.transition(s, job, S.RUNNING, expected_version=job.version)
            jobstate.transition(s, job, S.PREEMPTED, expected_version=job.version)
            assert jobstate.requeue_or_fail(s, job, expected_version=job.version) is S.PENDING
        jobstate.transition(s, job, S.ADMITTED, expected_version=job.version)
        jobstate.transition(s, job, S.LOST, expected_version=job.version)
        assert jobstate.requeue_or_fail(s, job, expected_version=job.version) is S.PENDING  # first loss
        assert job.attempt == 5
        jobstate.transition(s, job, S.ADMITTED, expected_version=job.version)
        jobstate.transition(s, job, S.LOST, expected_version=job.version)
        assert jobstate.requeue_or_fail(s, job, expected_version=job.version) is S.FAILED  # second loss
        s.commit()


def test_transition_refuses_user_owned_columns(engine):
    with Session(engine, expire_on_commit=False) as s:
        job = make_job(s)
        with pytest.raises(ValueError):
            jobstate.transition(s, job, S.ADMITTED, expected_version=1, command=["rm"])


def test_pending_reason_only_touches_pending_jobs_and_keeps_the_version(engine):
    with Session(engine, expire_on_commit=False) as s:
        p, r = make_job(s), make_job(s, S.RUNNING)
        assert jobstate.set_pending_reason(s, p.id, code="NO_CAPACITY", message="m", queue_position=1)
        assert not jobstate.set_pending_reason(s, r.id, code="NO_CAPACITY", message="m")
        s.commit()
        s.refresh(p)
        assert (p.pending_code, p.version) == ("NO_CAPACITY", 1)


def test_many_pending_reasons_are_written_as_given_to_pending_jobs_only(engine):
    """`set_pending_reasons` (one statement on PostgreSQL, an executemany on SQLite): every
    field as given, absent ones as their defaults (no position, no estimate), nested details
    and text that needs quoting intact, a job no longer PENDING untouched, versions kept."""
    with Session(engine, expire_on_commit=False) as s:
        a, b, c, r = make_job(s), make_job(s), make_job(s), make_job(s, S.RUNNING)
        s.commit()
        versions = {j.id: j.version for j in (a, b, c, r)}
        jobstate.set_pending_reasons(s, [
            {"job_id": a.id, "code": "NO_CAPACITY", "message": "needs 8 GPUs, 2 free 'here' \\ {x}",
             "details": {"requested": 8, "free": 2.5, "gpu_models": ["A100", "H100"], "nested": {"k": None}},
             "queue_position": 3, "estimated_start": 1_790_000_123.25},
            {"job_id": b.id, "code": "QUOTA_LIMIT", "message": "over quota", "details": {}},
            {"job_id": c.id, "code": "FRAGMENTED", "message": "", "details": {"free": 1},
             "queue_position": None, "estimated_start": 1_790_000_000},
            {"job_id": r.id, "code": "NO_CAPACITY", "message": "must not land", "details": {"x": 1}},
        ])
        s.commit()
    with Session(engine) as s:
        got = {j.id: j for j in s.exec(select(Job).where(Job.id.in_([a.id, b.id, c.id, r.id])))}
    ga, gb, gc, gr = got[a.id], got[b.id], got[c.id], got[r.id]
    assert (ga.pending_code, ga.pending_message, ga.queue_position, ga.estimated_start) == \
        ("NO_CAPACITY", "needs 8 GPUs, 2 free 'here' \\ {x}", 3, 1_790_000_123.25)
    assert ga.pending_details == {"requested": 8, "free": 2.5, "gpu_models": ["A100", "H100"], "nested": {"k": None}}
    assert (gb.pending_code, gb.pending_message, gb.pending_details, gb.queue_position, gb.estimated_start) == \
        ("QUOTA_LIMIT", "over quota", {}, None, None)
    assert (gc.pending_code, gc.pending_details, gc.queue_position, gc.estimated_start) == \
        ("FRAGMENTED", {"free": 1}, None, 1_790_000_000.0)
    assert gr.pending_code is None and gr.pending_message != "must not land"
    assert {j.id: j.version for j in (ga, gb, gc, gr)} == versions


def test_transition_many_applies_the_matching_moves_and_refuses_the_stale_one(engine):
    """One batch (on PostgreSQL: one locking read and one executemany; on SQLite: one by one):
    a move whose version is stale returns False and changes nothing, the others apply with
    their event, attempt row and in-memory object, as `transition` would."""
    with Session(engine, expire_on_commit=False) as s:
        jobs = [make_job(s) for _ in range(4)] + [make_job(s, S.RUNNING)]
        s.commit()
    with Session(engine, expire_on_commit=False) as s:
        s.add_all(jobs)
        stale = jobs[1]
        moves = [jobstate.Move(j, S.ADMITTED, j.version, fields={"flavor_pool": "innovation"}) for j in jobs[:4]]
        moves[1] = jobstate.Move(stale, S.ADMITTED, stale.version - 1)
        moves.append(jobstate.Move(jobs[4], S.SUCCEEDED, jobs[4].version, message="done", now=123.0,
                                   fields={"exit_code": 0}))
        assert jobstate.transition_many(s, moves, now=100.0) == [True, False, True, True, True]
        s.commit()
    with Session(engine) as s:
        rows = {j.id: s.get(Job, j.id) for j in jobs}
        assert [rows[j.id].status for j in jobs] == ["ADMITTED", "PENDING", "ADMITTED", "ADMITTED", "SUCCEEDED"]
        assert rows[jobs[0].id].admitted_at == 100.0 and rows[jobs[0].id].flavor_pool == "innovation"
        assert rows[jobs[4].id].finished_at == 123.0 and rows[jobs[4].id].exit_code == 0
        assert rows[stale.id].version == stale.version
        assert s.get(Attempt, (jobs[2].id, 1)).status == "ADMITTED"
        assert s.get(Attempt, (jobs[4].id, 1)).status == "SUCCEEDED"
        events = s.exec(select(JobEvent).where(JobEvent.job_id.in_([j.id for j in jobs]),
                                               JobEvent.to_status.in_(["ADMITTED", "SUCCEEDED"]),
                                               JobEvent.ts.in_([100.0, 123.0]))).all()
        assert sorted(e.job_id for e in events) == sorted(j.id for j in jobs if j is not stale)
    assert jobs[0].status == "ADMITTED" and stale.status == "PENDING"


def test_transition_many_refuses_an_edge_the_machine_lacks_before_writing(engine):
    with Session(engine, expire_on_commit=False) as s:
        a, b = make_job(s), make_job(s, S.SUCCEEDED)
        s.commit()
        with pytest.raises(InvalidTransition):
            jobstate.transition_many(s, [jobstate.Move(a, S.ADMITTED, a.version), jobstate.Move(b, S.RUNNING, b.version)])
        s.rollback()
        assert s.get(Job, a.id).status == "PENDING"
