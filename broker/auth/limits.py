"""Input hardening: a streaming body-size limit (ASGI) and validators for job specs.

Body limit. `BodySizeLimit` answers 413 with the standard error shape
``{"error": {"code": "PAYLOAD_TOO_LARGE", "message", "details": {"max_bytes"}}}``:
- at once, without reading a byte, when ``Content-Length`` exceeds the limit;
- for bodies without a length (chunked) it counts bytes as the app reads them and stops
  reading at the first chunk past the limit, so memory stays bounded by limit + one chunk.
  Frameworks turn an exception raised from ``receive`` into their own error (FastAPI answers
  400 "error parsing the body"), so the middleware swallows whatever the app sends after the
  limit is crossed and sends the 413 itself. If the app had already started a response
  (streaming while reading), nothing can be changed and the read error just ends it.

Validators return a list of `Problem` (empty = fine) so a service can report every problem
of a spec in one 422 instead of one at a time; `raise_for` turns them into a ValueError for
pydantic validators.

Image allow-list. An image must be a fully qualified reference (registry domain first): an
unqualified ``ubuntu`` would be resolved by podman through its search registries (docker.io),
which no allow-list can reason about. Prefixes match on path-component boundaries only, so
``localhost/`` never admits ``localhost.evil.com/x`` and ``registry.region.dk/ai`` never admits
``registry.region.dk/ai-evil/x``. The grammar is distribution/reference's, which also rules
out option injection (``--privileged``), transports (``docker-archive:/etc``), whitespace,
``..`` components and upper-case paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from broker import jobenv

__all__ = [
    "BodySizeLimit",
    "Problem",
    "raise_for",
    "ImageRef",
    "parse_image",
    "normalize_prefixes",
    "image_allowed",
    "image_problems",
    "env_problems",
    "command_problems",
    "RESERVED_ENV_NAMES",
    "RESERVED_ENV_PREFIXES",
]


# --------------------------------------------------------------------------- body limit


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Pure ASGI middleware; wrap the app (``app.add_middleware(BodySizeLimit, max_bytes=N)``)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for k, v in scope.get("headers", ()):
            if k.lower() == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    return await self._send_413(send)
                break

        seen = 0
        exceeded = False
        started = False

        async def limited_receive() -> dict:
            nonlocal seen, exceeded
            if exceeded:
                raise _TooLarge()
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _TooLarge()
            return msg

        async def guarded_send(msg: dict) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's reaction to the read error; the 413 replaces it
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._send_413(send)

    async def _send_413(self, send: Any) -> None:
        import json

        body = json.dumps(
            {
                "error": {
                    "code": "PAYLOAD_TOO_LARGE",
                    "message": f"request body is larger than {self.max_bytes} bytes",
                    "details": {"max_bytes": self.max_bytes},
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True, slots=True)
class Problem:
    field: str  # e.g. "env.CUDA_VISIBLE_DEVICES", "command[3]", "image"
    code: str  # UPPER_SNAKE, stable
    message: str

    def as_detail(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


def raise_for(problems: Sequence[Problem]) -> None:
    """Raise ValueError listing `problems` (pydantic turns it into a 422 field error)."""
    if problems:
        raise ValueError("; ".join(f"{p.field}: {p.message}" for p in problems[:10]))


# --------------------------------------------------------------------------- images

_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
_IMAGE_RE = re.compile(
    rf"(?P<domain>{_DOMAIN})/(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,
)
MAX_IMAGE_CHARS = 512


@dataclass(frozen=True, slots=True)
class ImageRef:
    domain: str  # lower-case, with port if any
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"


def _looks_like_domain(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first.startswith("[")


def parse_image(image: str) -> ImageRef | None:
    """A fully qualified image reference, or None (unqualified, malformed or hostile)."""
    if not isinstance(image, str) or not image or len(image) > MAX_IMAGE_CHARS:
        return None
    first = image.split("/", 1)[0]
    if "/" not in image or not _looks_like_domain(first):
        return None
    m = _IMAGE_RE.fullmatch(image)
    if m is None:
        return None
    return ImageRef(m["domain"].lower(), m["path"], m["tag"], m["digest"])


def normalize_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """Validate admin-set prefixes: each must start with a registry domain. Returns them
    without trailing '/', domain lower-cased. Raises ValueError naming a bad prefix."""
    out = []
    for raw in prefixes:
        p = raw.strip().rstrip("/")
        probe = parse_image(p + "/x") if "/" not in p else parse_image(p)
        if probe is None or probe.tag or probe.digest:
            raise ValueError(f"image prefix {raw!r} must be a registry domain or repository path")
        out.append(p.split("/", 1)[0].lower() + (("/" + p.split("/", 1)[1]) if "/" in p else ""))
    return tuple(out)


def image_allowed(image: str, prefixes: Iterable[str]) -> bool:
    """True if `image` parses and its name lies under one of `prefixes` (component-wise).
    An empty allow-list allows nothing."""
    return _allowed(image, normalize_prefixes(prefixes))


@lru_cache(maxsize=4096)
def _allowed(image: str, normalized: tuple[str, ...]) -> bool:
    """Memoized on (image, normalized prefixes): a region uses few images, and submit is hot."""
    ref = parse_image(image)
    if ref is None:
        return False
    return any(ref.name == p or ref.name.startswith(p + "/") for p in normalized)


def image_problems(image: str, prefixes: Iterable[str], *, normalized: bool = False) -> list[Problem]:
    """Problems of `image` against the allow-list (`normalized=True`: `prefixes` already went
    through `normalize_prefixes`, which the hot path does once)."""
    prefixes = tuple(prefixes)
    if _allowed(image, prefixes if normalized else normalize_prefixes(prefixes)):
        return []
    if parse_image(image) is None:
        return [
            Problem(
                "image",
                "IMAGE_INVALID",
                "image must be a fully qualified reference like registry.example/team/name:tag",
            )
        ]
    allowed = ", ".join(p if p.endswith("/") else p + "/" for p in prefixes) or "(none configured)"
    return [Problem("image", "IMAGE_NOT_ALLOWED", f"image registry not allowed; allowed prefixes: {allowed}")]


# --------------------------------------------------------------------------- env

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
MAX_ENV_NAME_CHARS = 128

# Names the broker or the runtime sets per worker: a job that overrides them could pick GPUs
# it was not given (CUDA_/NVIDIA_/ROCm device masks) or break gang wiring (rank variables).
RESERVED_ENV_NAMES = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
        "ZE_AFFINITY_MASK",
        "RANK",
        "LOCAL_RANK",
        "GROUP_RANK",
        "ROLE_RANK",
        "NODE_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_WORLD_SIZE",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)
RESERVED_ENV_PREFIXES = ("BROKER_", "CB_", "RAY_", "NVIDIA_", "TORCHELASTIC_", "CONTAINERS_", "PODMAN_")


def env_problems(
    env: Mapping[str, Any],
    *,
    max_vars: int = 128,
    max_value_chars: int = 8 * 1024,
    reserved_names: frozenset[str] = RESERVED_ENV_NAMES,
    reserved_prefixes: Sequence[str] = RESERVED_ENV_PREFIXES,
    runtime: str = "container",
) -> list[Problem]:
    """Problems of a job's env: POSIX names, no server-owned names, bounded sizes, no NUL.

    Server-owned names are compared case-insensitively (refusing ``rank`` costs nothing and
    saves reasoning about runtimes that fold case). By runtime (`broker.jobenv` says why):
    container values may not hold line breaks; process jobs may not set names that steer the
    host's loader, shells or interpreters (PATH, LD_*, BASH_ENV, PYTHONPATH...).
    """
    out: list[Problem] = []
    prefixes = tuple(reserved_prefixes)
    if not isinstance(env, Mapping):
        return [Problem("env", "ENV_INVALID", "env must be an object of string names to string values")]
    if len(env) > max_vars:
        out.append(Problem("env", "ENV_TOO_MANY", f"at most {max_vars} variables are allowed"))
    for name, value in env.items():
        if not isinstance(name, str) or len(name) > MAX_ENV_NAME_CHARS or not _ENV_NAME.fullmatch(name):
            out.append(Problem(f"env.{str(name)[:64]}", "ENV_NAME_INVALID",
                               "names must match [A-Za-z_][A-Za-z0-9_]* (max 128 chars)"))
            continue
        upper = name.upper()
        if upper in reserved_names or upper.startswith(prefixes):
            out.append(Problem(f"env.{name}", "ENV_NAME_RESERVED",
                               "this variable is set by the broker and cannot be overridden"))
        if not isinstance(value, str):
            out.append(Problem(f"env.{name}", "ENV_VALUE_INVALID", "values must be strings"))
        elif len(value) > max_value_chars:
            out.append(Problem(f"env.{name}", "ENV_VALUE_TOO_LONG", f"values are limited to {max_value_chars} characters"))
        elif "\x00" in value:
            out.append(Problem(f"env.{name}", "ENV_VALUE_INVALID", "values cannot contain NUL characters"))
        elif runtime == "container" and jobenv.has_line_break(value):
            out.append(Problem(f"env.{name}", "ENV_VALUE_INVALID",
                               "values cannot contain line breaks; pass multi-line data in a file"))
        if runtime == "process" and jobenv.host_unsafe(name):
            out.append(Problem(f"env.{name}", "ENV_NAME_UNSAFE",
                               "runtime 'process' runs on the host: variables that steer its loader, shells or "
                               "interpreters (PATH, HOME, LD_*, BASH_ENV, PYTHONPATH...) cannot be set"))
    return out


# --------------------------------------------------------------------------- command


def command_problems(
    command: Sequence[Any], *, max_args: int = 256, max_chars: int = 16 * 1024
) -> list[Problem]:
    """Problems of a job's argv: 1..max_args strings, total length bounded, no NUL, argv[0] set."""
    if isinstance(command, (str, bytes)) or not isinstance(command, Sequence):
        return [Problem("command", "COMMAND_INVALID", "command must be a list of strings (argv)")]
    if not command:
        return [Problem("command", "COMMAND_EMPTY", "command needs at least one element")]
    out: list[Problem] = []
    if len(command) > max_args:
        out.append(Problem("command", "COMMAND_TOO_LONG", f"at most {max_args} arguments are allowed"))
    total = 0
    for i, arg in enumerate(command[: max_args + 1]):
        if not isinstance(arg, str):
            out.append(Problem(f"command[{i}]", "COMMAND_INVALID", "arguments must be strings"))
            continue
        total += len(arg)
        if "\x00" in arg:
            out.append(Problem(f"command[{i}]", "COMMAND_INVALID", "arguments cannot contain NUL characters"))
    if isinstance(command[0], str) and not command[0].strip():
        out.append(Problem("command[0]", "COMMAND_EMPTY", "the program name cannot be empty"))
    if total > max_chars:
        out.append(Problem("command", "COMMAND_TOO_LONG", f"the command is limited to {max_chars} characters in total"))
    return out
