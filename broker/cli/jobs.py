"""`broker jobs submit|list|get|why|cancel|logs|events`: the REST API from a shell.

Human views by default (`broker.cli.render`), the API's JSON/YAML with `-o json|yaml`. Specs
come from YAML or JSON files (`-f`, `broker.cli.specs`), with options and `--set` on top.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

import typer

from broker.cli import common, render, specs
from broker.cli.common import INTERVAL, JSON_FLAG, OUTPUT, TOKEN, URL, WATCH, Output, emit, fail, fmt_of, run

app = typer.Typer(help="Submit, list, inspect and cancel jobs.", no_args_is_help=True, rich_markup_mode=None)

STATUSES = ("PENDING", "ADMITTED", "STARTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED", "LOST")

HINTS = {
    "QUOTA_LIMIT": "It would go above its project's or department's quota limit: wait for the "
                   "project's own jobs to end, ask for fewer GPUs, or ask an admin for a higher limit.",
    "BUDGET_EXHAUSTED": "The GPU-hour budget of this period is spent: it starts when the period "
                        "renews or an admin raises the budget (running jobs are not stopped).",
    "NO_CAPACITY": "No node has room for the gang right now: it starts when running jobs end.",
    "FRAGMENTED": "Enough GPUs are free in total, but not enough on single nodes for each worker: "
                  "fewer GPUs per worker (and more workers) may start sooner.",
    "GPU_MODEL_UNAVAILABLE": "No schedulable node has the GPU model asked for: drop or widen gpu_model.",
    "DATA_UNAVAILABLE": "None of the nodes that hold its datasets is ready: it starts when one is "
                        "(ask the dataset's admins where the data lives).",
    "WAITING_FOR_HIGHER_PRIORITY": "Jobs ahead of it in the fair-share order come first.",
    "BACKFILL_RESERVATION": "Free GPUs are reserved for a bigger job ahead of it; a shorter "
                            "max_runtime_s lets it backfill before that job starts.",
    "PREEMPTING": "Borrowed capacity is being taken back for it: it starts once those jobs stopped.",
    "NEVER_FITS": "No node of its pools could ever hold one worker: ask for fewer GPUs/CPUs/memory per worker.",
    "NOT_YET_CONSIDERED": "The scheduler has not looked at it yet (it does within seconds).",
}


@app.command("submit", context_settings={"allow_interspersed_args": False, "allow_extra_args": True,
                                         "ignore_unknown_options": True},
             options_metavar="[OPTIONS] [-- COMMAND ARGS...]")
def submit(
    ctx: typer.Context,
    file: Optional[str] = typer.Option(None, "--file", "-f", metavar="FILE", show_default=False,
                                       help="A job spec in YAML or JSON ('-' reads standard input); "
                                            "options given here override its fields."),
    sets: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", show_default=False,
                                             help="Override one spec field, dotted for nested ones: "
                                                  "--set resources.gpus=2. Repeatable."),
    project: Optional[str] = typer.Option(None, "--project", "-p", metavar="PROJECT", show_default=False,
                                          help="Project to submit into, e.g. ouh-liver."),
    name: Optional[str] = typer.Option(None, "--name", "-n", metavar="NAME", show_default=False,
                                       help="A short name (default: the command's program name)."),
    workload_class: Optional[str] = typer.Option(None, "--class", metavar="operation|innovation",
                                                 show_default=False,
                                                 help="Workload class (default innovation)."),
    image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE", show_default=False,
                                        help="Container image (needed with runtime container)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=0, metavar="N", show_default=False,
                                       help="GPUs per worker (default 0)."),
    cpus: Optional[float] = typer.Option(None, "--cpus", min=0, metavar="N", show_default=False,
                                         help="CPU cores per worker (default 1)."),
    memory_gb: Optional[float] = typer.Option(None, "--memory-gb", min=0, metavar="GIB", show_default=False,
                                              help="Memory per worker in GiB (default 1)."),
    gpu_model: Optional[str] = typer.Option(None, "--gpu-model", metavar="MODEL", show_default=False,
                                            help="Only this GPU model, e.g. A100."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, metavar="N", show_default=False,
                                          help="Gang size: all N workers start together or none (default 1)."),
    max_runtime_s: Optional[float] = typer.Option(None, "--max-runtime", min=0, metavar="SECONDS",
                                                  show_default=False,
                                                  help="Stopped after this many seconds (default 3600)."),
    priority: Optional[int] = typer.Option(None, "--priority", metavar="N", show_default=False,
                                           help="Order within the project, -1000..1000 (default 0)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", metavar="container|process", show_default=False,
                                          help="Run in a container, or as a host process where the "
                                               "project allows it (default container)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", min=0, metavar="N", show_default=False,
                                              help="Reruns after a lost attempt (node or runner gone) (default 3)."),
    env: Optional[list[str]] = typer.Option(None, "--env", "-e", metavar="KEY=VALUE", show_default=False,
                                            help="An environment variable for the workers. Repeatable."),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key", metavar="KEY", show_default=False,
                                                  help="Submitting again with the same key returns the "
                                                       "first job instead of a second one."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the job ends, printing each change; "
                                                    "exit 0 only if it succeeded."),
    timeout: float = typer.Option(24 * 3600.0, "--timeout", metavar="SECONDS",
                                  help="Stop waiting after this many seconds (the job goes on)."),
    output: Output = OUTPUT, as_json: bool = JSON_FLAG,
    url: str = URL, token: Optional[str] = TOKEN,
):
    """Submit a job from a spec file, options, or both; the job's command goes after --.

    \b
      broker jobs submit -f train.yaml --set resources.gpus=2
      broker jobs submit -p ouh-liver --image IMG --gpus 1 -- python train.py
    """
    fmt = fmt_of(output, as_json)
    command = list(ctx.args)
    if command and command[0].startswith("-"):
        fail(f"no such option: {command[0]} (the job's command goes after --)")
    try:
        spec = specs.load(file) if file else {}
        for s in sets or []:
            specs.apply_set(spec, s)
    except specs.SpecError as e:
        fail(str(e))
    bad = [e for e in env or [] if "=" not in e]
    if bad:
        fail(f"--env needs KEY=VALUE, got {bad[0]!r}")
    for key, value in (("project", project), ("name", name), ("class", workload_class), ("image", image),
                       ("workers", workers), ("max_runtime_s", max_runtime_s), ("priority", priority),
                       ("runtime", runtime), ("max_retries", max_retries), ("command", command or None)):
        if value is not None:
            spec[key] = value
    res = {k: v for k, v in (("gpus", gpus), ("cpus", cpus), ("memory_gb", memory_gb), ("gpu_model", gpu_model))
           if v is not None}
    if res:
        if not isinstance(spec.get("resources", {}), dict):
            fail("resources in the spec must be a mapping (gpus, cpus, memory_gb, gpu_model)")
        spec["resources"] = {**(spec.get("resources") or {}), **res}
    if env:
        spec["env"] = {**(spec.get("env") or {}), **dict(e.split("=", 1) for e in env)}
    if isinstance(spec.get("class"), str):
        spec["class"] = spec["class"].lower()
    if isinstance(spec.get("runtime"), str):
        spec["runtime"] = spec["runtime"].lower()
    cmd = spec.get("command")
    if isinstance(cmd, str):
        fail("command must be a list of arguments, e.g. [python, train.py], not one string")
    if not spec.get("name") and cmd:
        spec["name"] = str(cmd[0]).rsplit("/", 1)[-1]
    if not spec.get("project"):
        fail("which project? Give --project/-p or `project:` in the spec file")
    if not cmd:
        fail("no command: give it after -- (broker jobs submit ... -- python train.py) or as `command:` in the file")
    with common.client(url, token) as c:
        job = run(lambda: c.submit(spec, idempotency_key=idempotency_key))
        if not wait:
            if fmt == Output.table:
                typer.echo(f"submitted {job['id']} ({job['name']}) to {job['project']}: {job['status']}\n"
                           f"follow it: broker jobs get {job['id']} -w")
            else:
                common.out(job, fmt)
            return
        job = _wait(c, job["id"], timeout)
    emit(job, fmt, lambda j: render.job_summary(j, time.time()))
    if job["status"] != "SUCCEEDED":
        raise typer.Exit(1)


def _wait(c, job_id: str, timeout: float) -> dict:
    """Poll until the job ends, one line on stderr per change; Ctrl-C stops waiting, not the job."""
    typer.echo(f"waiting for {job_id} (Ctrl-C stops waiting; the job goes on)", err=True)
    try:
        return run(lambda: c.wait(job_id, timeout=timeout, poll_s=1.0,
                                  on_change=lambda j: typer.echo(render.job_line(j, time.time()), err=True)))
    except KeyboardInterrupt:
        typer.echo(f"\nstopped waiting; {job_id} goes on: broker jobs get {job_id}", err=True)
        raise typer.Exit(130)


def _statuses(status: Optional[str]) -> Optional[str]:
    if not status:
        return None
    wanted = [s.strip().upper() for s in status.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        fail(f"unknown status {bad[0].lower()!r}; one of {', '.join(s.lower() for s in STATUSES)}")
    return ",".join(wanted)


def _with_placements(c, items: list[dict]) -> list[dict]:
    """Active jobs' placements for the NODE column (the list route leaves them out): one read per
    active job on the page, none for pending or finished ones."""
    return [c.get(j["id"]) if j["status"] in render.ACTIVE else j for j in items]


@app.command("list")
def list_jobs(project: Optional[str] = typer.Option(None, "--project", "-p", metavar="PROJECT", show_default=False,
                                                    help="Only these projects (comma-separated)."),
              status: Optional[str] = typer.Option(None, "--status", "-s", metavar="STATUS", show_default=False,
                                                   help="Only these statuses, any case, comma-separated: "
                                                        "pending,running,..."),
              limit: int = typer.Option(50, "--limit", min=1, max=500, metavar="N", help="At most N jobs, newest first."),
              output: Output = OUTPUT, as_json: bool = JSON_FLAG, watch: bool = WATCH, interval: float = INTERVAL,
              url: str = URL, token: Optional[str] = TOKEN):
    """List jobs, newest first: GPUS is the whole gang's, START is when it started or is expected to."""
    fmt = fmt_of(output, as_json)
    statuses = _statuses(status)
    with common.client(url, token) as c:
        def page() -> dict:
            return run(lambda: c.list(project=project, status=statuses, limit=limit))

        if watch:
            common.watch(lambda: render.jobs_table(run(lambda: _with_placements(c, page()["items"])), time.time()),
                         interval)
            return
        data = page()
        if fmt == Output.table:
            typer.echo(render.jobs_table(run(lambda: _with_placements(c, data["items"])), time.time()))
        else:
            common.out(data, fmt)


