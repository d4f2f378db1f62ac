"""Queries only: no transactions are opened or committed here (services own them)."""
