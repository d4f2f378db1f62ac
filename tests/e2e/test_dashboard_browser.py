"""The utilization dashboard in a real browser (Debian chromium, headless).

A broker API serves a seeded SQLite DB; chromium opens /dashboard#token=..., the page's own
JavaScript fetches /api/v1/overview and renders it; the rendered DOM must show the region's
numbers. No network beyond loopback: the page has no external assets.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=8000", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


def test_dashboard_renders_region_numbers(served, tmp_path):
    url, token, _ = served
    r = _chromium("--dump-dom", f"{url}/dashboard#token={token}", profile=tmp_path / "p1")
    dom = r.stdout
    assert 'data-pool="innovation"' in dom and 'data-pool="operation"' in dom, r.stderr[-2000:]
    assert '<b data-k="GPUs">12</b>' in dom  # 4 + 8 GPUs over the two nodes
    assert 'class="state-draining"' in dom and "Xid 79" in dom
    assert '<div id="error" role="alert"></div>' in dom  # no error shown


def test_dashboard_without_token_says_how_to_get_in(served, tmp_path):
    url, _, _ = served
    dom = _chromium("--dump-dom", f"{url}/dashboard", profile=tmp_path / "p2").stdout
    assert '<div id="error" role="alert">Could not load the overview' in dom and "#token=&lt;your token&gt;" in dom


def test_dashboard_screenshot(served, tmp_path):
    url, token, data = served
    shot = tmp_path / "dashboard.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,900", f"{url}/dashboard#token={token}",
              profile=tmp_path / "p3")
    assert shot.exists() and shot.stat().st_size > 10_000
