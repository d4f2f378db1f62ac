"""Admin routes (tenancy, tokens, quotas, settings, audit): thin, one service call each."""
