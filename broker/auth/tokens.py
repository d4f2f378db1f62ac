"""API tokens: generation, hashing, parsing and usability checks.

Why this shape:
- A token is ``cbk_<id>_<secret>`` (user) or ``cba_<id>_<secret>`` (node agent). The kind is
  visible so a leaked token is recognisable (secret scanners, log review) and an agent token
  pasted into a user tool fails loudly. ``<id>`` is 8 lowercase base32 characters (40 bits):
  it is the *lookup prefix* stored in clear (unique index), shown in listings and audit
  records, and lets the server fetch one row instead of hashing against all rows.
- ``<secret>`` is ``secrets.token_urlsafe(32)``: 256 bits from the OS CSPRNG. With that much
  entropy a plain SHA-256 is the right storage hash (a slow KDF adds nothing against brute
  force of a 256-bit secret and would cost milliseconds on every request).
- The stored hash covers the *whole* token string (prefix included), so a row's prefix and
  hash cannot be recombined with another token's secret.
- Comparison is constant-time (`hmac.compare_digest`).

Invariants: the plaintext is returned exactly once by `issue_token` and never stored; a
token is usable only if it parses, its hash matches, it is not revoked and ``now < expires_at``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = [
    "TokenKind",
    "IssuedToken",
    "ParsedToken",
    "TokenState",
    "issue_token",
    "hash_token",
    "verify_token_hash",
    "parse_token",
    "bearer_token",
    "token_state",
    "MAX_TOKEN_CHARS",
]

SECRET_BYTES = 32  # 256 bits
ID_CHARS = 8
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercase; no '_'
MAX_TOKEN_CHARS = 128  # parse refuses anything longer before hashing (cheap DoS guard)


class TokenKind(str, enum.Enum):
    USER = "user"
    AGENT = "agent"


_KIND_TAG = {TokenKind.USER: "cbk", TokenKind.AGENT: "cba"}
_TAG_KIND = {v: k for k, v in _KIND_TAG.items()}
# tag _ id _ secret; the secret is urlsafe base64 without padding (may contain '_' and '-').
_TOKEN_RE = re.compile(r"(cbk|cba)_([a-z2-7]{8})_([A-Za-z0-9_-]{43,86})")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What `issue_token` returns. `plaintext` goes to the caller once; store the rest."""

    plaintext: str
    prefix: str  # e.g. "cbk_k3j5x9qa": unique lookup key, safe to show and log
    hash: str  # hex sha256 of the plaintext
    kind: TokenKind

    def __repr__(self) -> str:  # never let the secret reach a log through repr()
        return f"IssuedToken(prefix={self.prefix!r}, kind={self.kind.value!r})"


@dataclass(frozen=True, slots=True)
class ParsedToken:
    kind: TokenKind
    prefix: str  # "cbk_<id>"
    plaintext: str

    def __repr__(self) -> str:
        return f"ParsedToken(prefix={self.prefix!r}, kind={self.kind.value!r})"


class TokenState(str, enum.Enum):
    """Why a stored token may be refused. Callers answer 401 for every non-VALID state and
    must not tell the client which one (the state is for the audit log and metrics)."""

    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


def issue_token(kind: TokenKind = TokenKind.USER) -> IssuedToken:
    """Generate a fresh token of `kind`. The caller stores `prefix`, `hash` and `kind`."""
    ident = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_CHARS))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    prefix = f"{_KIND_TAG[kind]}_{ident}"
    plaintext = f"{prefix}_{secret}"
    return IssuedToken(plaintext=plaintext, prefix=prefix, hash=hash_token(plaintext), kind=kind)


def hash_token(plaintext: str) -> str:
    """Hex SHA-256 of the full token string (see module docstring for why not a KDF)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def verify_token_hash(plaintext: str, stored_hash: str) -> bool:
    """Constant-time comparison of the token's hash with the stored one."""
    return hmac.compare_digest(hash_token(plaintext).encode(), stored_hash.encode())


def parse_token(raw: str | None) -> ParsedToken | None:
    """Parse a presented token (the part after ``Bearer ``). None if it is not one of ours.

    Parsing is syntactic only: it never touches the DB and is safe to run on hostile input
    (bounded length, anchored regex without backtracking blow-ups).
    """
    if not raw or len(raw) > MAX_TOKEN_CHARS:
        return None
    m = _TOKEN_RE.fullmatch(raw)
    if m is None:
        return None
    tag, ident, _ = m.groups()
    return ParsedToken(kind=_TAG_KIND[tag], prefix=f"{tag}_{ident}", plaintext=raw)


def bearer_token(authorization: str | None) -> str | None:
    """Extract the token from an ``Authorization`` header value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def _utc(dt: datetime) -> datetime:
    """SQLite hands datetimes back naive: treat naive as UTC so comparisons never raise."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def token_state(
    *, now: datetime, expires_at: datetime | None, revoked_at: datetime | None
) -> TokenState:
    """State of a stored token at `now`. Revocation wins over expiry (it is the stronger fact).

    `expires_at` None means no expiry (only for the bootstrap admin token; issue endpoints
    should always set one). A token is expired from the instant ``now >= expires_at``.
    """
    now = _utc(now)
    if revoked_at is not None and _utc(revoked_at) <= now:
        return TokenState.REVOKED
    if expires_at is not None and now >= _utc(expires_at):
        return TokenState.EXPIRED
    return TokenState.VALID
