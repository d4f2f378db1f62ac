"""Admin use cases: tenancy (departments, projects, users, memberships), API tokens, quotas
and budgets, runtime settings, and the audit log every one of them writes to.

Each service takes the `Authz` it checks with as a required constructor argument and writes
its audit entry in the same transaction as the change it records.
"""
