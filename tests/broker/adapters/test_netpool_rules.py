"""The namespace pool's pure parts: the rules it installs, slot addresses and names, a fake
`ip`/`iptables` for the lease bookkeeping (the real thing: tests/integration/test_netpool.py)."""

from __future__ import annotations

import subprocess

import pytest

from broker.adapters.ray import netpool
from broker.adapters.ray.netpool import CLEAN, EGRESS, NetPool

SUBNET = "10.214.0.0/16"


def test_rules_payload_names_the_uplinks():
    p = NetPool(prefix="cbq", subnet=SUBNET, state_dir="/nonexistent")
    text = p.rules(["eth0", "eth1"])
    cin, cfwd, cnat = p.chains(["eth0", "eth1"])
    assert cin.startswith("CBQ-NP-IN-") and len(cfwd) <= 28  # iptables' limit on chain names
    assert f"-A {cin} -i cbqs+ -j REJECT" in text
    assert text.index(f"-A {cin} -i cbqs+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT") < \
        text.index(f"-A {cin} -i cbqs+ -j REJECT")  # replies to the node's own connections pass
    assert f"-A {cfwd} -i cbqs+ -o eth0 -j ACCEPT" in text and f"-A {cfwd} -i cbqs+ -o eth1 -j ACCEPT" in text
    assert text.index(f"-A {cfwd} -o cbqs+ -j DROP") < text.index("-i cbqs+ -o eth0")  # nothing new enters a slot
    assert text.index("-i cbqs+ -o eth1 -j ACCEPT") < text.index(f"-A {cfwd} -i cbqs+ -j DROP")  # the rest: dropped
    assert f"-A {cnat} -s {SUBNET} ! -d {SUBNET} -j MASQUERADE" in text
    assert p.chains(["eth0"]) != (cin, cfwd, cnat)  # other rules, other chains: replaced without a gap


def test_no_uplink_means_no_egress():
    text = NetPool(prefix="cbq", subnet=SUBNET, state_dir="/nonexistent").rules([])
    assert " -j ACCEPT" not in text.split("-o cbqs+ -j DROP")[1].split("COMMIT")[0]


@pytest.mark.parametrize("k, gw, ip, iface, ns", [
    (0, "10.214.0.1", "10.214.0.2", "cbqs0", "cbq-slot-0"),
    (3, "10.214.0.13", "10.214.0.14", "cbqs3", "cbq-slot-3"),
    (64, "10.214.1.1", "10.214.1.2", "cbqs64", "cbq-slot-64"),
])
def test_slot_addresses_and_names(k, gw, ip, iface, ns):
    p = NetPool(prefix="cbq", subnet=SUBNET, state_dir="/nonexistent")
    assert (p.gateway_ip(k), p.container_ip(k), p.host_if(k), p.netns_name(k)) == (gw, ip, iface, ns)
    assert p.max_slots == 1024 and NetPool(subnet="10.0.0.0/28", state_dir="/x").max_slots == 4


class FakeIp:
    """Records what the pool runs; every command succeeds."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv, input=None):
        self.calls.append((list(argv), input))
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")


def test_lease_bookkeeping_with_a_fake_ip(tmp_path):
    fake = FakeIp()
    p = NetPool(prefix="cbq", subnet=SUBNET, state_dir=tmp_path, spare=0, run=fake, netns_dir=tmp_path / "netns")
    p._rules_ok = True
    a = p.acquire("job-a/1")  # none clean: made now
    assert a.network == f"ns:{tmp_path / 'netns' / 'cbq-slot-0'}" and a.kind == EGRESS
    batches = [inp for argv, inp in fake.calls if "-batch" in argv and inp and "netns add" in inp]
    assert batches and "link add cbqs0 type veth peer name eth0 netns cbq-slot-0" in batches[0]
    b = p.acquire("job-a/1")  # a gang mate: the same slot, nothing made
    assert b.index == a.index
    c = p.acquire("job-c/1")
    assert c.index != a.index
    a.release()
    b.release()  # the last holder recycles: niced, in the background of the dispatch path
    assert p.slots()[a.index] == {"kind": EGRESS, "state": CLEAN, "owner": ""}
    assert any(argv[:3] == ["nice", "-n", "10"] for argv, _ in fake.calls) or not netpool.shutil.which("nice")
