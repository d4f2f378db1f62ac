"""`broker jobs submit|list|get|cancel|logs|events`: the REST API from a shell."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from broker.cli import common
from broker.cli.common import TOKEN, URL, out, run

app = typer.Typer(help="Submit, list, inspect and cancel jobs.", no_args_is_help=True)


@app.command("submit", context_settings={"allow_interspersed_args": False})
def submit(
    command: list[str] = typer.Argument(None, help="the command, after --"),
    project: Optional[str] = typer.Option(None, "--project", "-p"),
    name: Optional[str] = typer.Option(None, "--name", "-n"),
    workload_class: str = typer.Option("innovation", "--class"),
    image: str = typer.Option("", "--image"),
    gpus: int = typer.Option(0, "--gpus"),
    cpus: float = typer.Option(1.0, "--cpus"),
    memory_gb: float = typer.Option(1.0, "--memory-gb"),
    gpu_model: Optional[str] = typer.Option(None, "--gpu-model"),
    workers: int = typer.Option(1, "--workers"),
    max_runtime_s: float = typer.Option(3600.0, "--max-runtime"),
    priority: int = typer.Option(0, "--priority"),
    runtime: str = typer.Option("container", "--runtime"),
    max_retries: int = typer.Option(3, "--max-retries"),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable"),
    file: Optional[typer.FileText] = typer.Option(None, "--file", "-f", help="a JSON job spec (fields override)"),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key"),
    wait: bool = typer.Option(False, "--wait", help="wait until the job ends"),
    url: str = URL, token: Optional[str] = TOKEN,
):
    """Submit a job: `broker jobs submit -p ouh-liver --image img --gpus 1 -- python train.py`."""
    spec = json.load(file) if file else {}
    bad = [e for e in env if "=" not in e]
    if bad:
        raise typer.BadParameter(f"--env needs KEY=VALUE, got {bad[0]!r}")
    spec.update({k: v for k, v in {
        "name": name or spec.get("name") or (command[0].rsplit("/", 1)[-1] if command else None),
        "project": project or spec.get("project"), "command": command or spec.get("command"),
    }.items() if v})
    spec.setdefault("class", workload_class)
    spec.setdefault("image", image)
    spec.setdefault("resources", {"gpus": gpus, "cpus": cpus, "memory_gb": memory_gb,
                                  **({"gpu_model": gpu_model} if gpu_model else {})})
    for k, v in (("workers", workers), ("max_runtime_s", max_runtime_s), ("priority", priority),
                 ("runtime", runtime), ("max_retries", max_retries)):
        spec.setdefault(k, v)
    if env:
        spec["env"] = {**spec.get("env", {}), **dict(e.split("=", 1) for e in env)}
    with common.client(url, token) as c:
        job = run(lambda: c.submit(spec, idempotency_key=idempotency_key))
        if wait:
            job = run(lambda: c.wait(job["id"]))
    out(job)
    if wait and job["status"] != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("list")
def list_jobs(project: Optional[str] = typer.Option(None, "--project", "-p"),
              status: Optional[str] = typer.Option(None, "--status", "-s"),
              limit: int = typer.Option(50, "--limit"), as_json: bool = typer.Option(False, "--json"),
              url: str = URL, token: Optional[str] = TOKEN):
    """List jobs, newest first."""
    with common.client(url, token) as c:
        page = run(lambda: c.list(project=project, status=status, limit=limit))
    if as_json:
        out(page)
        return
    typer.echo(f"{'ID':14} {'PROJECT':18} {'STATUS':10} {'GPUS':>4} {'WORKERS':>7}  NAME / PENDING REASON")
    for j in page["items"]:
        why = j["pending_reason"]["code"] if j.get("pending_reason") else ""
        typer.echo(f"{j['id']:14} {j['project']:18} {j['status']:10} {j['resources']['gpus']:>4} "
                   f"{j['workers']:>7}  {j['name']} {why}")


@app.command("get")
def get(job_id: str, url: str = URL, token: Optional[str] = TOKEN):
    """Show one job with its pending reason, attempts and placements."""
    with common.client(url, token) as c:
        out(run(lambda: c.get(job_id)))


@app.command("cancel")
def cancel(job_id: str, url: str = URL, token: Optional[str] = TOKEN):
    """Cancel a job (a running one stops within the grace period)."""
    with common.client(url, token) as c:
        out(run(lambda: c.cancel(job_id)))


@app.command("logs")
def logs(job_id: str, worker: int = typer.Option(0, "--worker", "-w"),
         follow: bool = typer.Option(False, "--follow", "-f"), url: str = URL, token: Optional[str] = TOKEN):
    """Print a worker's log; --follow streams until the attempt ends."""
    with common.client(url, token) as c:
        if follow:
            def stream():
                for chunk in c.follow_logs(job_id, worker=worker):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            run(stream)
        else:
            typer.echo(run(lambda: c.logs(job_id, worker=worker)), nl=False)


@app.command("events")
def events(job_id: str, url: str = URL, token: Optional[str] = TOKEN):
    """The job's event log (submitted, transitions, cancel requests)."""
    with common.client(url, token) as c:
        for e in run(lambda: c.events(job_id)):
            arrow = f"{e['from_status'] or '-'} -> {e['to_status']}" if e["to_status"] else ""
            typer.echo(f"{e['ts']:.3f} {e['kind']:18} {arrow:24} {e['message']}")
