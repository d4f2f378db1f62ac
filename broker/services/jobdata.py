"""What a launch carries besides the job's spec: its secrets, dataset mounts, scratch and results.

Called by the scheduling loop right before `executor.launch` (outside any other transaction).
Secrets are decrypted here and each read is audited (`secret.read`) in one transaction that
commits before the launch: a launch never happens with an unaudited read. Dataset mounts are
resolved to host paths and recorded (`dataset_access` + `dataset.mount` in the audit chain) the
same way (`broker.services.datasets`).

Why here and not at submit: a secret rotated while the job waited is delivered in its newest
version; a grant revoked while it waited stops the launch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from broker.errors import Invalid
from broker.models import Job, Project
from broker.ports import LaunchSpec
from broker.services import storage
from broker.services.datasets import dataset_env_name, mounts_for_launch

if TYPE_CHECKING:
    from broker.services.scheduling import SchedulingLoop


def complete(loop: "SchedulingLoop", job: Job, spec: LaunchSpec, *, measure: bool = True) -> LaunchSpec:
    """`spec` with what the launch carries besides the job's own spec. `measure`: walk the
    project's results directory now (what the submit check and usage read); a batch of launches
    measures each project once."""
    settings = loop.settings
    if measure:
        storage.measure(settings, job.project_id)
    changes: dict = {
        "no_egress": (job.flavor_pool or job.pool or "") in set(settings.no_egress_pools),
        "scratch_dir": str(settings.scratch_dir(job.id, job.attempt)),
        "results_dir": str(settings.results_dir(job.project_id)),
    }
    if job.secrets or job.mounts:
        with loop._session() as s:
            project = s.get(Project, job.project_id)
            department = project.department_id if project is not None else None
            if job.secrets:
                if loop.secrets is None:
                    raise Invalid("this broker has no secrets service", code="SECRETS_UNAVAILABLE")
                changes["secrets"] = loop.secrets.read_for_launch(s, job, department)
            if job.mounts:
                got = mounts_for_launch(s, job, department, clock=loop.clock)
                if job.runtime == "process":  # no bind mount for a host process: the path, by name
                    changes["env"] = {**spec.env, **{dataset_env_name(name): host for host, _, _, name in got}}
                else:
                    changes["mounts"] = tuple((host, inside, mode) for host, inside, mode, _ in got)
            s.commit()
    return replace(spec, **changes)
