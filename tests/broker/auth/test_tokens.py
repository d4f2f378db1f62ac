"""API tokens: format, entropy, hashing, parsing and expiry/revocation states."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from broker.auth.tokens import (
    MAX_TOKEN_CHARS,
    TokenKind,
    TokenState,
    bearer_token,
    hash_token,
    issue_token,
    parse_token,
    token_state,
    verify_token_hash,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("kind, tag", [(TokenKind.USER, "cbk_"), (TokenKind.AGENT, "cba_")])
def test_issue_has_visible_prefix_and_round_trips(kind, tag):
    t = issue_token(kind)
    assert t.plaintext.startswith(tag) and t.prefix.startswith(tag)
    assert t.plaintext.startswith(t.prefix + "_")
    parsed = parse_token(t.plaintext)
    assert parsed is not None and parsed.kind is kind and parsed.prefix == t.prefix
    assert verify_token_hash(t.plaintext, t.hash)


def test_secret_has_at_least_256_bits():
    t = issue_token()
    secret = t.plaintext[len(t.prefix) + 1 :]
    assert len(secret) >= 43  # 43 urlsafe base64 chars = 258 bits >= 32 bytes
    assert len({issue_token().plaintext for _ in range(200)}) == 200


def test_secret_never_in_repr():
    t = issue_token()
    secret = t.plaintext.split("_", 2)[2]
    assert secret not in repr(t)
    assert secret not in repr(parse_token(t.plaintext))


def test_hash_is_sha256_hex_and_not_the_plaintext():
    t = issue_token()
    assert len(t.hash) == 64 and t.plaintext not in t.hash
    assert hash_token(t.plaintext) == t.hash


@pytest.mark.parametrize(
    "name, mutate",
    [
        ("other token", lambda p: issue_token().plaintext),
        ("last char changed", lambda p: p[:-1] + ("A" if p[-1] != "A" else "B")),
        ("prefix swapped", lambda p: "cbk_aaaaaaaa" + p[12:]),
    ],
)
def test_hash_mismatch(name, mutate):
    t = issue_token()
    assert not verify_token_hash(mutate(t.plaintext), t.hash)


@pytest.mark.parametrize(
    "name, raw",
    [
        ("empty", ""),
        ("none", None),
        ("unknown tag", "ghp_abcdefgh_" + "a" * 43),
        ("short secret", "cbk_abcdefgh_" + "a" * 20),
        ("uppercase id", "cbk_ABCDEFGH_" + "a" * 43),
        ("id with 1 (not base32)", "cbk_abcdefg1_" + "a" * 43),
        ("too long", "cbk_abcdefgh_" + "a" * MAX_TOKEN_CHARS),
        ("whitespace", "cbk_abcdefgh_" + "a" * 42 + " "),
        ("newline injection", "cbk_abcdefgh_" + "a" * 43 + "\n"),
        ("jwt", "eyJhbGciOiJSUzI1NiJ9.e30.sig"),
    ],
)
def test_parse_refuses(name, raw):
    assert parse_token(raw) is None


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token


H = timedelta(hours=1)


@pytest.mark.parametrize(
    "name, expires_at, revoked_at, state",
    [
        ("no expiry", None, None, TokenState.VALID),
        ("expires later", NOW + H, None, TokenState.VALID),
        ("expired exactly now", NOW, None, TokenState.EXPIRED),
        ("expired", NOW - H, None, TokenState.EXPIRED),
        ("revoked", NOW + H, NOW - H, TokenState.REVOKED),
        ("revoked and expired: revoked wins", NOW - H, NOW - H, TokenState.REVOKED),
        ("revocation scheduled later", NOW + H, NOW + H, TokenState.VALID),
        ("naive datetimes from sqlite are utc", (NOW - H).replace(tzinfo=None), None, TokenState.EXPIRED),
        (
            "other timezone",
            (NOW + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=2))),
            None,
            TokenState.VALID,
        ),
    ],
)
def test_token_state(name, expires_at, revoked_at, state):
    assert token_state(now=NOW, expires_at=expires_at, revoked_at=revoked_at) is state
