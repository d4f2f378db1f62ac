"""/docs (Swagger UI) and /redoc (ReDoc) work with no network: vendored assets only.

Chromium runs with every host name but loopback unresolvable and a net log: the pages must render
the API's operations, and the log must show no request to anything but the broker.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
browser = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it as root)")

# Chromium's own background services (sign-in, updates, form autofill), requested
# whatever page is open; a page's fonts or scripts would come from other hosts (fonts.googleapis.com,
# cdn.jsdelivr.net, ...), which are never allowed here.
BROWSER_OWN = {"accounts.google.com", "clients2.google.com", "update.googleapis.com", "edgedl.me.gvt1.com",
               "optimizationguide-pa.googleapis.com", "www.google.com", "safebrowsing.googleapis.com",
               "content-autofill.googleapis.com"}

PAGES = [
    # name, path, what the rendered DOM must contain
    ("swagger-ui", "/docs", ['class="swagger-ui"', "/api/v1/jobs", "Submit a job"]),
    ("redoc", "/redoc", ["Compute Broker", "Submit a job (stored PENDING; the scheduler admits it)"]),
]


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [p[1] for p in PAGES], ids=[p[0] for p in PAGES])
def test_pages_reference_only_the_broker(served, path):
    import httpx

    url, _, _ = served
    html = httpx.get(url + path).text
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""url\s*:\s*["']([^"']+)""", html)
    assert refs, html
    assert all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    assert "googleapis" not in html and "jsdelivr" not in html and "cdn" not in html.lower()
    for ref in refs:
        if ref.startswith("/static/"):
            assert httpx.get(url + ref).status_code == 200, ref


@browser
@pytest.mark.parametrize("path,expect", [p[1:] for p in PAGES], ids=[p[0] for p in PAGES])
def test_pages_render_offline_in_chromium(served, tmp_path, path, expect):
    url, _, _ = served
    netlog = tmp_path / "net.json"
    r = _chromium(f"--log-net-log={netlog}", "--dump-dom", url + path, profile=tmp_path / "p")
    dom = r.stdout
    for text in expect:
        assert text in dom, (text, r.stderr[-2000:])
    hosts = set(re.findall(r'"url":"(?:https?|wss?)://([^/:"]+)', netlog.read_text(errors="replace")))
    assert hosts - BROWSER_OWN <= {"127.0.0.1"}, hosts


@browser
@pytest.mark.parametrize("path", [p[1] for p in PAGES], ids=[p[0] for p in PAGES])
def test_pages_screenshot(served, tmp_path, path):
    url, _, _ = served
    shot = tmp_path / "page.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,900", url + path, profile=tmp_path / "p")
    assert shot.exists() and shot.stat().st_size > 10_000
