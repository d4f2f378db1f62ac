"""Telemetry use cases: ingest of agent reports, raw samples with retention, rollups, node
health, and the usage queries the job and telemetry routes read."""
