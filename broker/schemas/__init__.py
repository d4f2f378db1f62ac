"""API shapes, one module per resource: `Create`/`Put`/`Patch` for input (all on the one base
class `base.Input`, which refuses unknown fields), `Public` for output, `List` envelopes.

Limits on command and env are part of the schema so that OpenAPI documents them. Output models
describe what the routes return; the hot submit path builds the same shape as a plain dict
(`broker.services.views`) and tests check it validates against `JobPublic`. Every shape is
importable from here.
"""

from broker.schemas.base import IMAGE, NAME, SLUG, ErrorBody, ErrorResponse, Health, Input, Items
from broker.schemas.catalog import NodeList, NodePublic, PoolList, PoolPublic, ProjectList, ProjectPublic
from broker.schemas.jobs import (
    ENV_NAME, MAX_ARG_CHARS, MAX_COMMAND_ARGS, MAX_COMMAND_CHARS, MAX_ENV_VALUE_CHARS, MAX_ENV_VARS, RESERVED_ENV,
    AttemptPublic, FlavorPublic, JobCreate, JobEventList, JobEventPublic, JobList, JobPublic, JobUsagePublic,
    PendingReasonPublic, PlacementPublic, ResourcesIn, ResourcesPublic,
)

__all__ = [
    "IMAGE", "NAME", "SLUG", "ErrorBody", "ErrorResponse", "Health", "Input", "Items", "NodeList", "NodePublic",
    "PoolList", "PoolPublic", "ProjectList", "ProjectPublic", "ENV_NAME", "MAX_ARG_CHARS", "MAX_COMMAND_ARGS",
    "MAX_COMMAND_CHARS", "MAX_ENV_VALUE_CHARS", "MAX_ENV_VARS", "RESERVED_ENV", "AttemptPublic", "FlavorPublic",
    "JobCreate", "JobEventList", "JobEventPublic", "JobList", "JobPublic", "JobUsagePublic", "PendingReasonPublic",
    "PlacementPublic", "ResourcesIn", "ResourcesPublic",
]
