"""Who is calling and what they may do: everything a request passes before a use case runs.

- pure rules (no DB session, no network, no clock read unless injected), unit-tested alone:
  `tokens` (API token format and hashing), `oidc` (JWT verification, group mapping),
  `policy` (roles x actions x scopes -> ALLOW / HIDE / DENY), `limits` (env, image and body
  limits), `ratelimit` (token buckets, ASGI middleware), `audit` (audit record shapes);
- state on top of them: `authn` (bearer tokens and OIDC to a `Principal`, one order for every
  entry point), `authz` (a principal's grants from the DB, asked of `policy`), `guard` (the
  submit-time checks: may submit here, allowed spec, pending cap).

Invariant: `Authz` is built before any service and handed to each one that needs it; there is
no service without it, so no way to assemble an app that serves a request unauthorized.
Layering: auth sits below `services` (they call it) and above `models`; it imports no service.
"""
