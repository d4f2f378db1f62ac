"""Telemetry: ingest of agent reports, raw samples with retention, rollups, node health."""
