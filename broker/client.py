"""A small Python client for the broker's REST API (httpx).

    c = BrokerClient()                  # $BROKER_URL and $BROKER_TOKEN (or the token `broker up` wrote)
    job = c.submit(name="seg", project="ouh-liver", image="img", command=["python", "train.py"],
                   resources={"gpus": 1})
    done = c.wait(job["id"])            # until SUCCEEDED | FAILED | CANCELLED
    print(c.logs(job["id"]))
    c.usage("ouh-liver")                # entitlement, usage, borrowing, budget

Every method returns the API's JSON as plain dicts and lists (the shapes are in `/openapi.json`),
so a script written against the REST documentation reads the same. Errors come back as
`BrokerAPIError` carrying the API's `code`, `message` and `details`. This module imports httpx
only, never the server, so scripts and the CLI start fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
DEFAULT_URL = "http://127.0.0.1:8000"



def pause(seconds: float) -> None:
    """The wait between two polls of `wait`/`wait_service` (tests replace this one function,
    never `time.sleep` itself, which every thread of the process shares)."""
    time.sleep(seconds)

class BrokerAPIError(Exception):
    """An error answer of the API: HTTP `status`, machine-readable `code`, `message`, `details`."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


def default_url() -> str:
    """$BROKER_URL, else the address `broker up` listens on by default."""
    return os.environ.get("BROKER_URL") or DEFAULT_URL


def default_token(data_dir: str | os.PathLike | None = None) -> str | None:
    """$BROKER_TOKEN, else the platform-admin token `broker up` wrote (`<data dir>/admin-token`).

    The data dir is `data_dir`, else $BROKER_DATA_DIR, else `.broker` in the current directory:
    the same place `broker up` writes to, so a shell in the checkout needs no set-up at all.
    """
    if os.environ.get("BROKER_TOKEN"):
        return os.environ["BROKER_TOKEN"].strip()
    p = Path(data_dir or os.environ.get("BROKER_DATA_DIR") or ".broker") / "admin-token"
    try:
        return p.read_text().strip() or None
    except OSError:
        return None


