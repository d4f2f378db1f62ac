"""Node agent: NVML telemetry, host metrics, job attribution, push to the broker, /metrics."""

__version__ = "0.1.0"
