"""Security building blocks of the broker: tokens, OIDC, authorization policy, limits,
rate limiting and audit records.

Every module here is pure (no DB session, no network, no clock read unless a clock is
injected) so that it can be unit-tested in isolation and plugged into the FastAPI app and
the services without dragging state along. Imports: stdlib, PyJWT/cryptography (oidc only).
"""
