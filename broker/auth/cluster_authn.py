"""Node agents on Kubernetes authenticate with their projected ServiceAccount token.

No shared agent Secret: each agent pod mounts a short-lived token Kubernetes issues for it
(audience `k8s_agent_audience`, rotated by the kubelet). The broker sends it to the API
server's TokenReview (`Cluster.review_token`) and accepts it only when Kubernetes says it is
valid for the broker's audience, belongs to the agent ServiceAccount in the agent namespace,
and is bound to a pod; the principal is then an agent bound to the node that pod runs on,
so it may push telemetry for that node only (the telemetry route checks the node).

`ClusterIdentityAuth` is an `IdentityTokens` (broker.auth.authn) placed in front of OIDC:
a JWT carrying the `kubernetes.io` claim is routed here, any other JWT to OIDC (when
configured). A verified identity is cached by the token's hash until `ttl_s` or the token's
expiry, whichever is first; a refusal is never cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from typing import Callable

from broker.auth.authn import IdentityTokens, Principal
from broker.auth.tokens import bearer_token, hash_token
from broker.errors import Unauthorized, Unavailable
from broker.ports import ClusterIdentity, Clock


def jwt_claims(token: str) -> dict:
    """The claims of a JWT, NOT verified: for routing, and for the expiry of a token that
    Kubernetes has just verified."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


class ClusterIdentityAuth:
    def __init__(self, review: Callable[[str], ClusterIdentity | None], *, namespace: str, service_account: str,
                 fallback: IdentityTokens | None = None, ttl_s: float = 60.0, clock: Clock = time.time) -> None:
        self.review, self.namespace, self.service_account = review, namespace, service_account
        self.fallback, self.ttl_s, self.clock = fallback, ttl_s, clock
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def looks_like_jwt(self, authorization: str | None) -> bool:
        raw = bearer_token(authorization)
        if raw is not None and "kubernetes.io" in jwt_claims(raw):
            return True
        return self.fallback is not None and self.fallback.looks_like_jwt(authorization)

    def authenticate(self, authorization: str | None) -> Principal | None:
        raw = bearer_token(authorization)
        if raw is None or "kubernetes.io" not in jwt_claims(raw):
            return self.fallback.authenticate(authorization) if self.fallback is not None else None
        key, now = hash_token(raw), self.clock()
        hit = self._cache.get(key)
        if hit is not None and now < hit[1]:
            return hit[0]
        try:
            ident = self.review(raw)
        except Exception as e:  # the API server is unreachable or refuses the broker: retry later
            raise Unavailable("Kubernetes could not review the token now", code="TOKEN_REVIEW_UNAVAILABLE",
                              details={"error": type(e).__name__}, headers={"Retry-After": "5"}) from None
        if ident is None:
            raise _refused("Kubernetes did not accept the ServiceAccount token")
        if (ident.namespace, ident.service_account) != (self.namespace, self.service_account):
            raise _refused(f"ServiceAccount {ident.namespace}/{ident.service_account} is not the node agent's")
        p = Principal(token_id="k8s:" + hashlib.sha256(f"{ident.namespace}/{ident.pod}".encode()).hexdigest()[:24],
                      kind="agent", role="agent", name=f"{ident.namespace}/{ident.pod}", node_id=ident.node,
                      expires_at=ident.expires_at)
        until = min(now + self.ttl_s, ident.expires_at or float("inf"))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (p, until)
        return p


def _refused(message: str) -> Unauthorized:
    return Unauthorized(message, code="UNAUTHORIZED", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
