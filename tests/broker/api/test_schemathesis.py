"""Schemathesis against the app's own OpenAPI document, in process (ASGI), as platform admin.

Why: the route table, the Pydantic schemas and the error handlers are written by hand in many
modules; generated requests sent to every operation catch a 500, or a response that
contradicts the published document, before a user or a generated SDK does (the bar: 0 server errors, 0
responses that violate the schema).

Invariants, for every generated request:
- schema-valid requests (positive): no 5xx (`not_a_server_error`), the body matches the schema
  declared for its status (`response_schema_conformance`), and the status is one the operation
  declares (`status_code_conformance`);
- schema-invalid requests (negative): still no 5xx, and the error body matches the documented
  error schema. An operation with nothing to make invalid (no parameters, no body) has no
  negative case; hypothesis reports that as Unsatisfiable and it is not a failure;
- the admin token stays valid for the whole run (no 401 anywhere), so every operation was
  exercised past authentication, and some requests succeed (2xx).

Bounded for CI: SQLite only (`db_url` is overridden in this module), a few derandomized
examples per operation (the same requests on every run), no shrinking. Excluded:
`GET /api/v1/jobs/{job_id}/logs` (with `follow=true` it streams until the job ends) and
`/metrics` (Prometheus text; no JSON schema to check). The dashboard/static routes are not in
the document.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

# (mode, checks, examples per operation)
RUNS = [
    (GenerationMode.POSITIVE, [not_a_server_error, response_schema_conformance, status_code_conformance], 8),
    (GenerationMode.NEGATIVE, [not_a_server_error, response_schema_conformance], 4),
]
EXCLUDED = re.compile(r"^GET (/api/v1/jobs/\{job_id\}/logs|/api/v1/services/\{service_id\}/replicas/\{replica\}/logs|/metrics)$")


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    """SQLite only: the generated traffic is the same on both backends, CI time is not."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'broker.db'}"


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(api_schema):
    for result in api_schema.get_all_operations():
        op = result.ok()
        if not EXCLUDED.match(f"{op.method.upper()} {op.path}"):
            yield op


def _fuzz(op, mode: GenerationMode, checks, examples: int, headers: dict[str, str], seen: Counter) -> str | None:
    """Run the bounded examples of one operation in one mode; the failure's text, or None."""

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(headers=headers)
        seen[response.status_code] += 1
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:
            return None  # nothing in this operation can be made schema-invalid
        return f"{op.method.upper()} {op.path} [{mode.value}]: no request could be generated"
    except (Exception, FailureGroup) as e:  # a check failure (or a group), with the reproducing curl
        return f"{op.method.upper()} {op.path} [{mode.value}]: {type(e).__name__}: {e}"
    return None


def test_api_conforms_to_its_openapi(api_schema, admin_token):
    ops = list(_operations(api_schema))
    assert len(ops) >= 40, [f"{o.method} {o.path}" for o in ops]  # the document really was read
    headers = {"Authorization": f"Bearer {admin_token}"}
    seen: Counter = Counter()
    failures = [f for mode, checks, n in RUNS for op in ops if (f := _fuzz(op, mode, checks, n, headers, seen))]
    assert not failures, "\n\n".join(failures)
    assert seen[401] == 0, f"the admin token stopped working mid-run: {dict(seen)}"
    assert sum(c for s, c in seen.items() if 200 <= s < 300) > 0, dict(seen)
