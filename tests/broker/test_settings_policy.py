"""`scheduling_policy_overrides`: fields of the named preset an operator changes."""

import pytest

from broker.settings import Settings
from scheduler.model import POLICIES


def test_no_overrides_is_the_preset_itself():
    assert Settings().policy() is POLICIES["fair-backfill-preempt"]


def test_overrides_change_only_the_fields_named():
    p = Settings(scheduling_policy_overrides={"reclaim_after_s": 0}).policy()
    assert p.reclaim_after_s == 0 and p.min_runtime_s == POLICIES["fair-backfill-preempt"].min_runtime_s


def test_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="no such policy fields"):
        Settings(scheduling_policy_overrides={"reclaim_after": 0}).policy()
