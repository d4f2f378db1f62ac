"""Map GPU processes (PIDs from NVML) to the job workers that own them.

The runner starts every worker with BROKER_JOB_ID, BROKER_ATTEMPT and RANK (plus
BROKER_PROJECT) in its environment and, for containers, with the labels broker.job,
broker.attempt, broker.rank and broker.project. Podman containers share the host's PID
view from outside, so NVML's PIDs are host PIDs the agent can look up in /proc.

Order of evidence, first hit wins:
1. /proc/<pid>/environ  - exact and cheap; needs the agent to run as root or as the same user.
2. /proc/<pid>/cgroup   -> podman/docker container id -> `podman inspect` labels, cached per
   container (labels never change after create), so a busy GPU costs one inspect per container.
A PID that matches neither stays unattributed (job_id None): someone ran something outside the
broker, which operations want to see too.

`proc_root` and `inspect` are injectable, so tests run against a fake /proc tree.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from agents.schema import DeviceSample, GpuProcess

log = logging.getLogger("broker_agent.attribution")

ENV_JOB, ENV_ATTEMPT, ENV_RANK, ENV_PROJECT = "BROKER_JOB_ID", "BROKER_ATTEMPT", "RANK", "BROKER_PROJECT"
LABEL_JOB, LABEL_ATTEMPT, LABEL_RANK, LABEL_PROJECT = "broker.job", "broker.attempt", "broker.rank", "broker.project"

# libpod-<id>.scope, docker-<id>.scope, /docker/<id>, crio-<id>, cri-containerd-<id>
_CONTAINER_ID = re.compile(r"(?:libpod-|docker-|crio-|cri-containerd-|/docker/|/libpod/)?([0-9a-f]{64})(?:\.scope)?")


@dataclass(frozen=True, slots=True)
class Owner:
    job_id: str
    attempt: int | None = None
    rank: int | None = None
    project: str | None = None


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        return None


def owner_from_env(env: Mapping[str, str]) -> Owner | None:
    job = env.get(ENV_JOB)
    if not job:
        return None
    rank = env.get(ENV_RANK, env.get("BROKER_RANK"))
    return Owner(job_id=job, attempt=_int(env.get(ENV_ATTEMPT)), rank=_int(rank), project=env.get(ENV_PROJECT) or None)


def owner_from_labels(labels: Mapping[str, str]) -> Owner | None:
    job = labels.get(LABEL_JOB)
    if not job:
        return None
    return Owner(
        job_id=job,
        attempt=_int(labels.get(LABEL_ATTEMPT)),
        rank=_int(labels.get(LABEL_RANK)),
        project=labels.get(LABEL_PROJECT) or None,
    )


def container_id_from_cgroup(text: str) -> str | None:
    """The last 64-hex container id in a /proc/<pid>/cgroup file, or None (pure)."""
    found = None
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for m in _CONTAINER_ID.finditer(path):
            found = m.group(1)
    return found


def podman_labels(container_id: str, timeout_s: float = 5.0) -> dict[str, str] | None:
    """Labels of a container via `podman inspect`; None when podman or the container is gone."""
    try:
        out = subprocess.run(
            ["podman", "inspect", "--format", "{{json .Config.Labels}}", container_id],
            capture_output=True, timeout=timeout_s, check=False, text=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        labels = json.loads(out.stdout.strip() or "null")
    except json.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None


class Attributor:
    def __init__(
        self,
        proc_root: Path | str = "/proc",
        inspect: Callable[[str], Mapping[str, str] | None] = podman_labels,
        cache_size: int = 1024,
    ) -> None:
        self.proc_root = Path(proc_root)
        self._inspect = inspect
        self._containers: OrderedDict[str, Owner | None] = OrderedDict()
        self._cache_size = cache_size
        self.inspect_calls = 0

    def owner(self, pid: int) -> Owner | None:
        base = self.proc_root / str(pid)
        try:
            raw = (base / "environ").read_bytes()
            env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
            found = owner_from_env(env)
            if found is not None:
                return found
        except OSError:  # not permitted or the process is gone: try its cgroup
            pass
        try:
            cid = container_id_from_cgroup((base / "cgroup").read_text(errors="replace"))
        except OSError:
            return None
        return self._container_owner(cid) if cid else None

    def attribute(self, samples: list[DeviceSample]) -> list[DeviceSample]:
        """The samples with each process's job, attempt, rank and project filled in."""
        out = []
        memo: dict[int, Owner | None] = {}
        for s in samples:
            if not s.processes:
                out.append(s)
                continue
            procs = []
            for p in s.processes:
                if p.pid not in memo:
                    memo[p.pid] = self.owner(p.pid)
                procs.append(_with_owner(p, memo[p.pid]))
            out.append(s.model_copy(update={"processes": procs}))
        return out

    def _container_owner(self, cid: str) -> Owner | None:
        if cid in self._containers:
            self._containers.move_to_end(cid)
            return self._containers[cid]
        self.inspect_calls += 1
        labels = self._inspect(cid)
        found = owner_from_labels(labels) if labels else None
        if labels is not None:  # cache answers, not failures: podman may be briefly busy
            self._containers[cid] = found
            if len(self._containers) > self._cache_size:
                self._containers.popitem(last=False)
        return found


def _with_owner(p: GpuProcess, o: Owner | None) -> GpuProcess:
    if o is None:
        return p
    return p.model_copy(update={"job_id": o.job_id, "attempt": o.attempt, "rank": o.rank, "project": o.project})
