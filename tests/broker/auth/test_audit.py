"""Audit records: redaction, diff, source address, hash chain."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from broker.auth.audit import (
    REDACTED,
    Change,
    build_record,
    chain_hash,
    client_address,
    diff,
    redact,
    verify_chain,
)
from broker.auth.tokens import issue_token

AT = datetime(2026, 11, 25, 18, 0, tzinfo=timezone.utc)
TOKEN = issue_token().plaintext
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def record(**kw):
    base = dict(at=AT, actor="alice", action="quota.update", target_kind="quota", target_id="ouh-liver")
    base.update(kw)
    return build_record(**base)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("plain", {"gpus": 4, "name": "x"}, {"gpus": 4, "name": "x"}),
        ("token key", {"token": "abc"}, {"token": REDACTED}),
        ("token hash key", {"token_hash": "ff"}, {"token_hash": REDACTED}),
        ("hash key", {"hash": "ff"}, {"hash": REDACTED}),
        ("password", {"db": {"Password": "p"}}, {"db": {"Password": REDACTED}}),
        ("authorization header", {"Authorization": "Bearer x"}, {"Authorization": REDACTED}),
        ("api key", {"api-key": "k"}, {"api-key": REDACTED}),
        ("env values always", {"env": {"HF_TOKEN": "hf_x", "EPOCHS": "3"}}, {"env": {"HF_TOKEN": REDACTED, "EPOCHS": REDACTED}}),
        ("our token anywhere", {"note": TOKEN}, {"note": REDACTED}),
        ("token in a list", {"args": ["--t", TOKEN]}, {"args": ["--t", REDACTED]}),
        ("jwt anywhere", {"note": JWT}, {"note": REDACTED}),
        ("bearer in text", {"note": "Bearer abc.def"}, {"note": REDACTED}),
        ("innocent key substring", {"monkey": 1, "keyboard": 2}, {"monkey": 1, "keyboard": 2}),
        ("none and bools", {"a": None, "b": True}, {"a": None, "b": True}),
    ],
)
def test_redact(name, value, expected):
    assert redact(value) == expected


def test_redact_truncates_long_and_deep_values():
    deep: dict = {}
    cur = deep
    for _ in range(20):
        cur["x"] = {}
        cur = cur["x"]
    out = json.dumps(redact({"s": "a" * 5000, "d": deep}))
    assert len(out) < 2000 and "TRUNCATED" in out


@pytest.mark.parametrize(
    "name, before, after, changes",
    [
        ("no change", {"a": 1}, {"a": 1}, []),
        ("leaf change", {"q": {"gpus": 4}}, {"q": {"gpus": 8}}, [Change("q.gpus", 4, 8)]),
        ("added key", {}, {"b": 2}, [Change("b", None, 2)]),
        ("removed key", {"b": 2}, {}, [Change("b", 2, None)]),
        ("create", None, {"a": 1, "b": {"c": 2}}, [Change("a", None, 1), Change("b.c", None, 2)]),
        ("delete", {"a": 1}, None, [Change("a", 1, None)]),
        ("list as a whole", {"n": [1, 2]}, {"n": [1, 3]}, [Change("n", [1, 2], [1, 3])]),
        ("scalar", 1, 2, [Change("$", 1, 2)]),
    ],
)
def test_diff(name, before, after, changes):
    assert diff(before, after) == changes


def test_build_record_redacts_before_diffing():
    r = record(
        action="token.create",
        target_kind="token",
        before=None,
        after={"prefix": "cbk_abcdefgh", "hash": "ff" * 32, "plaintext": TOKEN, "role": "member"},
    )
    text = json.dumps(r.as_json())
    assert TOKEN not in text and "ff" * 32 not in text
    assert {c.path for c in r.changes} == {"prefix", "hash", "plaintext", "role"}
    assert r.after["prefix"] == "cbk_abcdefgh"


def test_record_as_json_is_utc_and_serialisable():
    r = record(at=datetime(2026, 11, 25, 19, 0), before={"g": 1}, after={"g": 2}, source="10.0.0.1")
    d = r.as_json()
    assert d["at"] == "2026-11-25T19:00:00+00:00"
    assert d["changes"] == [{"path": "g", "before": 1, "after": 2}]
    json.dumps(d)


def test_outcome_validated():
    with pytest.raises(ValueError):
        record(outcome="maybe")


def test_actor_that_is_a_token_is_redacted():
    assert record(actor=TOKEN).actor == REDACTED


PROXIES = ("10.0.0.0/8",)


@pytest.mark.parametrize(
    "name, peer, xff, expected",
    [
        ("direct", "192.0.2.7", None, "192.0.2.7"),
        ("xff from untrusted peer ignored", "192.0.2.7", "1.2.3.4", "192.0.2.7"),
        ("trusted proxy", "10.0.0.5", "198.51.100.9", "198.51.100.9"),
        ("spoofed left entries ignored", "10.0.0.5", "6.6.6.6, 198.51.100.9", "198.51.100.9"),
        ("chain of trusted proxies", "10.0.0.5", "198.51.100.9, 10.1.1.1", "198.51.100.9"),
        ("garbage", "10.0.0.5", "not-an-ip", "10.0.0.5"),
        ("only proxies", "10.0.0.5", "10.2.2.2", "10.0.0.5"),
        ("no peer", None, "1.2.3.4", None),
    ],
)
def test_client_address(name, peer, xff, expected):
    assert client_address(peer, xff, PROXIES) == expected


def test_hash_chain_detects_edits():
    records = [record(target_id=f"p{i}", before={"g": i}, after={"g": i + 1}) for i in range(4)]
    rows, prev = [], None
    for r in records:
        prev = chain_hash(prev, r)
        rows.append((r.as_json(), prev))
    assert verify_chain(rows) is None
    tampered = [dict(x[0]) for x in rows]
    tampered[2]["actor"] = "mallory"
    assert verify_chain([(t, h) for t, (_, h) in zip(tampered, rows)]) == 2
    assert verify_chain(rows[:1] + rows[2:]) == 1  # a deleted entry breaks the next link
