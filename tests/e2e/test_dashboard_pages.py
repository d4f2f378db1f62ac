"""Every dashboard page in a real browser (Debian chromium, headless, over DevTools), for a
platform-admin and for a member of one project.

A broker API serves the seeded SQLite region of `served` plus the dashboards' world
(`tests.dashboard_seed`: a running job of ouh-liver on inno-1, one of slb-cardio on op-1, pending
jobs of both, a finished job with a preempted attempt, 90 minutes of GPU rollups, pool rollups
folded). Each page must render its data with no console error (exceptions, console.error, failed
loads), and the member's pages must never name another project's job. Screenshots go to
test-artifacts/dashboard/ (ignored by git) for people to look at.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from broker.db import make_engine
from broker.services.dashboards_rollup import run_pool_rollups
from broker.settings import Settings
from tests.dashboard_seed import seed_world
from tests.e2e.test_dashboard_browser import CHROMIUM

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it as root)")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@pytest.fixture(scope="module")
def site(served):
    url, admin, data = served
    engine = make_engine(Settings(data_dir=data))
    world = seed_world(engine, time.time(), own=("ouh", "ouh-liver"), foreign=("slb", "slb-cardio"),
                       own_gpus=("inno-1", [0, 1]), foreign_gpus=("op-1", [0, 1, 2]), idle_gpu=("inno-1", 3),
                       minutes=90)
    run_pool_rollups(engine, world.now)
    engine.dispose()
    h = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=url, headers=h, timeout=30) as c:
        assert c.post("/api/v1/admin/users", json={"id": "alice-e2e"}).status_code == 201
        assert c.post("/api/v1/projects/ouh-liver/members", json={"user": "alice-e2e", "role": "member"}).status_code == 201
        member = c.post("/api/v1/admin/tokens", json={"name": "alice-e2e", "user": "alice-e2e"}).json()["token"]
    return url, {"admin": admin, "member": member}, world


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from tests.e2e.cdp import Chromium

    with Chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def _open(browser, site, role, path, name):
    url, tokens, _ = site
    page = browser.page()
    page.visit(f"{url}{path}#token={tokens[role]}")
    page.screenshot(ARTIFACTS / f"{role}-{name}.png")
    return page


def _count(page, selector) -> int:
    return page.evaluate(f"document.querySelectorAll({selector!r}).length")


def _html(page) -> str:
    return page.evaluate("document.documentElement.outerHTML")


PAGES = [("overview", "/dashboard"), ("nodes", "/dashboard/nodes"), ("queue", "/dashboard/queue"),
         ("projects", "/dashboard/projects"), ("job", "/dashboard/jobs/{ja}")]


@pytest.mark.parametrize("role", ["admin", "member"])
@pytest.mark.parametrize("name,path", PAGES, ids=[p[0] for p in PAGES])
def test_page_loads_without_console_errors(browser, site, role, name, path):
    world = site[2]
    page = _open(browser, site, role, path.format(ja=world.ja), name)
    assert page.errors == []
    assert page.evaluate("document.getElementById('error').textContent") == ""
    assert page.evaluate("document.getElementById('login').hidden") is True
    html = _html(page)
    if role == "member":  # never another project's job, on any page
        for foreign in (world.jb, world.jd):
            assert foreign not in html, f"{name} shows a foreign job to a member"
    check = CHECKS[name]
    check(page, role, world)
    assert (ARTIFACTS / f"{role}-{name}.png").stat().st_size > 10_000


def _overview(page, role, world):
    assert _count(page, "[data-history-pool]") == 2  # innovation and operation
    assert _count(page, ".uplot canvas") >= 2
    assert page.evaluate("document.querySelector('[data-k=GPUs]').textContent") == "12"


def _nodes(page, role, world):
    assert _count(page, ".cell") == 12
    if role == "admin":
        assert _count(page, ".cell.mine") == 5 and _count(page, ".cell.foreign") == 0
    else:
        assert _count(page, ".cell.mine") == 2 and _count(page, ".cell.foreign") == 3
    assert page.evaluate("document.querySelector('[data-node=op-1]').dataset.state") == "draining"
    assert _count(page, f"[data-job='{world.ja}']") == 1


def _queue(page, role, world):
    jobs = page.evaluate("[...document.querySelectorAll('#jobs tr[data-job]')].map(r => r.dataset.job)")
    assert world.jc in jobs
    assert (world.jd in jobs) == (role == "admin")


def _projects(page, role, world):
    projects = set(page.evaluate("[...document.querySelectorAll('#quota tr[data-project]')].map(r => r.dataset.project)"))
    assert "ouh-liver" in projects
    assert ("slb-cardio" in projects) == (role == "admin")
    assert _count(page, "#burn .uplot") >= 1


def _job(page, role, world):
    assert _count(page, ".timeline i") >= 2
    assert _count(page, ".uplot") == 2  # utilization and memory
    assert _count(page, "#show-log") == 1  # members may read their project's logs


CHECKS = {"overview": _overview, "nodes": _nodes, "queue": _queue, "projects": _projects, "job": _job}


def test_a_member_opening_a_foreign_jobs_page_learns_nothing(browser, site):
    world = site[2]
    page = _open(browser, site, "member", f"/dashboard/jobs/{world.jb}", "foreign-job")
    err = page.evaluate("document.getElementById('error').textContent")
    assert "not found" in err
    html = _html(page)
    assert f"name-{world.jb}" not in html and "slb-cardio" not in html
    assert page.errors and all("404" in e for e in page.errors), page.errors  # only the refused API call


def test_logs_are_read_only_when_asked_and_a_refusal_is_shown(browser, site):
    """The job page reads no log until the user asks; this broker has no executor, so the read
    is refused (503 NO_EXECUTOR) and the page says why instead of failing."""
    world = site[2]
    page = _open(browser, site, "member", f"/dashboard/jobs/{world.ja}", "job-logs")
    assert page.errors == [] and page.evaluate("document.getElementById('log').hidden") is True
    page.evaluate("document.getElementById('show-log').click()")
    deadline = 50
    while deadline and not page.evaluate("document.getElementById('log').textContent"):
        browser.pump(0.1)
        deadline -= 1
    assert page.evaluate("document.getElementById('log').textContent").startswith("could not read the log: logs are")
    assert page.errors and all("503" in e for e in page.errors), page.errors


def _recorded_history(data_dir, now: float, n: int = 6) -> None:
    """Finished 4-GPU jobs of ouh-liver over the last hours, each with its closed ledger row:
    what a what-if replays (the dashboards' world has none)."""
    from sqlmodel import Session

    from broker.models import Job, Ledger

    engine = make_engine(Settings(data_dir=data_dir))
    with Session(engine) as s:
        for i in range(n):
            submit, start = now - 3600.0 * (i + 2), now - 3600.0 * (i + 2) + 120.0 * i
            s.add(Job(id=f"cap-{i}", project_id="ouh-liver", name=f"cap-{i}", gpus=4, workers=1, status="SUCCEEDED",
                      submit_time=submit, created_at=submit, admitted_at=start, started_at=start,
                      finished_at=start + 1800.0, max_runtime_s=3600.0, command=["run"]))
            s.flush()
            s.add(Ledger(job_id=f"cap-{i}", attempt=1, project_id="ouh-liver", department_id="ouh", pool="innovation",
                         gpu_model="A100", gpus=4, started_at=start, ended_at=start + 1800.0,
                         allocated_gpu_s=4 * 1800.0))
        s.commit()
    engine.dispose()


def test_capacity_what_if_runs_from_the_page_for_an_admin(browser, site, served):
    """An admin replays the last week on today's inventory plus one 8-GPU node: the page follows
    the background run to its end and shows recorded / before / after, the waits per department
    and the queue chart, with no console error."""
    _recorded_history(served[2], time.time())
    page = _open(browser, site, "admin", "/dashboard/capacity", "capacity")
    assert page.errors == [] and page.evaluate("document.getElementById('error').textContent") == ""
    page.evaluate("document.getElementById('weeks').value = '1';"
                  "document.getElementById('add').value = 'pool=innovation,model=A100,gpus_per_node=8,nodes=1';"
                  "document.getElementById('run').click()")
    for _ in range(600):
        if page.evaluate("document.body.dataset.run") in ("done", "failed"):
            break
        browser.pump(0.1)
    assert page.evaluate("document.body.dataset.run") == "done", page.evaluate("document.getElementById('progress').textContent")
    gpus = page.evaluate("[...document.querySelectorAll('#summary tr[data-row]')]"
                         ".map(r => [r.dataset.row, r.children[1].textContent])")
    assert [g[0] for g in gpus] == ["recorded", "before", "after"]
    assert int(gpus[2][1]) == int(gpus[1][1]) + 8
    assert _count(page, "#departments tr[data-department]") >= 1
    assert _count(page, "#queue-chart .uplot") == 1
    assert _count(page, "#runs tr[data-run]") >= 1
    assert page.errors == []
    page.screenshot(ARTIFACTS / "admin-capacity-done.png")


def test_capacity_page_tells_a_member_it_is_for_admins(browser, site):
    page = _open(browser, site, "member", "/dashboard/capacity", "capacity")
    assert "Could not load the what-if runs" in page.evaluate("document.getElementById('error').textContent")
    assert page.errors and all("403" in e for e in page.errors), page.errors
