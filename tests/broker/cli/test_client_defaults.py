"""`BrokerClient()` with no arguments: $BROKER_URL, $BROKER_TOKEN, else the token `broker up` wrote."""

from __future__ import annotations

import inspect

import pytest

from broker import client as client_mod
from broker.client import DEFAULT_URL, BrokerClient

CASES = [
    # name, env, token file content, explicit (url, token), expected (url, Authorization)
    ("nothing", {}, None, (None, None), (DEFAULT_URL, None)),
    ("env-url-and-token", {"BROKER_URL": "http://broker:9000/", "BROKER_TOKEN": "t-env"}, None, (None, None),
     ("http://broker:9000", "Bearer t-env")),
    ("token-file", {}, "t-file\n", (None, None), (DEFAULT_URL, "Bearer t-file")),
    ("env-token-beats-file", {"BROKER_TOKEN": "t-env"}, "t-file", (None, None), (DEFAULT_URL, "Bearer t-env")),
    ("arguments-beat-env", {"BROKER_URL": "http://a", "BROKER_TOKEN": "t-env"}, "t-file", ("http://b", "t-arg"),
     ("http://b", "Bearer t-arg")),
]


@pytest.mark.parametrize("env,token_file,given,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_defaults_come_from_the_environment(monkeypatch, tmp_path, env, token_file, given, expected):
    for k in ("BROKER_URL", "BROKER_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BROKER_DATA_DIR", str(tmp_path))
    if token_file is not None:
        (tmp_path / "admin-token").write_text(token_file)
    with BrokerClient(*given) as c:
        assert (c.url, c._http.headers.get("Authorization")) == expected
        assert str(c._http.base_url).rstrip("/") == expected[0]


def test_every_public_method_says_what_it_does():
    for name, fn in inspect.getmembers(BrokerClient, inspect.isfunction):
        if not name.startswith("_"):
            assert fn.__doc__, name
    for name in ("default_url", "default_token"):
        assert getattr(client_mod, name).__doc__


def test_client_catalog_methods(client, admin_token):
    c = BrokerClient("http://testserver", admin_token, http=client)
    assert {"entitlement", "usage", "borrowing", "lending", "budget"} <= set(c.usage("ouh-liver"))
    assert c.project("ouh-liver")["id"] == "ouh-liver"
    assert {"totals", "pools", "nodes", "projects", "queue"} <= set(c.overview())
