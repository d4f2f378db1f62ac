"""Job specs in files: YAML or JSON, with `--set key=value` overrides.

A spec file holds the same fields as the API's submit body (`name`, `project`, `class`, `image`,
`command`, `env`, `resources: {gpus, cpus, memory_gb, gpu_model}`, `workers`, ...), so a file
that works with `broker jobs submit -f` also works as the body of `POST /api/v1/jobs`. A bad file
is a `SpecError` naming the file, line and column: the CLI prints it, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class SpecError(ValueError):
    """A spec the user must fix; the message says where and what."""


def parse(text: str, source: str = "<spec>") -> dict:
    """JSON when `source` ends in .json, else YAML (which also reads most JSON)."""
    if source.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    else:
        import yaml  # here, not at the top: `broker jobs list` and friends never read YAML

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise SpecError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        raise SpecError(f"{source}: the file is empty")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a mapping of fields (name, project, command, ...), "
                        f"not a {type(data).__name__}")
    return data


def load(path: str) -> dict:
    """Read and parse a spec file; '-' reads standard input (YAML or JSON)."""
    import sys

    if path == "-":
        return parse(sys.stdin.read(), "<stdin>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read it ({e.__class__.__name__}: {e})") from None
    return parse(text, path)


def apply_set(spec: dict, assignment: str) -> dict:
    """`--set resources.gpus=2`: a dotted path gets a YAML-typed value ('2' is 2, 'true' is True,
    '[a, b]' a list); the spec is changed in place and returned."""
    if "=" not in assignment:
        raise SpecError(f"--set needs KEY=VALUE (e.g. resources.gpus=2), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = [k for k in key.strip().split(".")]
    if not all(parts):
        raise SpecError(f"--set: {key!r} is not a field path (e.g. resources.gpus)")
    import yaml

    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if parts[0] == "env" and len(parts) == 2 and value is not None:
        value = str(raw)  # environment values are strings as written
    node = spec
    for k in parts[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise SpecError(f"--set {key}: {k!r} is not a mapping in the spec")
        node = nxt
    node[parts[-1]] = value
    return spec
