"""A small Python client for the broker's REST API (httpx).

    c = BrokerClient("http://127.0.0.1:8000", token)
    job = c.submit(name="seg", project="ouh-liver", image="img", command=["python", "train.py"],
                   resources={"gpus": 1})
    done = c.wait(job["id"])            # until SUCCEEDED | FAILED | CANCELLED
    print(c.logs(job["id"]))

Errors come back as `BrokerAPIError` carrying the API's `code`, `message` and `details`.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class BrokerAPIError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class BrokerClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0,
                 http: httpx.Client | None = None) -> None:
        """`http`: an existing httpx.Client to use (tests pass a TestClient); its base URL wins."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if http is not None:
            http.headers.update(headers)
            self._http = http
        else:
            self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "BrokerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, spec: dict | None = None, *, idempotency_key: str | None = None, **fields: Any) -> dict:
        body = {**(spec or {}), **fields}
        if "workload_class" in body:
            body["class"] = body.pop("workload_class")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self._http.post("/api/v1/jobs", json=body, headers=headers))

    def get(self, job_id: str) -> dict:
        return self._json(self._http.get(f"/api/v1/jobs/{job_id}"))

    def list(self, *, project: str | None = None, status: str | None = None, limit: int = 100,
             cursor: str | None = None) -> dict:
        params = {k: v for k, v in {"project": project, "status": status, "limit": limit, "cursor": cursor}.items()
                  if v is not None}
        return self._json(self._http.get("/api/v1/jobs", params=params))

    def iter_jobs(self, **filters: Any) -> Iterator[dict]:
        cursor = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict:
        return self._json(self._http.post(f"/api/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        return self._json(self._http.get(f"/api/v1/jobs/{job_id}/events", params={"after": after}))["items"]

    def logs(self, job_id: str, *, worker: int = 0, attempt: int | None = None) -> str:
        params = {"worker": worker, **({"attempt": attempt} if attempt else {})}
        r = self._http.get(f"/api/v1/jobs/{job_id}/logs", params=params)
        self._check(r)
        return r.text

    def follow_logs(self, job_id: str, *, worker: int = 0, attempt: int | None = None) -> Iterator[bytes]:
        params = {"worker": worker, "follow": "true", **({"attempt": attempt} if attempt else {})}
        with self._http.stream("GET", f"/api/v1/jobs/{job_id}/logs", params=params, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            yield from r.iter_bytes()

    def wait(self, job_id: str, *, until: tuple[str, ...] = TERMINAL, timeout: float = 600.0,
             poll_s: float = 0.5) -> dict:
        """Poll until the job's status is in `until`; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["status"] in until:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g} s")
            time.sleep(poll_s)

    # -- catalog ----------------------------------------------------------------------------
    def projects(self) -> list[dict]:
        return self._json(self._http.get("/api/v1/projects"))["items"]

    def nodes(self) -> list[dict]:
        return self._json(self._http.get("/api/v1/nodes"))["items"]

    def update_node(self, node_id: str, **changes: Any) -> dict:
        """Platform-admins: pool=<name> | None, state='cordoned' | 'draining' | 'ready', reason=..."""
        return self._json(self._http.patch(f"/api/v1/nodes/{node_id}", json=changes))

    def pools(self) -> list[dict]:
        return self._json(self._http.get("/api/v1/pools"))["items"]

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