@app.command("get")
def get(job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job's id."),
        output: Output = OUTPUT, as_json: bool = JSON_FLAG, watch: bool = WATCH, interval: float = INTERVAL,
        url: str = URL, token: Optional[str] = TOKEN):
    """Show one job: status, why it waits, expected start, placements, attempts."""
    fmt = fmt_of(output, as_json)
    with common.client(url, token) as c:
        if watch:
            last: dict = {}

            def frame() -> str:
                last["job"] = run(lambda: c.get(job_id))
                return render.job_summary(last["job"], time.time())

            common.watch(frame, interval, until=lambda: last["job"]["status"] in render.TERMINAL)
            return
        emit(run(lambda: c.get(job_id)), fmt, lambda j: render.job_summary(j, time.time()))


@app.command("why")
def why(job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job's id."),
        url: str = URL, token: Optional[str] = TOKEN):
    """Why a job is not running, in plain words, with the numbers behind it and what would help."""
    with common.client(url, token) as c:
        j = run(lambda: c.get(job_id))
    typer.echo(explain(j, time.time()))


def explain(j: dict, now: float) -> str:
    st = j["status"]
    if st != "PENDING":
        where = render.job_nodes(j)
        state = {"RUNNING": "is running", "STARTING": "is starting", "ADMITTED": "was admitted and starts now",
                 "PREEMPTED": "is being preempted", "LOST": "lost its workers and will be retried or fail"}
        text = f"{j['id']} {state.get(st, 'has ended: ' + st)}" + (f" on {where}" if where else "") + "."
        return text + (f"\n{j['message']}" if j.get("message") else "")
    pr = j.get("pending_reason") or {"code": "NOT_YET_CONSIDERED"}
    lines = [f"{j['id']} waits: {render.waiting_sentence(j)}"]
    if j.get("queue_position"):
        lines.append(f"It is number {j['queue_position']} in the queue.")
    if j.get("estimated_start"):
        lines.append(f"Expected to start {render.until(j['estimated_start'], now)} "
                     f"(about {render.clock(j['estimated_start'], now)}).")
    details = pr.get("details") or {}
    if details:
        lines.append("")
        lines.append(render.kv(_detail(k, v) for k, v in details.items()))
    hint = HINTS.get(pr.get("code", ""))
    if hint:
        lines += ["", f"What helps: {hint}"]
    return "\n".join(lines)


