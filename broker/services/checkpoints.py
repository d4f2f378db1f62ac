"""Checkpoint directories of jobs that ended: removed, so a finished job leaves nothing behind.

A checkpointable job's directory is `<checkpoint root>/<project>/<job id>` (both ids are the
broker's own, never a user's path). It must survive every attempt, so it cannot be removed
when an attempt ends; it goes once the job is final (succeeded, failed, cancelled, also a
PENDING job cancelled before it ran again) or no longer known. One periodic sweep covers every
way a job can end, including while the broker was down.

Only what this broker can see is swept: the root of `broker up`, or a shared root every node
mounts. A node-local root on a remote node is swept by nobody (see docs/PREEMPTION.md).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.models import TERMINAL, Job

log = logging.getLogger("broker.checkpoints")
_FINAL = tuple(s.value for s in TERMINAL)


def remove_finished_checkpoints(engine: Engine, root: Path) -> list[str]:
    """Remove the directories of jobs that are final or unknown; returns their job ids."""
    try:
        dirs = {d.name: d for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                for d in p.iterdir() if d.is_dir() and not d.is_symlink()}
    except FileNotFoundError:
        return []
    if not dirs:
        return []
    with Session(engine) as s:
        live = {jid for jid, status in s.execute(select(Job.id, Job.status).where(Job.id.in_(list(dirs))))
                if status not in _FINAL}
    removed = sorted(set(dirs) - live)
    for jid in removed:
        shutil.rmtree(dirs[jid], ignore_errors=True)
        log.info("removed the checkpoint directory of job %s", jid)
    return removed


def last_checkpoint(directory: Path) -> float | None:
    """When the job last wrote its checkpoint directory: the newest modification time of the
    directory itself (a file created or renamed into it) and of its top-level entries (a file
    rewritten in place); None when there is no directory. The scheduler counts a preemption's
    lost work from there."""
    try:
        newest = directory.stat().st_mtime
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:
        return None
    return newest
