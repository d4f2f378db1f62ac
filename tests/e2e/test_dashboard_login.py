"""The dashboard's login form: shown when no token works, hidden once one does; the token is kept
in session storage (this tab) and never in local storage."""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_dashboard_browser import CHROMIUM, _chromium

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it as root)")

CASES = [
    # name, fragment, login form shown
    ("no-token", "", True),
    ("wrong-token", "#token=not-a-token", True),
    ("good-token", "#token={token}", False),
]


@pytest.mark.parametrize("fragment,shown", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_login_form_shows_only_without_a_working_token(served, tmp_path, fragment, shown):
    url, token, _ = served
    dom = _chromium("--dump-dom", f"{url}/dashboard{fragment.format(token=token)}", profile=tmp_path / "p").stdout
    form = re.search(r"<form id=\"login\"[^>]*>", dom)
    assert form, dom[:2000]
    assert ("hidden" not in form.group(0)) == shown, form.group(0)
    if not shown:
        assert 'data-pool="innovation"' in dom


def test_token_is_kept_per_tab_not_forever():
    """Every page keeps the token through dash.js, in session storage; none uses local storage."""
    from pathlib import Path

    static = Path(__file__).resolve().parents[2] / "broker" / "static"
    assert "sessionStorage" in (static / "dash.js").read_text()
    for page in [static / "dash.js", static / "dashboard.html", *static.glob("dash-*.html")]:
        text = page.read_text()
        assert "localStorage" not in text, page.name
        assert page.suffix != ".html" or '<script src="/static/dash.js"></script>' in text, page.name
