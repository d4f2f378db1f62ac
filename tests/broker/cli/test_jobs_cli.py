"""`broker jobs`: spec files, help text, human views, machine output, watch mode.

Run in-process (typer's CliRunner) against the test app's API; jobs are moved through their
states with the state machine directly, so no scheduler or executor is needed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session

from broker import jobstate
from broker.cli import jobs as jobs_cli
from broker.models import Job, JobStatus, Placement
from tests.broker.conftest import job_body

YAML_SPEC = """\
name: liver-ddp
project: {project}
class: innovation
image: localhost/busybox:test
command: [/bin/busybox, echo, hi]
env:
  EPOCHS: "3"
resources:
  gpus: 2
  cpus: 4
  memory_gb: 16
workers: 2
max_runtime_s: 600
"""


def _submit_json(cli, *args) -> dict:
    r = cli("jobs", "submit", "-o", "json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _running(engine, job_id: str, nodes=("inno-1",)) -> None:
    with Session(engine) as s:
        row = s.get(Job, job_id)
        assert jobstate.transition(s, row, JobStatus.ADMITTED, expected_version=row.version)
        for rank, node in enumerate(nodes):
            s.add(Placement(job_id=job_id, attempt=1, rank=rank, node_id=node, gpu_indices=[0, 1],
                            cuda_visible_devices="0,1"))
        assert jobstate.transition(s, row, JobStatus.RUNNING, expected_version=row.version)
        s.commit()


def _pending_reason(engine, job_id: str, **kw) -> None:
    with Session(engine) as s:
        jobstate.set_pending_reason(s, job_id, **kw)
        s.commit()


# -- spec files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix,dump", [
    ("yaml", lambda spec: spec),
    ("yml", lambda spec: spec),
    ("json", lambda spec: json.dumps(yaml.safe_load(spec))),
], ids=["yaml", "yml", "json"])
def test_submit_from_a_spec_file_round_trips(cli, new_project, tmp_path, suffix, dump):
    p = new_project()
    f = tmp_path / f"train.{suffix}"
    f.write_text(dump(YAML_SPEC.format(project=p)))
    job = _submit_json(cli, "-f", str(f))
    assert (job["name"], job["project"], job["workers"], job["resources"]["gpus"], job["env"]) == \
        ("liver-ddp", p, 2, 2, {"EPOCHS": "3"})
    assert job["command"] == ["/bin/busybox", "echo", "hi"] and job["max_runtime_s"] == 600


def test_options_and_set_override_the_file(cli, new_project, tmp_path):
    p = new_project()
    f = tmp_path / "train.yaml"
    f.write_text(YAML_SPEC.format(project=p))
    job = _submit_json(cli, "-f", str(f), "--set", "resources.gpus=1", "--set", "env.EPOCHS=5",
                       "--set", "name=short", "--workers", "1", "-e", "X=y", "--", "/bin/busybox", "true")
    assert (job["name"], job["workers"], job["resources"]["gpus"], job["resources"]["cpus"]) == ("short", 1, 1, 4)
    assert job["env"] == {"EPOCHS": "5", "X": "y"} and job["command"] == ["/bin/busybox", "true"]


def test_spec_from_stdin(cli, new_project):
    p = new_project()
    r = cli("jobs", "submit", "-o", "json", "-f", "-", input=YAML_SPEC.format(project=p))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["project"] == p


BAD_FILES = [
    ("yaml-syntax", "train.yaml", "name: a\ncommand: [x, y\nproject: p\n", r"train\.yaml:3:\d+: not valid YAML"),
    ("yaml-tab", "train.yaml", "name: a\n\tproject: p\n", r"train\.yaml:2:1: not valid YAML"),
    ("json-syntax", "train.json", '{\n  "name": "a",\n  "project": \n}', r"train\.json:4:1: not valid JSON"),
    ("not-a-mapping", "train.yaml", "- a\n- b\n", r"a job spec is a mapping of fields"),
    ("empty", "train.yaml", "", r"the file is empty"),
    ("command-as-string", "train.yaml", "project: ouh-liver\ncommand: python train.py\n",
     r"command must be a list"),
    ("no-project", "train.yaml", "command: [x]\n", r"which project\?"),
]


@pytest.mark.parametrize("fname,text,expect", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_a_bad_spec_file_is_one_clear_error(cli, tmp_path, fname, text, expect):
    f = tmp_path / fname
    f.write_text(text)
    r = cli("jobs", "submit", "-f", str(f))
    assert r.exit_code == 2 and re.search(expect, r.output), r.output
    assert "Traceback" not in r.output


BAD_ARGS = [
    ("missing-file", ["jobs", "submit", "-f", "/nonexistent/train.yaml"], "no such file"),
    ("bad-set", ["jobs", "submit", "-p", "ouh-liver", "--set", "gpus", "--", "x"], "--set needs KEY=VALUE"),
    ("bad-env", ["jobs", "submit", "-p", "ouh-liver", "-e", "A", "--", "x"], "--env needs KEY=VALUE"),
    ("no-command", ["jobs", "submit", "-p", "ouh-liver"], "no command"),
    ("bad-status", ["jobs", "list", "-s", "sleeping"], "unknown status 'sleeping'"),
    ("bad-output", ["jobs", "list", "-o", "xml"], "Invalid value"),
    ("unknown-job", ["jobs", "get", "nope"], "JOB_NOT_FOUND"),
]


@pytest.mark.parametrize("args,expect", [b[1:] for b in BAD_ARGS], ids=[b[0] for b in BAD_ARGS])
def test_bad_input_is_a_clear_error_never_a_traceback(cli, args, expect):
    r = cli(*args)
    assert r.exit_code == 2 and expect in r.output, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)


def test_an_unreachable_broker_is_one_line(monkeypatch):
    from typer.testing import CliRunner

    from broker.cli import app

    r = CliRunner().invoke(app, ["jobs", "list", "--url", "http://127.0.0.1:9", "--token", "t"])
    assert r.exit_code == 2 and "cannot reach http://127.0.0.1:9" in r.output and "Traceback" not in r.output


COMMANDS = ["submit", "list", "get", "why", "cancel", "logs", "events"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_no_python_types(cli, command):
    import click
    import typer.main

    from broker.cli import app

    group = typer.main.get_command(app).commands["jobs"]
    cmd = group.commands[command]
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{command} {param.opts} has no help"
    text = cli("jobs", command, "--help").output
    assert not re.search(r"<\w+(\[.*?\])?>|FileText|list\[str\]|NoneType", text), text


# -- views --------------------------------------------------------------------------------------
def test_list_has_aligned_columns_and_gang_gpus(cli, client, engine, new_project):
    p = new_project()
    gang = client.post("/api/v1/jobs", json=job_body(project=p, gpus=2, workers=2, name="gang")).json()
    run = client.post("/api/v1/jobs", json=job_body(project=p, gpus=1, name="runs")).json()
    _running(engine, run["id"], nodes=("inno-2",))
    _pending_reason(engine, gang["id"], code="NO_CAPACITY", message="no node has 2 free GPUs",
                    details={}, queue_position=1, estimated_start=time.time() + 725)
    r = cli("jobs", "list", "-p", p)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    header = lines[0].split()
    assert header == ["ID", "NAME", "PROJECT", "STATUS", "GPUS", "WORKERS", "AGE", "START", "RUNTIME", "NODE", "REASON"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    # every column starts where its header starts
    for col in ("NAME", "PROJECT", "STATUS"):
        assert {ln.index(ln.split()[header.index(col)]) for ln in lines[1:]} == {lines[0].index(col)}
    assert re.search(r"PENDING\s+4\s+2\s+\d+ s ago\s+in ~12 min\s+NO_CAPACITY", rows[gang["id"]])
    assert re.search(r"RUNNING\s+1\s+1\s+\d+ s ago\s+\d+ s ago\s+\d+ s\s+inno-2", rows[run["id"]])


@pytest.mark.parametrize("flag", ["pending", "PENDING", "Pending", "pending,running"])
def test_status_filter_is_case_insensitive(cli, client, engine, new_project, flag):
    p = new_project()
    j = client.post("/api/v1/jobs", json=job_body(project=p)).json()
    r = cli("jobs", "list", "-p", p, "-s", flag, "-o", "json")
    assert r.exit_code == 0, r.output
    assert [x["id"] for x in json.loads(r.stdout)["items"]] == [j["id"]]


@pytest.mark.parametrize("fmt,parse", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_machine_output_is_the_api_shape(cli, client, fmt, parse):
    j = client.post("/api/v1/jobs", json=job_body()).json()
    for args in (["get", j["id"]], ["list", "-p", "ouh-liver", "--limit", "1"], ["events", j["id"]]):
        r = cli("jobs", *args, "-o", fmt)
        assert r.exit_code == 0, r.output
        data = parse(r.stdout)
        assert data  # parses, and is not empty
    assert parse(cli("jobs", "get", j["id"], "-o", fmt).stdout)["id"] == j["id"]


def test_get_pending_says_why_and_when_in_local_time(cli, client, engine):
    j = client.post("/api/v1/jobs", json=job_body(gpus=2, workers=2)).json()
    eta = time.time() + 12 * 60 + 30
    _pending_reason(engine, j["id"], code="QUOTA_LIMIT", message="ouh-liver would use 4 of its limit 2 GPUs",
                    details={"limit": 2, "in_use": 0}, queue_position=3, estimated_start=eta)
    r = cli("jobs", "get", j["id"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert re.search(r"Status:\s+PENDING for \d+ s, position 3 in the queue", out), out
    assert "Why:" in out and "ouh-liver would use 4 of its limit 2 GPUs." in out
    assert f"{time.strftime('%H:%M', time.localtime(eta))} (in ~12 min)" in out
    assert "2 workers x (2 GPU, 2 CPU, 8 GiB) = 4 GPUs" in out
    assert "{" not in out and "1796" not in out  # no raw JSON, no epoch floats
    why = cli("jobs", "why", j["id"]).output
    assert "waits: ouh-liver would use 4" in why and "number 3 in the queue" in why
    assert "limit:" in why and "What helps:" in why


def test_get_running_shows_placements_and_attempts(cli, client, engine):
    j = client.post("/api/v1/jobs", json=job_body(workers=2, gpus=2)).json()
    _running(engine, j["id"], nodes=("inno-1", "inno-2"))
    out = cli("jobs", "get", j["id"]).output
    assert re.search(r"RANK\s+NODE\s+GPUS\n0\s+inno-1\s+0,1\n1\s+inno-2\s+0,1", out), out
    assert re.search(r"ATTEMPT\s+STATUS", out) and "RUNNING for" in out
    assert "is running on inno-1,inno-2" in cli("jobs", "why", j["id"]).output


def test_a_cancelled_job_shows_no_stale_pending_state(cli, client, engine):
    j = client.post("/api/v1/jobs", json=job_body()).json()
    _pending_reason(engine, j["id"], code="NO_CAPACITY", message="busy", details={}, queue_position=2,
                    estimated_start=time.time() + 60)
    r = cli("jobs", "cancel", j["id"])
    assert r.exit_code == 0 and "CANCELLED" in r.output, r.output
    assert "Why" not in r.output and "Est. start" not in r.output and "queue" not in r.output
    g = client.get(f"/api/v1/jobs/{j['id']}").json()
    assert (g["pending_reason"], g["queue_position"], g["estimated_start"]) == (None, None, None)
    listed = [x for x in client.get("/api/v1/jobs", params={"status": "CANCELLED", "limit": 500}).json()["items"]
              if x["id"] == j["id"]]
    assert listed and listed[0]["pending_reason"] is None


# -- live views and waiting ---------------------------------------------------------------------
@pytest.mark.parametrize("args", [["list", "-w", "--interval", "1"], ["get", "{id}", "-w"]], ids=["list", "get"])
def test_watch_redraws_and_ctrl_c_ends_cleanly(cli, client, monkeypatch, args):
    j = client.post("/api/v1/jobs", json=job_body()).json()
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("broker.cli.common.pause", sleep)
    r = cli("jobs", *[a.format(id=j["id"]) for a in args])
    assert r.exit_code == 0, r.output
    assert r.output.count("(Ctrl-C to stop)") == 2 and j["id"] in r.output and "Traceback" not in r.output


def test_get_watch_stops_when_the_job_ends(cli, client, monkeypatch):
    j = client.post("/api/v1/jobs", json=job_body()).json()
    client.post(f"/api/v1/jobs/{j['id']}/cancel")
    monkeypatch.setattr("broker.cli.common.pause", lambda s: pytest.fail("no redraw after the end"))
    r = cli("jobs", "get", j["id"], "-w")
    assert r.exit_code == 0 and "CANCELLED" in r.output


def test_submit_wait_prints_progress_and_the_summary(cli, engine, new_project, monkeypatch):
    p = new_project()
    polls = []

    def sleep(s):
        polls.append(s)
        job_id = re.search(r"waiting for (\w+)", "".join(seen)).group(1) if seen else None
        with Session(engine) as s_:
            row = s_.get(Job, job_id)
            nxt = {JobStatus.PENDING: JobStatus.ADMITTED, JobStatus.ADMITTED: JobStatus.RUNNING,
                   JobStatus.RUNNING: JobStatus.SUCCEEDED}[JobStatus(row.status)]
            assert jobstate.transition(s_, row, nxt, expected_version=row.version)
            s_.commit()

    seen: list[str] = []
    import typer

    real_echo = typer.echo

    def echo(msg="", *a, **kw):
        seen.append(str(msg))
        real_echo(msg, *a, **kw)

    monkeypatch.setattr("broker.client.pause", sleep)
    monkeypatch.setattr(jobs_cli.typer, "echo", echo)
    r = cli("jobs", "submit", "-p", p, "--wait", "--image", "localhost/img", "--", "x")
    assert r.exit_code == 0, r.output
    states = [ln.split()[1] for ln in r.output.splitlines() if re.match(r"\d\d:\d\d:\d\d  ", ln)]
    assert states == ["PENDING", "ADMITTED", "RUNNING", "SUCCEEDED"], r.output
    assert re.search(r"Status:\s+SUCCEEDED", r.output)


def test_explain_names_a_hint_for_every_reason_code():
    from scheduler.model import ReasonCode

    for code in ReasonCode:
        assert code.value in jobs_cli.HINTS, code


def test_the_rest_status_filter_is_case_insensitive_too(client, new_project):
    p = new_project()
    j = client.post("/api/v1/jobs", json=job_body(project=p)).json()
    r = client.get("/api/v1/jobs", params={"project": p, "status": "pending"})
    assert r.status_code == 200 and [x["id"] for x in r.json()["items"]] == [j["id"]]


EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.*"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_is_accepted_as_it_is(cli, example):
    job = _submit_json(cli, "-f", str(example))
    spec = yaml.safe_load(example.read_text())
    assert (job["name"], job["project"], job["status"]) == (spec["name"], spec["project"], "PENDING")


DETAILS = [
    ("field-list-said-in-message", {"fields": [{"field": "a", "message": "bad"}]}, "invalid: a: bad", []),
    ("field-list-new", {"problems": [{"field": "image", "message": "not qualified"}]}, "invalid",
     ["  image: not qualified"]),
    ("numbers", {"limit": 2, "flavor": {"pool": "innovation"}}, "over", ["  limit: 2", '  flavor: {"pool": "innovation"}']),
    ("none", None, "x", []),
]


@pytest.mark.parametrize("details,message,lines", [d[1:] for d in DETAILS], ids=[d[0] for d in DETAILS])
def test_error_details_are_lines_not_json(details, message, lines):
    from broker.cli.common import detail_lines

    assert detail_lines(details, message) == lines


def test_an_api_refusal_reads_as_sentences(cli, tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("project: ouh-liver\ncommand: [x]\nresources: {gpus: two}\nworkerz: 2\n")
    r = cli("jobs", "submit", "-f", str(f))
    assert r.exit_code == 2 and "VALIDATION_ERROR" in r.output and "resources.gpus" in r.output, r.output
    assert "{" not in r.output
