"""Fixtures every test folder may use: podman's settings and the test image.

- `containers_conf` (session): path of tests/containers.conf, exported as CONTAINERS_CONF for
  this process and what it starts (podman here needs runc and no default ulimits).
- `busybox_image` (session): `localhost/busybox:test`, built once from busybox-static by
  tests/images/build_busybox_image.sh (idempotent); skips where podman or busybox is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
IMAGE = "localhost/busybox:test"


@pytest.fixture(scope="session")
def containers_conf() -> str:
    path = str(TESTS / "containers.conf")
    os.environ.setdefault("CONTAINERS_CONF", path)
    return os.environ["CONTAINERS_CONF"]


@pytest.fixture(scope="session")
def busybox_image(containers_conf) -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc)")
    if not Path(os.environ.get("BUSYBOX", "/bin/busybox")).exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    r = subprocess.run([str(TESTS / "images" / "build_busybox_image.sh"), IMAGE],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail(f"could not build {IMAGE}: {r.stdout}{r.stderr}")
    return IMAGE
