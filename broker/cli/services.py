"""`broker services deploy|list|get|scale|rollout status|logs|delete`: services from a shell.

Human views by default, the API's JSON/YAML with `-o json|yaml`. A spec comes from a YAML or
JSON file (`deploy -f svc.yaml`, `broker.cli.specs`), with `--set` on top; deploying a name
that exists in the project changes it instead (image, command, env, probes: a new revision
rolled out one replica at a time; replicas: new bounds).
"""

from __future__ import annotations

import time
from typing import Optional

import typer

from broker.cli import common, render, specs
from broker.cli.common import JSON_FLAG, OUTPUT, TOKEN, URL, Output, emit, fail, fmt_of, run

app = typer.Typer(help="Deploy, scale, roll out and inspect inference services.", no_args_is_help=True,
                  rich_markup_mode=None)
rollout = typer.Typer(help="Rollouts of new revisions.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(rollout, name="rollout")

PROJECT = typer.Option(None, "--project", "-p", metavar="PROJECT", show_default=False,
                       help="The service's project (needed when two projects have a service of that name).")
SERVICE = typer.Argument(..., metavar="SERVICE", help="The service's name or id.")
CHANGEABLE = ("image", "command", "env", "readiness", "liveness", "replicas")


@app.command("deploy")
def deploy(file: str = typer.Option(..., "--file", "-f", metavar="FILE", help="The service spec, YAML or JSON ('-': stdin)."),
           sets: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", show_default=False,
                                                    help="Override one spec field (dotted). Repeatable."),
           output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Deploy a service, or change the one of that name (a new revision, rolled out)."""
    spec = specs.load(file)
    for s in sets or []:
        spec = specs.apply_set(spec, s)
    if not spec.get("name") or not spec.get("project"):
        fail("the spec needs a name and a project")
    with common.client(url, token) as c:
        existing = next((s for s in run(lambda: c.services(project=spec["project"])) if s["name"] == spec["name"]), None)
        if existing is None:
            out = run(lambda: c.deploy_service(spec))
        else:
            change = {k: spec[k] for k in CHANGEABLE if k in spec and spec[k] != existing["spec"].get(k)}
            out = run(lambda: c.update_service(existing["id"], **change)) if change else existing
    emit(out, fmt_of(output, as_json), lambda s: service_summary(s, time.time()))


@app.command("list")
def list_services(project: Optional[str] = typer.Option(None, "--project", "-p", metavar="PROJECT", show_default=False,
                                                        help="Only this project's services."),
                  output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Services: status, ready/desired replicas, revision, entry point."""
    with common.client(url, token) as c:
        items = run(lambda: c.services(project=project))
    emit({"items": items}, fmt_of(output, as_json), lambda d: services_table(d["items"]))


@app.command("get")
def get(service: str = SERVICE, project: Optional[str] = PROJECT, output: Output = OUTPUT,
        as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """A service with its replicas (node, health) and why it lacks any."""
    with common.client(url, token) as c:
        s = run(lambda: c.service(service, project=project))
        s["replica_list"] = run(lambda: c.service_replicas(s["id"]))
    emit(s, fmt_of(output, as_json), lambda x: service_summary(x, time.time()))


@app.command("scale")
def scale(service: str = SERVICE, replicas: int = typer.Argument(..., metavar="N", min=0),
          project: Optional[str] = PROJECT, output: Output = OUTPUT, as_json: bool = JSON_FLAG,
          url: str = URL, token: Optional[str] = TOKEN):
    """Set the desired replicas (within the service's min..max)."""
    with common.client(url, token) as c:
        out = run(lambda: c.scale_service(service, replicas, project=project))
    emit(out, fmt_of(output, as_json), lambda s: service_summary(s, time.time()))


@rollout.command("status")
def rollout_status(service: str = SERVICE, project: Optional[str] = PROJECT,
                   wait: bool = typer.Option(False, "--wait", help="Wait until the rollout ends (done or rolled back)."),
                   timeout: float = typer.Option(600.0, "--timeout", metavar="SECONDS", help="Give up waiting after this."),
                   output: Output = OUTPUT, as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Which revision the replicas run, and whether the newest one is rolled out or was rolled back."""
    deadline = time.monotonic() + timeout
    with common.client(url, token) as c:
        while True:
            s = run(lambda: c.service(service, project=project))
            reps = run(lambda: c.service_replicas(s["id"]))
            revs = run(lambda: c.service_revisions(s["id"]))
            st = rollout_state(s, reps, revs)
            if not wait or st["done"] or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    emit(st, fmt_of(output, as_json), lambda x: render.kv([(k, v) for k, v in x.items()]))
    if wait and not st["done"]:
        raise typer.Exit(1)
    if st.get("rolled_back"):
        raise typer.Exit(3)


@app.command("logs")
def logs(service: str = SERVICE, replica: str = typer.Option("0", "--replica", "-r", metavar="INDEX|JOB_ID",
                                                             help="The replica's index or job id."),
         project: Optional[str] = PROJECT, url: str = URL, token: Optional[str] = TOKEN):
    """One replica's log."""
    with common.client(url, token) as c:
        typer.echo(run(lambda: c.service_logs(service, replica, project=project)), nl=False)


@app.command("delete")
def delete(service: str = SERVICE, project: Optional[str] = PROJECT, output: Output = OUTPUT,
           as_json: bool = JSON_FLAG, url: str = URL, token: Optional[str] = TOKEN):
    """Delete: replicas drain and stop, then the service is gone."""
    with common.client(url, token) as c:
        out = run(lambda: c.delete_service(service, project=project))
    emit(out, fmt_of(output, as_json), lambda s: f"service {s['project']}/{s['name']} {s['status']}")


# ------------------------------------------------------------------ views
def services_table(items: list[dict]) -> str:
    rows = [(s["project"], s["name"], s["class"], s["status"], f"{s['replicas']['ready']}/{s['replicas']['desired']}",
             f"{s['replicas']['min']}-{s['replicas']['max']}", s["revision"], s["endpoint"],
             (s.get("pending_reason") or {}).get("code") or "") for s in items]
    return render.table(["PROJECT", "NAME", "CLASS", "STATUS", "READY", "MIN-MAX", "REV", "ENDPOINT", "WAITING"], rows,
                        right=["READY", "REV"])


def service_summary(s: dict, now: float) -> str:
    r = s["replicas"]
    pairs = [("service", f"{s['project']}/{s['name']} ({s['id']})"), ("class", s["class"]),
             ("status", s["status"] + (f": {s['message']}" if s.get("message") else "")),
             ("replicas", f"{r['ready']} ready of {r['desired']} desired (min {r['min']}, max {r['max']}), "
                          f"{r['running']} live"),
             ("revision", f"{s['revision']} (stable {s['stable_revision']})"), ("entry point", s["endpoint"])]
    if s.get("pending_reason"):
        pairs.append(("waiting", f"{s['pending_reason']['code']}: {s['pending_reason']['message']}"))
    text = render.kv(pairs)
    reps = s.get("replica_list")
    if reps:
        rows = [(x["index"], x["job_id"], x["revision"], x["status"], x["health"], x["node"] or "-",
                 f"{x['host']}:{x['port']}" if x["host"] else "-", "no" if not x["preemptible"] else "yes",
                 (x.get("pending_reason") or {}).get("message") or x.get("message") or "") for x in reps]
        text += "\n\n" + render.table(["#", "JOB", "REV", "STATUS", "HEALTH", "NODE", "ADDRESS", "PREEMPTIBLE", "NOTE"],
                                      rows, right=["#", "REV"])
    return text


def rollout_state(s: dict, reps: list[dict], revs: list[dict]) -> dict:
    newest = revs[0] if revs else {"number": s["revision"], "status": "active"}
    on = [x for x in reps if x["revision"] == s["revision"]]
    ready_new = sum(1 for x in on if x["ready"])
    rolled_back = newest["status"] == "rolled_back"
    done = rolled_back or (s["stable_revision"] == s["revision"] and len(reps) == len(on))
    return {"service": f"{s['project']}/{s['name']}", "revision": s["revision"], "newest": newest["number"],
            "stable": s["stable_revision"], "replicas_on_revision": f"{len(on)}/{len(reps)}",
            "ready_on_revision": ready_new, "rolled_back": rolled_back,
            "message": newest.get("message") or s.get("message") or "", "done": done}
