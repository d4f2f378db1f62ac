"""Audit records: who did what to which object, when, from where, and what changed.

Pure: this module builds and checks records; the table and its writer live in the service
layer. Why a builder: every admin change and job action must produce the same shape, with
secrets removed *before* the record exists (an audit log is read by more people than the
secrets it would otherwise carry), and with a diff so a reviewer sees the change at a glance.

Redaction (`redact`): values under secret-looking keys (token, secret, password, hash, key,
authorization, cookie, credential) become ``"[REDACTED]"``; job env values are always
redacted (names kept: they explain a change, values may be credentials); strings that look
like our API tokens, JWTs or bearer headers are redacted wherever they appear. Long strings
and deep structures are truncated so a record stays small.

Tamper evidence: `chain_hash` links each record to the previous one (sha256 over the previous
hash and the record's canonical JSON); `verify_chain` finds the first broken link. The table
is append-only (no update/delete routes); the chain makes a silent edit detectable.

Invariant: no value in a built record matches a secret pattern or sits under a secret key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "REDACTED",
    "AuditRecord",
    "Change",
    "build_record",
    "redact",
    "diff",
    "client_address",
    "chain_hash",
    "verify_chain",
]

REDACTED = "[REDACTED]"
TRUNCATED = "[TRUNCATED]"
MAX_STRING = 1024
MAX_DEPTH = 8
MAX_ITEMS = 200

_SECRET_KEY = re.compile(
    r"(token|secret|passw(or)?d|authori[sz]ation|api[_-]?key|private[_-]?key|credential|cookie|"
    r"^hash$|_hash$|^key$|signature)",
    re.IGNORECASE,
)
_ENV_KEYS = frozenset({"env", "environment"})
_SECRET_VALUE = re.compile(
    r"(cb[ka]_[a-z2-7]{8}_[A-Za-z0-9_-]{20,}"  # our API tokens
    r"|eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|(?i:bearer)\s+\S+)"  # bearer headers
)


@dataclass(frozen=True, slots=True)
class Change:
    path: str  # dotted path, e.g. "quota.innovation/a100.nominal.gpus"
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime  # UTC
    actor: str  # user name / subject; "system" for the broker itself
    actor_kind: str  # "user" | "agent" | "system"
    action: str  # dotted verb: "quota.update", "token.revoke", "job.submit", "job.cancel"
    target_kind: str  # "quota", "project", "job", "token", ...
    target_id: str
    department: str | None = None  # for department-admins' filtered view
    project: str | None = None
    source: str | None = None  # client address (see `client_address`)
    token_prefix: str | None = None  # which credential acted (never the token itself)
    outcome: str = "ok"  # "ok" | "denied" | "failed"
    request_id: str | None = None
    before: Any = None
    after: Any = None
    changes: tuple[Change, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (datetime as ISO 8601 UTC), canonical for hashing."""
        d = asdict(self)
        d["at"] = self.at.astimezone(timezone.utc).isoformat()
        d["changes"] = [asdict(c) for c in self.changes]
        return d


def build_record(
    *,
    at: datetime,
    actor: str,
    action: str,
    target_kind: str,
    target_id: str,
    actor_kind: str = "user",
    before: Any = None,
    after: Any = None,
    department: str | None = None,
    project: str | None = None,
    source: str | None = None,
    token_prefix: str | None = None,
    outcome: str = "ok",
    request_id: str | None = None,
) -> AuditRecord:
    """Build one record; `before`/`after` are redacted first, then diffed."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    if outcome not in ("ok", "denied", "failed"):
        raise ValueError(f"unknown audit outcome {outcome!r}")
    b = redact(before) if before is not None else None
    a = redact(after) if after is not None else None
    return AuditRecord(
        at=at.astimezone(timezone.utc),
        actor=_clip(actor),
        actor_kind=actor_kind,
        action=action,
        target_kind=target_kind,
        target_id=_clip(str(target_id)),
        department=department,
        project=project,
        source=source,
        token_prefix=token_prefix,
        outcome=outcome,
        request_id=request_id,
        before=b,
        after=a,
        changes=tuple(diff(b, a)),
    )


def _clip(s: str) -> str:
    if _SECRET_VALUE.search(s):
        return REDACTED
    return s if len(s) <= MAX_STRING else s[:MAX_STRING] + "..." + TRUNCATED


def redact(value: Any, *, _depth: int = 0, _env: bool = False) -> Any:
    """A JSON-ready copy of `value` with secrets removed (see module docstring)."""
    if _depth > MAX_DEPTH:
        return TRUNCATED
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                out["..."] = TRUNCATED
                break
            key = str(k)
            if _env:
                out[_clip(key)] = REDACTED
            elif _SECRET_KEY.search(key):
                out[key] = REDACTED
            else:
                out[key] = redact(v, _depth=_depth + 1, _env=key.lower() in _ENV_KEYS)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        res = [redact(v, _depth=_depth + 1) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            res.append(TRUNCATED)
        return res
    if _env:
        return REDACTED
    if isinstance(value, str):
        return _clip(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return _clip(str(value))


def diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """Changed leaves between two JSON-like values (dict keys recurse; lists compare whole)."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: list[Change] = []
        for k in sorted(set(before) | set(after), key=str):
            p = f"{path}.{k}" if path else str(k)
            out.extend(diff(before.get(k), after.get(k), p))
        return out
    if isinstance(before, Mapping) and after is None:
        return [c for k in sorted(before, key=str) for c in diff(before[k], None, f"{path}.{k}" if path else str(k))]
    if isinstance(after, Mapping) and before is None:
        return [c for k in sorted(after, key=str) for c in diff(None, after[k], f"{path}.{k}" if path else str(k))]
    if before == after:
        return []
    return [Change(path or "$", before, after)]


def client_address(
    peer: str | None,
    forwarded_for: str | None = None,
    trusted_proxies: Sequence[str] = (),
) -> str | None:
    """The client's address for the record.

    ``X-Forwarded-For`` is believed only when the direct peer is a trusted proxy, and then
    the rightmost address that is not itself a trusted proxy is taken (left entries are
    client-controlled and can be forged).
    """
    nets = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in nets)

    if peer is None or not forwarded_for or not trusted(peer):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: fall back to what we saw
    return peer


def chain_hash(prev_hash: str | None, record: AuditRecord | Mapping[str, Any]) -> str:
    """sha256(prev_hash || canonical JSON of the record), hex."""
    data = record.as_json() if isinstance(record, AuditRecord) else dict(record)
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(((prev_hash or "") + "\n" + canon).encode()).hexdigest()


def verify_chain(entries: Iterable[tuple[Mapping[str, Any] | AuditRecord, str]]) -> int | None:
    """Index of the first entry whose stored hash does not match, or None if all do."""
    prev: str | None = None
    for i, (record, stored) in enumerate(entries):
        h = chain_hash(prev, record)
        if h != stored:
            return i
        prev = stored
    return None
