"""The broker's benchmarks (`broker bench ...`): each starts what it measures for real.

- `submit`: concurrent POST /api/v1/jobs against the API in a subprocess, every 201 verified
  as a row; compared with `baseline` (a plain FastAPI + SQLModel insert);
- `ingest`: agents' telemetry reports into the DB, every acknowledged sample verified;
- `dispatch`: submit -> job process running, against Ray's Jobs API on the same local cluster;
- `kueue`: Kueue's scheduler performance scenario (15,000 jobs, 600 GPUs) through the API, the
  scheduling loop and a fake executor: wall, usage, admission latency, preemptions;
- `dashboards`: every dashboard API at fleet scale (1,000 nodes x 8 GPUs, 30 days of rollups),
  beside a plain query of the same rows;
- `common`: what the HTTP benchmarks share (fresh database, server subprocess, response reader).

Nothing here is imported by the service; these sit beside `cli/` at the top of the layers.
"""
