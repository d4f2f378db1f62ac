"""`cli(*args)`: the `broker` console app run in-process against the test app's API."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from broker.client import BrokerClient


@pytest.fixture
def cli(monkeypatch, client, admin_token):
    from broker.cli import app, common

    monkeypatch.setattr(common, "client", lambda url, token: BrokerClient("http://testserver", admin_token, http=client))
    monkeypatch.setattr(BrokerClient, "close", lambda self: None)  # the shared TestClient stays open
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input, terminal_width=120)

    return invoke
