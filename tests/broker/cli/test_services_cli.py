"""`broker services`: deploy from YAML (and re-deploy = a new revision), list, get, scale,
rollout status, delete; run in-process against the test app's API (no executor needed)."""

from __future__ import annotations

import json
import uuid

import pytest

SPEC = """\
name: {name}
project: ouh-liver
class: innovation
image: localhost/busybox:test
command: [/bin/busybox, httpd, -f, -p, "8080", -h, /tmp]
env:
  MODEL: v1
resources: {{gpus: 0, cpus: 0.5, memory_gb: 0.5}}
replicas: {{min: 1, max: 3}}
port: 8080
readiness: {{path: /, period_s: 1, failure_threshold: 2}}
"""


@pytest.fixture
def spec_file(tmp_path):
    name = "cli-" + uuid.uuid4().hex[:6]
    p = tmp_path / "svc.yaml"
    p.write_text(SPEC.format(name=name))
    return name, p


def test_deploy_list_get_scale_rollout_delete(cli, spec_file, app):
    name, path = spec_file
    r = cli("services", "deploy", "-f", str(path), "-o", "json")
    assert r.exit_code == 0, r.output
    svc = json.loads(r.output)
    assert svc["name"] == name and svc["revision"] == 1
    r = cli("services", "list", "-p", "ouh-liver")
    assert r.exit_code == 0 and name in r.output and "/svc/ouh-liver/" in r.output
    app.state.services.service_controller.tick()
    r = cli("services", "get", name)
    assert r.exit_code == 0 and "0 ready of 1 desired" in r.output and "pending" in r.output, r.output
    r = cli("services", "scale", name, "2", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.output)["replicas"]["desired"] == 2
    assert cli("services", "scale", name, "9").exit_code != 0  # above max: the API's message
    # deploying again with a changed env: a new revision
    path.write_text(path.read_text().replace("MODEL: v1", "MODEL: v2"))
    r = cli("services", "deploy", "-f", str(path), "-o", "json")
    assert r.exit_code == 0 and json.loads(r.output)["revision"] == 2, r.output
    r = cli("services", "rollout", "status", name, "-o", "json")
    st = json.loads(r.output)
    assert st["revision"] == 2 and st["done"] is False and r.exit_code == 0
    r = cli("services", "delete", name)
    assert r.exit_code == 0 and "DELETING" in r.output


def test_unknown_service_is_a_clear_error(cli):
    r = cli("services", "get", "no-such-service")
    assert r.exit_code != 0 and "SERVICE_NOT_FOUND" in r.output
