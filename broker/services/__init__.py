"""Use cases: each one a method of a service that owns its transactions, and the SQL it runs.

The rule for queries: SQL lives in services. A query used by one use case sits next to the
transaction that runs it; queries several use cases share sit in a `*_queries.py` module
here (`job_queries`, `catalog_queries`, `scheduling_queries`, `telemetry/queries`). There
is no separate repository layer. Why: the broker's queries are mostly one-off aggregates
(overview, usage, audit, rollups) written for a single use case; moving each behind a
repository function added an indirection per query without a second caller, and a rule that
held for a fifth of the queries was no rule. dstack keeps SQL in its services for the same
reason. What stays strict: routes (`broker.api`) run no SQL and open no session, services
import nothing of FastAPI or Starlette, and `broker.auth` keeps the few queries
authorization needs (token lookup, grants) to itself (import-linter contracts).

Every service is built once, with its `Authz`, by `wiring.build_services`.
"""
