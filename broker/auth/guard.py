"""Submit-time security checks: may the caller submit here, is the spec allowed. Called first by `JobService.prepare` (both the FastAPI
route and the ASGI fast path go through it).

- Authorization: JOB_SUBMIT on the target project. A foreign project answers exactly like a
  missing one (422 UNKNOWN_PROJECT), so submit cannot probe which projects exist.
- Spec: env names (POSIX, not server-owned such as CUDA_VISIBLE_DEVICES / RANK / NVIDIA_* /
  BROKER_*), env sizes, and for containers the image against the admins' registry allow-list
  (`image_allow_prefixes`): fully qualified references only, matched on path boundaries.
  All problems are reported at once (422, details.problems).
- Max runtime per workload class (admin setting ``max_runtime_s.<class>``): longer -> 422.

The pending cap is not checked here: a count before the write cannot hold against concurrent
submits (or a second broker); the transaction that stores the job counts it
(`broker.services.job_queries.store_jobs`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from broker.errors import Invalid
from broker.auth.limits import Problem, env_problems, image_problems, normalize_prefixes
from broker.auth.policy import Action
from broker.auth.authz import Authz, unknown_project
from broker.ports import Clock

DEFAULT_IMAGE_PREFIXES = ("localhost/",)


class SubmitGuard:
    def __init__(self, settings: Any, engine, authz: Authz, *, ttl_s: float = 5.0,
                 clock: Clock = time.monotonic,
                 admin_settings: Callable[[], dict] | None = None) -> None:
        self.settings, self.engine, self.authz, self._ttl, self._clock = settings, engine, authz, ttl_s, clock
        prefixes = getattr(settings, "image_allow_prefixes", None)
        self._default_prefixes = normalize_prefixes(DEFAULT_IMAGE_PREFIXES if prefixes is None else prefixes)
        self._admin_settings = admin_settings  # effective admin settings (DB overrides), cached below
        self._runtime: tuple[tuple[tuple[str, ...], dict[str, float]], float] | None = None
        self._lock = threading.Lock()
        self._max_env_vars = int(getattr(settings, "max_env_vars", 128))
        self._max_env_value = int(getattr(settings, "max_env_value_chars", 8192))

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._runtime_settings()[0]

    def _runtime_settings(self) -> tuple[tuple[str, ...], dict[str, float]]:
        """(image prefixes, max runtime per class) from the admin settings, cached for ttl_s."""
        if self._admin_settings is None:
            return self._default_prefixes, {}
        now = self._clock()
        cur = self._runtime
        if cur is not None and cur[1] > now:
            return cur[0]
        eff = self._admin_settings()
        prefixes = normalize_prefixes(eff["image_allow_prefixes"]["prefixes"])
        caps = {k.split(".", 1)[1]: v["seconds"] for k, v in eff.items()
                if k.startswith("max_runtime_s.") and v.get("seconds") is not None}
        self._runtime = ((prefixes, caps), now + self._ttl)
        return prefixes, caps

    def check(self, principal, spec) -> None:
        self.authz.require_project(principal, spec.project, Action.JOB_SUBMIT, hidden=unknown_project(spec.project))
        problems = env_problems(spec.env, max_vars=self._max_env_vars, max_value_chars=self._max_env_value,
                                runtime=spec.runtime)
        prefixes, max_runtime = self._runtime_settings()
        if spec.runtime == "container":
            problems += image_problems(spec.image, prefixes, normalized=True)
        cap_s = max_runtime.get(spec.workload_class)
        if cap_s is not None and spec.max_runtime_s > cap_s:
            problems.append(Problem("max_runtime_s", "MAX_RUNTIME_EXCEEDED",
                                    f"{spec.workload_class} jobs may run at most {cap_s:g} s"))
        if problems:
            raise Invalid("; ".join(f"{p.field}: {p.message}" for p in problems[:10]), code=problems[0].code,
                          details={"problems": [p.as_detail() for p in problems]})

    def invalidate(self) -> None:
        self._runtime = None
