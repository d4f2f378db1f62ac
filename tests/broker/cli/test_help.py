"""Every command of the `broker` script explains every option in words, never in Python types."""

from __future__ import annotations

import re

import click
import pytest
import typer.main
from typer.testing import CliRunner

from broker.cli import app

ROOT = typer.main.get_command(app)
PY_TYPES = re.compile(r"<\w+(\[.*?\])?>|FileText|list\[str\]|NoneType")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)  # the lazy server-side commands too (up, backup, restore)
        if hasattr(cmd, "list_commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


ALL = sorted(_commands(ROOT), key=lambda c: c[0])


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_every_option_says_what_it_is_for(path, cmd):
    for param in cmd.params:
        if getattr(param, "param_type_name", "") == "option" and param.name != "help" and not param.hidden:
            assert param.help, f"broker {' '.join(path)} {'/'.join(param.opts)} has no help"
    text = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"}).output
    assert not PY_TYPES.search(text), text


def test_the_walk_sees_the_whole_script():
    names = {" ".join(p) for p, _ in ALL}
    assert {"up", "backup", "restore", "jobs submit", "jobs why", "bench kueue", "usage", "overview"} <= names
