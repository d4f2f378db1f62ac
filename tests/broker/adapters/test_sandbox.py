"""The container sandbox's pure parts: podman flags, network choice, secret files, log masking."""

from __future__ import annotations

import os
import stat

import pytest

from broker.adapters.ray import sandbox
from broker.adapters.ray.runner import LogPump


@pytest.mark.parametrize("case, kw, want", [
    ("single worker, egress", dict(world_size=1, gang_local=True, no_egress=False), ("", True)),
    ("single worker, air-gapped", dict(world_size=1, gang_local=True, no_egress=True), ("none", False)),
    ("gang on one node", dict(world_size=4, gang_local=True, no_egress=False), ("", True)),
    ("gang on one node, air-gapped", dict(world_size=2, gang_local=True, no_egress=True), ("", True)),
    ("gang across nodes", dict(world_size=2, gang_local=False, no_egress=False), ("host", False)),
])
def test_network_choice(case, kw, want):
    assert sandbox.network_for(isolated=True, **kw) == want
    assert sandbox.network_for(isolated=False, default="host", **kw) == ("host", False)


def test_isolation_flags_match_what_was_admitted():
    f = sandbox.isolation_flags(memory_gb=2.0, cpus=1.5, pids_limit=100)
    joined = " ".join(f)
    assert "--cap-drop=ALL" in f and "no-new-privileges" in f and "--read-only" in f
    assert "--memory 2048m --memory-swap 2048m" in joined and "--cpus 1.5" in joined
    assert "--pids-limit 100" in joined and "/tmp:" in joined
    assert "--read-only" not in sandbox.isolation_flags(memory_gb=1, cpus=1, pids_limit=0, read_only=False)


@pytest.mark.parametrize("values, chunks, want", [
    (["hunter22"], [b"pw=hunter22\n"], b"pw=[MASKED]\n"),
    (["hunter22"], [b"pw=hun", b"ter22 ok"], b"pw=[MASKED] ok"),
    (["hunter22"], [b"h", b"u", b"n", b"t", b"e", b"r", b"2", b"2"], b"[MASKED]"),
    (["abc"], [b"abc"], b"abc"),  # shorter than MIN_MASKED: not masked (would mask ordinary text)
    (["token-1234", "token-12345678"], [b"token-12345678 token-1234"], b"[MASKED] [MASKED]"),
])
def test_masker_catches_values_across_chunks(values, chunks, want):
    m = sandbox.Masker(values)
    assert b"".join(m.feed(c) for c in chunks) + m.flush() == want


def test_log_pump_writes_masked_output(tmp_path):
    r, w = os.pipe()
    os.write(w, b"start s3cr3t-value end\n")
    os.close(w)
    pump = LogPump(tmp_path / "w.log")
    pump.open()
    pump.masker = sandbox.Masker(["s3cr3t-value"])
    with os.fdopen(r, "rb") as src:
        pump.run(src)
    assert (tmp_path / "w.log").read_bytes() == b"start [MASKED] end\n"


def test_secret_files_live_on_tmpfs_with_mode_0400():
    if not sandbox.is_tmpfs("/dev/shm"):
        pytest.skip("/dev/shm is not a tmpfs here")
    d = sandbox.write_secrets("/dev/shm", "cb-unit-test", {"db-pass": "value-1"})
    try:
        assert stat.S_IMODE((d / "db-pass").stat().st_mode) == 0o400
        assert stat.S_IMODE(d.stat().st_mode) == 0o500
        assert (d / "db-pass").read_text() == "value-1"
    finally:
        sandbox.remove_secrets(d)
    assert not d.exists()


def test_secrets_refuse_a_directory_on_disk(tmp_path):
    with pytest.raises(RuntimeError, match="tmpfs"):
        sandbox.write_secrets(tmp_path, "x", {"a": "value"})


@pytest.mark.parametrize("code, mem, stopped, oom", [
    (137, 0.5, False, True), (137, 0.5, True, False), (1, 0.5, False, False), (137, 0.0, False, False),
])
def test_oom_message(code, mem, stopped, oom):
    msg = sandbox.oom_message(code, mem, stopped)
    assert bool(msg) is oom and (not oom or (msg.startswith("OOM") and "0.5 GiB" in msg))
