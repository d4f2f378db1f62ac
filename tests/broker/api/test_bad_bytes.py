"""Bytes the database cannot store, and bodies that are not JSON: a 4xx with a code on every
route, on SQLite and PostgreSQL alike (PostgreSQL refuses a NUL in text; that used to be a 500).

The routes with path parameters and the routes with bodies are read from the OpenAPI document,
so a route added later is covered without editing this file.
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.broker.conftest import job_body


def _routes(app, *, with_params: bool = False, with_body: bool = False) -> list[tuple[str, str]]:
    out = []
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            if with_params and "{" not in path:
                continue
            if with_body and "requestBody" not in op:
                continue
            out.append((method.upper(), path))
    return out


def _fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def _assert_coded(r, status: int | None = None, code: str | None = None) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and err["message"]
    if code is not None:
        assert err["code"] == code, err


BAD_PATH_VALUES = [("nul", "abc%00"), ("nul-first", "%00abc"), ("control-char", "a%01b"), ("delete-char", "a%7F")]


@pytest.mark.parametrize("value", [v for _, v in BAD_PATH_VALUES], ids=[n for n, _ in BAD_PATH_VALUES])
def test_every_path_parameter_refuses_control_characters(app, client, value):
    routes = _routes(app, with_params=True)
    assert len(routes) >= 20  # the document really lists them (a broken lookup would pass vacuously)
    failed = {}
    for method, path in routes:
        r = client.request(method, _fill(path, value), json={} if method in ("POST", "PUT", "PATCH") else None)
        if (r.status_code, r.json().get("error", {}).get("code")) != (422, "INVALID_CHARACTER"):
            failed[f"{method} {path}"] = (r.status_code, r.text[:120])
    assert failed == {}


QUERY_CASES = [
    ("job list project filter", "/api/v1/jobs?project=abc%00"),
    ("job list status filter", "/api/v1/jobs?status=PENDING%00"),
    ("job list cursor", "/api/v1/jobs?cursor=%00"),
    ("audit filter", "/api/v1/audit?actor=a%00"),
    ("telemetry resolution", "/api/v1/telemetry/nodes/inno-1?resolution=raw%00"),
]


@pytest.mark.parametrize("url", [c[1] for c in QUERY_CASES], ids=[c[0] for c in QUERY_CASES])
def test_query_strings_refuse_control_characters(client, url):
    _assert_coded(client.get(url), 422, "INVALID_CHARACTER")


def _body(**over):
    b = job_body()
    b.update(over)
    return b


BAD_SUBMIT_BODIES = [
    ("name", _body(name="train\x00")),
    ("image", _body(image="localhost/busybox:test\x00")),
    ("image of a process job", _body(image="x\x00y", runtime="process")),
    ("command argument", _body(command=["/bin/busybox", "echo", "a\x00b"])),
    ("env value", _body(env={"FOO": "a\x00"})),
    ("env name", _body(env={"FO\x00O": "a"})),
    ("project", _body(project="ouh-liver\x00")),
    ("pool", _body(pool="innovation\x00")),
    ("gpu model", _body(resources={"gpus": 1, "gpu_model": "A100\x00"})),
    ("name lone surrogate", _body(name="\ud800")),
    ("image lone surrogate", _body(image="x\udfff", runtime="process")),
    ("env value lone surrogate", _body(env={"FOO": "\ud800"})),
]


def _raw(body: dict) -> bytes:
    import json

    return json.dumps(body).encode()  # \u0000 and lone surrogates as JSON escapes, as a client sends them


@pytest.mark.parametrize("body", [c[1] for c in BAD_SUBMIT_BODIES], ids=[c[0] for c in BAD_SUBMIT_BODIES])
@pytest.mark.parametrize("idempotency", [False, True], ids=["plain", "keyed"])
def test_submit_body_strings_refuse_unstorable_characters(client, body, idempotency):
    headers = {"Content-Type": "application/json"}
    if idempotency:
        headers["Idempotency-Key"] = f"k-{uuid.uuid4().hex}"
    _assert_coded(client.post("/api/v1/jobs", content=_raw(body), headers=headers), 422)


BAD_ADMIN_BODIES = [
    ("department name", "POST", "/api/v1/departments", {"id": "d-nul", "name": "a\x00"}),
    ("project name", "POST", "/api/v1/departments/ouh/projects", {"id": "p-nul", "name": "a\x00"}),
    ("project rename", "PATCH", "/api/v1/projects/ouh-liver", {"name": "a\x00"}),
    ("user display name", "POST", "/api/v1/admin/users", {"id": "u-nul", "display_name": "a\x00"}),
    ("token user", "POST", "/api/v1/admin/tokens", {"name": "t", "user": "a\x00"}),
]


@pytest.mark.parametrize("method,url,body", [c[1:] for c in BAD_ADMIN_BODIES], ids=[c[0] for c in BAD_ADMIN_BODIES])
def test_admin_body_strings_refuse_nul(client, method, url, body):
    _assert_coded(client.request(method, url, content=_raw(body), headers={"Content-Type": "application/json"}), 422)


NOT_JSON = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
            "text/json"]


@pytest.mark.parametrize("ctype", NOT_JSON)
def test_every_body_route_refuses_non_json_bodies(app, client, ctype):
    routes = _routes(app, with_body=True) + [("POST", "/api/v1/telemetry")]
    assert len(routes) >= 15
    failed = {}
    for method, path in routes:
        r = client.request(method, _fill(path, "x"), content=_raw(job_body()), headers={"Content-Type": ctype})
        if (r.status_code, r.json().get("error", {}).get("code")) != (415, "UNSUPPORTED_MEDIA_TYPE"):
            failed[f"{method} {path}"] = (r.status_code, r.text[:120])
    assert failed == {}


JSON_TYPES = [("plain", "application/json"), ("with charset", "application/json; charset=utf-8"),
              ("upper case", "Application/JSON"), ("+json suffix", "application/vnd.broker+json")]


@pytest.mark.parametrize("ctype", [c[1] for c in JSON_TYPES], ids=[c[0] for c in JSON_TYPES])
def test_json_content_types_are_accepted(client, ctype):
    r = client.post("/api/v1/jobs", content=_raw(job_body()), headers={"Content-Type": ctype})
    assert r.status_code == 201, r.text


def test_a_body_without_content_type_is_read_as_json(client):
    r = client.post("/api/v1/jobs", content=_raw(job_body()))  # httpx adds no Content-Type for raw content
    assert "content-type" not in r.request.headers
    assert r.status_code == 201, r.text


TELEMETRY_FIELDS = [("agent version", {"agent_version": "v\x00"}), ("hostname", {"hostname": "h\x00"}),
                    ("gpu model", "model"), ("gpu uuid", "uuid")]


@pytest.mark.parametrize("over", [c[1] for c in TELEMETRY_FIELDS], ids=[c[0] for c in TELEMETRY_FIELDS])
def test_telemetry_report_strings_refuse_nul(client, engine, over):
    import time

    from agents.agent import encode
    from tests.broker.services.telemetry.builders import agent_token, gpu, new_node, report

    node = new_node(engine)
    rep = report(node, 1, [gpu(0, time.time())])
    if isinstance(over, dict):
        rep = rep.model_copy(update=over)
    else:
        rep.gpus[0] = rep.gpus[0].model_copy(update={over: "x\x00"})
    r = client.post("/api/v1/telemetry", content=encode(rep),
                    headers={"Authorization": f"Bearer {agent_token(engine, node)}", "Content-Type": "application/json"})
    _assert_coded(r, 422)


def test_every_json_body_is_an_input_model(app):
    """Every body in the OpenAPI document is an `Input` model of `broker.schemas` (so its strings
    are checked for NUL and lone surrogates); the telemetry push reads raw bytes and checks them
    in `services.telemetry.rows` (tested above)."""
    import importlib
    import pkgutil

    import broker.schemas as schemas
    from broker.schemas.base import Input

    classes = {}
    for mod in pkgutil.iter_modules(schemas.__path__):
        m = importlib.import_module(f"broker.schemas.{mod.name}")
        classes.update({k: v for k, v in vars(m).items() if isinstance(v, type)})

    names = {}
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"].get("$ref", "")
                names[f"{method.upper()} {path}"] = ref.rsplit("/", 1)[-1]
    assert len(names) >= 15
    not_input = {route: name for route, name in names.items() if not issubclass(classes.get(name, object), Input)}
    assert not_input == {}
