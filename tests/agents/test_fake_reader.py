import json

import pytest

from agents.agent import encode
from agents.fake import OPTIONAL_FIELDS, FakeReader, utilization
from tests.agents.builders import report


@pytest.mark.parametrize(
    "pattern,index,k,expected",
    [
        ("idle", 0, 5, 0.0),
        ("busy", 3, 7, 95.0),
        ("sawtooth", 0, 3, 30.0),
        ("sawtooth", 0, 12, 20.0),
        ("sine", 0, 0, 50.0),
        ("sine", 0, 15, 95.0),  # quarter period of 60 reads
    ],
)
def test_utilization_patterns(pattern, index, k, expected):
    assert utilization(pattern, index, k) == pytest.approx(expected)


def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError):
        FakeReader(1, patterns=("warp-speed",))


def test_same_script_same_numbers():
    a, b = FakeReader(3), FakeReader(3)
    a.init(), b.init()
    for t in range(5):
        assert a.read(float(t)) == b.read(float(t))


def test_uuid_differs_per_node_and_device():
    a, b = FakeReader(2, node_seed="a"), FakeReader(2, node_seed="b")
    assert len({*a.uuids, *b.uuids}) == 4


@pytest.mark.parametrize("field", sorted(OPTIONAL_FIELDS))
def test_unsupported_field_is_absent_on_the_wire(field):
    r = FakeReader(1, unsupported=[field])
    r.init()
    s = r.read(1.0)[0]
    assert getattr(s, field) is None
    wire = json.loads(encode(report(gpus=[s])))["gpus"][0]
    assert field not in wire
    assert "uuid" in wire and "memory_used_mb" in wire


def test_unsupported_only_for_optional_fields():
    with pytest.raises(ValueError):
        FakeReader(1, unsupported=["uuid"])


def test_xid_event_reported_once_on_its_device():
    r = FakeReader(2)
    r.init()
    r.inject_xid(1, 79, "GPU has fallen off the bus")
    first = r.read(1.0)
    second = r.read(2.0)
    assert first[0].xid_events == []
    assert [(e.xid, e.ts, e.message) for e in first[1].xid_events] == [(79, 1.0, "GPU has fallen off the bus")]
    assert second[1].xid_events == []


def test_energy_counter_grows_with_power_and_time():
    r = FakeReader(1, patterns=("busy",))
    r.init()
    e0 = r.read(10.0)[0].energy_mj
    s1 = r.read(12.0)[0]
    assert s1.energy_mj - e0 == int(s1.power_w * 2.0 * 1000)


def test_processes_and_ecc_injection():
    r = FakeReader(2)
    r.init()
    r.set_processes(0, [(4242, 1024.0)])
    r.inject_ecc_uncorrectable(1, 2)
    s = r.read(0.0)
    assert [(p.pid, p.used_memory_mb, p.job_id) for p in s[0].processes] == [(4242, 1024.0, None)]
    assert s[1].processes == [] and s[1].ecc_uncorrectable == 2 and s[0].ecc_uncorrectable == 0