class BrokerClient:
    """One broker API endpoint with one token; use as a context manager or call `close()`."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 http: httpx.Client | None = None, data_dir: str | os.PathLike | None = None) -> None:
        """`url`/`token` default to `default_url()`/`default_token(data_dir)`.

        `http`: an existing httpx.Client to use (tests pass a TestClient); its base URL wins.
        """
        self.url = (url or default_url()).rstrip("/")
        token = token or default_token(data_dir)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if http is not None:
            http.headers.update(headers)
            self._http = http
        else:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool (the context manager does this)."""
        self._http.close()

    def __enter__(self) -> "BrokerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, spec: dict | None = None, *, idempotency_key: str | None = None, **fields: Any) -> dict:
        """Submit a job; returns it as stored (PENDING). Keyword fields override `spec`'s.

        `workload_class=` stands for the `class` field (a Python keyword). The same
        `idempotency_key` returns the first job again instead of a duplicate, so a retry after a
        network error is safe.
        """
        body = {**(spec or {}), **fields}
        if "workload_class" in body:
            body["class"] = body.pop("workload_class")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self._http.post("/api/v1/jobs", json=body, headers=headers))

    def get(self, job_id: str) -> dict:
        """One job with its pending reason, attempts, placements and (once admitted) GPU usage."""
        return self._json(self._http.get(f"/api/v1/jobs/{job_id}"))

    def list(self, *, project: str | None = None, status: str | None = None, limit: int = 100,
             cursor: str | None = None) -> dict:
        """One page of jobs, newest first: `{"items": [...], "next_cursor": ...}`.

        `project` and `status` take one value or several comma-separated; status in any case
        (`pending` is PENDING). Pass `next_cursor` back as `cursor` for the next page.
        """
        params = {"project": project, "status": status.upper() if status else None, "limit": limit,
                  "cursor": cursor}
        return self._json(self._http.get("/api/v1/jobs", params={k: v for k, v in params.items() if v is not None}))

    def iter_jobs(self, **filters: Any) -> Iterator[dict]:
        """Every job matching `filters` (as `list` takes them), following the cursor page by page."""
        cursor = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict:
        """Cancel a job: a pending one at once, a running one once its workers stopped (grace)."""
        return self._json(self._http.post(f"/api/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        """The job's event log (submitted, transitions, cancel requests) after event id `after`."""
        return self._json(self._http.get(f"/api/v1/jobs/{job_id}/events", params={"after": after}))["items"]

    def logs(self, job_id: str, *, worker: int = 0, attempt: int | None = None) -> str:
        """A worker's log so far (the latest attempt unless `attempt` is given)."""
        params = {"worker": worker, **({"attempt": attempt} if attempt else {})}
        r = self._http.get(f"/api/v1/jobs/{job_id}/logs", params=params)
        self._check(r)
        return r.text

    def follow_logs(self, job_id: str, *, worker: int = 0, attempt: int | None = None) -> Iterator[bytes]:
        """A worker's log as it is written, until the attempt ends (chunks of bytes)."""
        params = {"worker": worker, "follow": "true", **({"attempt": attempt} if attempt else {})}
        with self._http.stream("GET", f"/api/v1/jobs/{job_id}/logs", params=params, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            yield from r.iter_bytes()

    def wait(self, job_id: str, *, until: tuple[str, ...] = TERMINAL, timeout: float = 600.0,
             poll_s: float = 0.5, on_change: Callable[[dict], None] | None = None) -> dict:
        """Poll until the job's status is in `until`; TimeoutError after `timeout` seconds.

        `on_change(job)` is called with the first answer and whenever the status or the pending
        reason changed: progress output without a second poll loop.
        """
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            job = self.get(job_id)
            key = (job["status"], (job.get("pending_reason") or {}).get("code"))
            if on_change is not None and key != seen:
                on_change(job)
            seen = key
            if job["status"] in until:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g} s")
            pause(poll_s)

    # -- catalog ----------------------------------------------------------------------------
    def projects(self) -> list[dict]:
        """The projects you may see, with department, fair-share weight and budget."""
        return self._json(self._http.get("/api/v1/projects"))["items"]

    def project(self, project_id: str) -> dict:
        """One project as its admins see it (department, settings, limits)."""
        return self._json(self._http.get(f"/api/v1/projects/{project_id}"))

    def usage(self, project_id: str) -> dict:
        """A project's entitlement per flavor, usage, borrowing both ways, budget spent and left."""
        return self._json(self._http.get(f"/api/v1/projects/{project_id}/usage"))

    def nodes(self) -> list[dict]:
        """Nodes with pool, GPU model, capacity (GPUs, CPUs, memory) and state."""
        return self._json(self._http.get("/api/v1/nodes"))["items"]

    def update_node(self, node_id: str, **changes: Any) -> dict:
        """Platform-admins: pool=<name> | None, state='cordoned' | 'draining' | 'ready', reason=..."""
        return self._json(self._http.patch(f"/api/v1/nodes/{node_id}", json=changes))

    def pools(self) -> list[dict]:
        """Pools with their class, lending rule, nodes, GPUs, CPUs, memory and GPU models."""
        return self._json(self._http.get("/api/v1/pools"))["items"]

    def overview(self) -> dict:
        """Utilization: GPUs allocated versus used per pool, node and project, and queue health."""
        return self._json(self._http.get("/api/v1/overview"))

    # -- usage reports ----------------------------------------------------------------------
    def usage_report(self, *, group_by: str = "department", period: str = "month", start: str | None = None,
                     end: str | None = None, department: str | None = None, project: str | None = None,
                     csv: bool = False) -> Any:
        """Allocated / used / idle GPU-hours, energy, jobs, preemptions, waits and cost per group
        and period (dict, or the CSV text with csv=True). start/end: ISO dates or epoch seconds."""
        params = {k: v for k, v in {"group_by": group_by, "period": period, "from": start, "to": end,
                                    "department": department, "project": project,
                                    "format": "csv" if csv else None}.items() if v is not None}
        r = self._http.get("/api/v1/reports/usage", params=params)
        self._check(r)
        return r.text if csv else r.json()

    def statement(self, department: str, month: str, *, format: str = "json") -> Any:
        """A department's monthly statement (month 'YYYY-MM'): dict, or CSV / HTML text."""
        r = self._http.get("/api/v1/reports/statement", params={"department": department, "month": month,
                                                                "format": format})
        self._check(r)
        return r.json() if format == "json" else r.text

    def prices(self) -> list[dict]:
        """Prices per pool (GPU-hour, kWh, currency) that usage reports charge."""
        return self._json(self._http.get("/api/v1/reports/prices"))["items"]

    def set_price(self, pool: str, *, gpu_hour: float, kwh: float = 0.0, currency: str = "DKK") -> dict:
        """Platform-admins: a pool's price per GPU-hour and per kWh."""
        return self._json(self._http.put(f"/api/v1/reports/prices/{pool}",
                                         json={"gpu_hour": gpu_hour, "kwh": kwh, "currency": currency}))

    # -- capacity planning ------------------------------------------------------------------
    def capacity_trace(self, *, start: str | None = None, end: str | None = None) -> str:
        """Platform-admins and ops-viewers: the recorded history as canonical trace CSV."""
        params = {k: v for k, v in {"from": start, "to": end}.items() if v is not None}
        r = self._http.get("/api/v1/capacity/trace", params=params)
        self._check(r)
        return r.text

    def start_whatif(self, *, weeks: float = 4.0, add: list[str] = (), remove: list[str] = (),
                     quota_file: str | None = None) -> dict:
        """Start a what-if replay (a background run); returns the run with its id."""
        return self._json(self._http.post("/api/v1/capacity/whatif", json={
            "weeks": weeks, "add": list(add), "remove": list(remove), "quota_file": quota_file}))

    def whatif(self, run_id: str) -> dict:
        """A what-if run: status, phase, progress (0..1), then its result."""
        return self._json(self._http.get(f"/api/v1/capacity/whatif/{run_id}"))

    # -- services ---------------------------------------------------------------------------
    def deploy_service(self, spec: dict | None = None, **fields: Any) -> dict:
        """Deploy a service (the body of POST /api/v1/services: name, project, class, image,
        command, env, resources, replicas {min, max}, port, readiness, liveness, ...)."""
        return self._json(self._http.post("/api/v1/services", json={**(spec or {}), **fields}))

    def services(self, *, project: str | None = None) -> list[dict]:
        """Services the caller may see (optionally one project's), with status and replica counts."""
        return self._json(self._http.get("/api/v1/services", params={"project": project} if project else {}))["items"]

    def service(self, service: str, *, project: str | None = None) -> dict:
        """A service by id, or by name (with `project`, or searched in every visible project)."""
        return self._json(self._http.get(f"/api/v1/services/{self.service_id(service, project=project)}"))

    def service_id(self, service: str, *, project: str | None = None) -> str:
        """The id of a service given by id or name."""
        for s in self.services(project=project):
            if service in (s["id"], s["name"]) and (project is None or s["project"] == project):
                return s["id"]
        return service  # maybe an id this list did not show: the API answers 404 if not

    def update_service(self, service: str, *, project: str | None = None, **changes: Any) -> dict:
        """PATCH: image/command/env/readiness/liveness (a new revision, rolled out) or replicas."""
        return self._json(self._http.patch(f"/api/v1/services/{self.service_id(service, project=project)}",
                                           json=changes))

    def scale_service(self, service: str, replicas: int, *, project: str | None = None) -> dict:
        """Set the desired replicas (within the service's min..max)."""
        return self._json(self._http.post(f"/api/v1/services/{self.service_id(service, project=project)}/scale",
                                          json={"replicas": replicas}))

    def delete_service(self, service: str, *, project: str | None = None) -> dict:
        """Delete a service: its replicas drain and stop, then it is gone (status DELETING meanwhile)."""
        return self._json(self._http.delete(f"/api/v1/services/{self.service_id(service, project=project)}"))

    def service_replicas(self, service: str, *, project: str | None = None) -> list[dict]:
        """Live replicas: job id, revision, status, node, GPU ids, host:port, health, preemptible."""
        sid = self.service_id(service, project=project)
        return self._json(self._http.get(f"/api/v1/services/{sid}/replicas"))["items"]

    def service_revisions(self, service: str, *, project: str | None = None) -> list[dict]:
        """Every revision, newest first, with its spec and status (active, superseded, rolled_back)."""
        sid = self.service_id(service, project=project)
        return self._json(self._http.get(f"/api/v1/services/{sid}/revisions"))["items"]

    def service_events(self, service: str, *, project: str | None = None, after: int = 0) -> list[dict]:
        """The service's events (replicas started, ready, failed; rollouts, rollbacks, scaling)."""
        sid = self.service_id(service, project=project)
        return self._json(self._http.get(f"/api/v1/services/{sid}/events", params={"after": after}))["items"]

    def service_logs(self, service: str, replica: int | str = 0, *, project: str | None = None) -> str:
        """One replica's log (by replica index or job id)."""
        sid = self.service_id(service, project=project)
        r = self._http.get(f"/api/v1/services/{sid}/replicas/{replica}/logs")
        self._check(r)
        return r.text

    def create_service_key(self, service: str, *, project: str | None = None) -> str:
        """A new API key for the service's entry point (header X-Service-Key); shown once."""
        sid = self.service_id(service, project=project)
        return self._json(self._http.post(f"/api/v1/services/{sid}/keys"))["key"]

    def call_service(self, project: str, service: str, path: str = "/", *, method: str = "GET",
                     **kwargs: Any) -> httpx.Response:
        """One request through the service's entry point (`/svc/{project}/{service}/...`)."""
        return self._http.request(method, f"/svc/{project}/{service}/{path.lstrip('/')}", **kwargs)

    def wait_service(self, service: str, *, project: str | None = None, ready: int | None = None,
                     timeout: float = 120.0, poll_s: float = 0.5) -> dict:
        """Poll until the service has `ready` ready replicas (default: its desired count)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.service(service, project=project)
            want = s["replicas"]["desired"] if ready is None else ready
            if s["replicas"]["ready"] >= want and s["status"] in ("READY", "ROLLING"):
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {service} has {s['replicas']['ready']} of {want} ready replicas "
                                   f"after {timeout} s ({s['status']}: {s.get('pending_reason') or s['message']})")
            pause(poll_s)

    # -- helpers ----------------------------------------------------------------------------
    def _json(self, r: httpx.Response) -> Any:
        self._check(r)
        return r.json()

    @staticmethod
    def _check(r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        try:
            err = r.json()["error"]
            raise BrokerAPIError(r.status_code, err.get("code", "ERROR"), err.get("message", ""), err.get("details"))
        except (ValueError, KeyError, TypeError):
            raise BrokerAPIError(r.status_code, "HTTP_ERROR", r.text[:200]) from None
