"""The Containerfile agrees with the manifests that run its image (no registry here, so the
image is not built in tests: docs/KUBERNETES.md says so). Checked: the user the manifests
expect, what KubeRay needs in a Ray image, that every package the broker imports is copied,
and that its default command is what the broker Deployment runs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tests.k8s.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "Containerfile").read_text()


def instructions(name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+?)(?<!\\)$", TEXT, re.M | re.S)]


def test_runs_as_the_non_root_user_the_restricted_pods_declare():
    (user,) = instructions("USER")
    uid = int(user.split(":")[0])
    assert uid != 0
    docs = render(ROOT / "k8s" / "base")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    for g in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        assert g["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_has_what_kuberay_and_the_broker_need():
    assert "wget" in TEXT  # KubeRay's probes
    copied = {c.split()[0] for c in instructions("COPY") if not c.startswith("--from")}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in packages:
        assert pkg.rstrip("*") in copied, pkg


def test_default_command_is_the_broker_deployments():
    (cmd,) = instructions("CMD")
    docs = render(ROOT / "k8s" / "base")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert json.loads(cmd) == dep["spec"]["template"]["spec"]["containers"][0]["args"]