def _detail(key: str, value) -> tuple[str, str]:
    """One detail of a pending reason in words: `lost_work_s: 9107` -> ("lost work", "2 h 31 min")."""
    if key.endswith("_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return key[:-2].replace("_", " "), render.duration(value)
    return key.replace("_", " "), _plain(value)


def _plain(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_plain(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_plain(x) for x in v)
    if isinstance(v, float):
        return render.num(v)
    return str(v)


@app.command("cancel")
def cancel(job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job's id."),
           output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Cancel a job (a running one stops within the grace period)."""
    with common.client(url, token) as c:
        emit(run(lambda: c.cancel(job_id)), fmt_of(output, as_json), lambda j: render.job_summary(j, time.time()))


@app.command("logs")
def logs(job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job's id."),
         worker: int = typer.Option(0, "--worker", "-w", min=0, metavar="RANK", help="Which worker of the gang."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the attempt ends."),
         url: str = URL, token: Optional[str] = TOKEN):
    """Print a worker's log; --follow streams until the attempt ends."""
    with common.client(url, token) as c:
        if follow:
            def stream():
                for chunk in c.follow_logs(job_id, worker=worker):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            try:
                run(stream)
            except KeyboardInterrupt:
                pass
        else:
            typer.echo(run(lambda: c.logs(job_id, worker=worker)), nl=False)


@app.command("events")
def events(job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job's id."),
           output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """The job's event log (submitted, transitions, cancel requests)."""
    fmt = fmt_of(output, as_json)
    with common.client(url, token) as c:
        items = run(lambda: c.events(job_id))
    if fmt != Output.table:
        common.out(items, fmt)
        return
    rows = [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])), e["kind"],
             f"{e['from_status'] or '-'} -> {e['to_status']}" if e["to_status"] else "", e["message"])
            for e in items]
    typer.echo(render.table(("TIME", "EVENT", "TRANSITION", "MESSAGE"), rows))
