"""Body size limit middleware (413 without buffering), image allow-list, env and command checks."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from broker.auth.limits import (
    BodySizeLimit,
    Problem,
    command_problems,
    env_problems,
    image_allowed,
    image_problems,
    normalize_prefixes,
    parse_image,
    raise_for,
)

LIMIT = 1000
JSON = {"content-type": "application/json"}


class Echo(BaseModel):
    data: str


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/json")
    def post_json(body: Echo) -> dict:
        return {"n": len(body.data)}

    @app.post("/raw")
    async def post_raw(request: Request) -> dict:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return {"n": n}

    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)
    return app


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app()) as c:
        yield c


def chunks(total: int, size: int = 100):
    for i in range(0, total, size):
        yield b"x" * min(size, total - i)


def assert_413(r):
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "PAYLOAD_TOO_LARGE" and str(LIMIT) in err["message"]
    assert err["details"] == {"max_bytes": LIMIT}


@pytest.mark.parametrize(
    "name, path, kwargs, status",
    [
        ("small json", "/json", {"json": {"data": "a" * 10}}, 200),
        ("json at limit", "/json", {"content": b'{"data":"' + b"a" * (LIMIT - 11) + b'"}', "headers": JSON}, 200),
        ("json over content-length", "/json", {"json": {"data": "a" * LIMIT}}, 413),
        ("raw over content-length", "/raw", {"content": b"x" * (LIMIT + 1)}, 413),
        ("raw chunked under", "/raw", {"content": chunks(LIMIT)}, 200),
        ("raw chunked over", "/raw", {"content": chunks(LIMIT * 50)}, 413),
        ("json chunked over (fastapi would say 400)", "/json", {"content": chunks(LIMIT * 5), "headers": JSON}, 413),
        ("bogus content-length", "/raw", {"content": b"x", "headers": {"content-length": "abc"}}, None),
    ],
)
def test_body_limit(client, name, path, kwargs, status):
    if status is None:  # h11 itself refuses a malformed length before the app; must not be 2xx/5xx
        try:
            r = client.post(path, **kwargs)
        except Exception:
            return
        assert 400 <= r.status_code < 500
        return
    r = client.post(path, **kwargs)
    if status == 413:
        assert_413(r)
    else:
        assert r.status_code == status, r.text


def test_chunked_body_is_not_read_past_the_limit():
    """The middleware stops pulling chunks once the limit is crossed (no unbounded buffering)."""
    pulled = 0

    async def app(scope, receive, send):
        while True:
            msg = await receive()
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}  # endless

    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(BodySizeLimit(app, max_bytes=LIMIT)(scope, receive, send))
    assert pulled == LIMIT // 100 + 1
    assert sent[0]["status"] == 413


def test_non_http_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodySizeLimit(app, max_bytes=1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_unrelated_app_errors_still_propagate():
    async def app(scope, receive, send):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        asyncio.run(BodySizeLimit(app, max_bytes=10)({"type": "http", "headers": []}, None, None))


# --------------------------------------------------------------------------- images

PREFIXES = ("localhost/", "registry.region.dk/ai/")
DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    "name, image, allowed",
    [
        ("local image", "localhost/busybox:test", True),
        ("regional team image", "registry.region.dk/ai/ouh/liver-seg:1.2", True),
        ("digest pinned", f"registry.region.dk/ai/seg@{DIGEST}", True),
        ("tag and digest", f"registry.region.dk/ai/seg:1@{DIGEST}", True),
        ("prefix domain trick", "localhost.evil.com/busybox:test", False),
        ("prefix path trick", "registry.region.dk/ai-evil/x:1", False),
        ("prefix without path", "registry.region.dk/other/x", False),
        ("same host other port", "localhost:5000/busybox", False),
        ("unqualified name (docker.io via search)", "busybox", False),
        ("unqualified with tag", "busybox:latest", False),
        ("docker hub", "docker.io/library/busybox", False),
        ("option injection", "--privileged", False),
        ("option injection after prefix-like", "-localhost/x", False),
        ("transport docker-archive", "docker-archive:/tmp/x.tar", False),
        ("transport containers-storage", "containers-storage:localhost/x", False),
        ("dot-dot component", "localhost/../etc/x", False),
        ("uppercase path", "localhost/BusyBox", False),
        ("whitespace", "localhost/busybox :test", False),
        ("newline", "localhost/busybox\n", False),
        ("userinfo", "user@localhost/busybox", False),
        ("scheme", "https://registry.region.dk/ai/x", False),
        ("empty", "", False),
        ("unicode lookalike", "localhost/bu\u0455ybox", False),
        ("too long", "localhost/" + "a" * 600, False),
    ],
)
def test_image_allow_list(name, image, allowed):
    assert image_allowed(image, PREFIXES) is allowed


def test_empty_allow_list_allows_nothing():
    assert not image_allowed("localhost/busybox:test", ())


def test_whole_repository_prefix():
    assert image_allowed("localhost/busybox:test", ["localhost/busybox"])
    assert not image_allowed("localhost/busyboxer:test", ["localhost/busybox"])


@pytest.mark.parametrize(
    "prefix", ["busybox", "library/", "", "https://registry.region.dk/", "localhost/x:tag", "--x/"]
)
def test_bad_prefixes_refused(prefix):
    with pytest.raises(ValueError):
        normalize_prefixes([prefix])


def test_domain_is_case_insensitive_in_prefixes():
    assert normalize_prefixes(["Registry.Region.DK/ai/"]) == ("registry.region.dk/ai",)
    assert image_allowed("registry.region.dk/ai/x", ["Registry.Region.DK/ai/"])


def test_parse_image_parts():
    ref = parse_image(f"registry.region.dk:443/ai/seg:v1@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("registry.region.dk:443", "ai/seg", "v1", DIGEST)


@pytest.mark.parametrize(
    "image, code",
    [("busybox", "IMAGE_INVALID"), ("docker.io/library/busybox", "IMAGE_NOT_ALLOWED"), ("localhost/x", None)],
)
def test_image_problems(image, code):
    probs = image_problems(image, PREFIXES)
    assert [p.code for p in probs] == ([code] if code else [])


# --------------------------------------------------------------------------- env


@pytest.mark.parametrize(
    "name, env, codes",
    [
        ("ok", {"HF_HOME": "/data", "_X": "1", "a1": ""}, []),
        ("leading digit", {"1A": "x"}, ["ENV_NAME_INVALID"]),
        ("dash", {"MY-VAR": "x"}, ["ENV_NAME_INVALID"]),
        ("equals sign", {"A=B": "x"}, ["ENV_NAME_INVALID"]),
        ("empty name", {"": "x"}, ["ENV_NAME_INVALID"]),
        ("unicode", {"\u00c6BLE": "x"}, ["ENV_NAME_INVALID"]),
        ("cuda mask", {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, ["ENV_NAME_RESERVED"]),
        ("nvidia mask", {"NVIDIA_VISIBLE_DEVICES": "all"}, ["ENV_NAME_RESERVED"]),
        ("rank", {"RANK": "0"}, ["ENV_NAME_RESERVED"]),
        ("rank lower case", {"rank": "0"}, ["ENV_NAME_RESERVED"]),
        ("world size", {"WORLD_SIZE": "8"}, ["ENV_NAME_RESERVED"]),
        ("master addr", {"MASTER_ADDR": "evil"}, ["ENV_NAME_RESERVED"]),
        ("broker prefix", {"BROKER_DATABASE_URL": "x"}, ["ENV_NAME_RESERVED"]),
        ("ray prefix", {"RAY_ADDRESS": "x"}, ["ENV_NAME_RESERVED"]),
        ("similar but fine", {"RANKING_MODE": "x", "MY_RANK": "1"}, []),
        ("non-string value", {"A": 1}, ["ENV_VALUE_INVALID"]),
        ("nul in value", {"A": "a\x00b"}, ["ENV_VALUE_INVALID"]),
        ("long value", {"A": "x" * 101}, ["ENV_VALUE_TOO_LONG"]),
        ("too many", {f"V{i}": "" for i in range(6)}, ["ENV_TOO_MANY"]),
        ("several problems at once", {"1": "", "RANK": "0"}, ["ENV_NAME_INVALID", "ENV_NAME_RESERVED"]),
    ],
)
def test_env_problems(name, env, codes):
    assert [p.code for p in env_problems(env, max_vars=5, max_value_chars=100)] == codes


# --------------------------------------------------------------------------- command


@pytest.mark.parametrize(
    "name, command, codes",
    [
        ("ok", ["python", "train.py", "--epochs=3"], []),
        ("string not list", "python train.py", ["COMMAND_INVALID"]),
        ("empty", [], ["COMMAND_EMPTY"]),
        ("blank program", ["  ", "x"], ["COMMAND_EMPTY"]),
        ("non-string arg", ["python", 3], ["COMMAND_INVALID"]),
        ("nul", ["python", "a\x00b"], ["COMMAND_INVALID"]),
        ("too many args", ["a"] * 11, ["COMMAND_TOO_LONG"]),
        ("too many chars", ["a" * 60, "b" * 41], ["COMMAND_TOO_LONG"]),
        ("exactly at bounds", ["a" * 50, "b" * 50], []),
    ],
)
def test_command_problems(name, command, codes):
    assert [p.code for p in command_problems(command, max_args=10, max_chars=100)] == codes


def test_raise_for():
    raise_for([])
    with pytest.raises(ValueError, match="env.RANK: reserved"):
        raise_for([Problem("env.RANK", "ENV_NAME_RESERVED", "reserved")])
