"""The pool of network namespaces that isolated containers lease (real `ip`, iptables, podman).

Each test makes its own pool (prefix `cbt<hex>`, a state directory under tmp_path, subnet
10.214.0.0/16) and removes it afterwards, so the node's real pool is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from broker.adapters.ray.netpool import AIRGAP, CLEAN, NetPool
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not NetPool.available(), reason="needs root, ip and iptables")]

SUBNET = "10.214.0.0/16"


@pytest.fixture
def pool(tmp_path):
    p = NetPool(prefix=f"cbt{uuid.uuid4().hex[:4]}", subnet=SUBNET, state_dir=tmp_path / "pool", spare=1)
    yield p
    p.destroy()


def inode(p: NetPool, k: int) -> int:
    return os.stat(p.netns_path(k)).st_ino


def settled(p: NetPool) -> dict:
    """Wait for the background recycling and refills: every slot clean or leased."""
    return wait_for(lambda: (s := p.slots()) and all(v["state"] in ("clean", "leased") for v in s.values()) and s, 15)


HOLDER = textwrap.dedent("""
    import sys, time
    from broker.adapters.ray.netpool import NetPool
    p = NetPool(prefix=sys.argv[1], subnet=sys.argv[2], state_dir=sys.argv[3], spare=1)
    lease = p.acquire(sys.argv[4])
    print(lease.index, flush=True)
    sys.stdin.read()  # hold until told (or killed)
    lease.release()
""")


def holder(p: NetPool, owner: str) -> tuple[subprocess.Popen, int]:
    """Another process (a runner) that leases a slot for `owner` and holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, p.prefix, SUBNET, str(p.state_dir), owner],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    return proc, int(proc.stdout.readline())


def test_a_slot_serves_one_attempt_at_a_time(pool):
    a0 = pool.acquire("job-a/1")
    a1 = pool.acquire("job-a/1")  # a gang mate of the same attempt: the same namespace
    b = pool.acquire("job-b/1")
    assert a0.index == a1.index != b.index
    assert a0.network == f"ns:/run/netns/{pool.prefix}-slot-{a0.index}"
    first = inode(pool, a0.index)
    a0.release()
    assert pool.slots()[a0.index]["state"] == "leased"  # a1 still holds it: not recycled, not handed out
    assert pool.acquire("job-c/1").index not in (a0.index, b.index)
    a1.release()  # the last holder: recycled now, a fresh namespace
    assert pool.slots()[a0.index]["state"] == CLEAN
    assert inode(pool, a0.index) != first
    assert pool.acquire("job-d/1", AIRGAP).kind == AIRGAP


def test_the_pool_does_not_grow_with_sequential_attempts(pool):
    for i in range(8):
        pool.acquire(f"job-{i}/1").release()
    assert len(settled(pool)) <= pool.spare + 1


def test_concurrent_runners_never_share_a_slot(pool):
    procs = [holder(pool, f"job-{i}/1") for i in range(6)]
    try:
        got = [k for _, k in procs]
        assert len(set(got)) == 6, got
        state = pool.slots()
        assert {state[k]["owner"] for k in got} == {f"job-{i}/1" for i in range(6)}
    finally:
        for proc, _ in procs:
            proc.communicate("", timeout=30)
    assert all(v["state"] == CLEAN for v in settled(pool).values())


def test_a_crashed_holders_slot_is_recovered(pool):
    proc, k = holder(pool, "job-x/1")
    before = inode(pool, k)
    proc.send_signal(signal.SIGKILL)  # the runner dies without releasing: the kernel drops its flock
    proc.wait(timeout=10)
    assert pool.slots()[k]["state"] == "leased"
    other = pool.acquire("job-y/1")  # finds the stale slot: recycles it, never hands it out as it was
    assert other.index != k or inode(pool, k) != before
    state = settled(pool)
    assert state[k]["state"] in (CLEAN, "leased") and inode(pool, k) != before
    assert len(state) <= 3  # recovered, not leaked: the pool did not grow around the dead lease


@pytest.mark.container
def test_a_reused_slot_cannot_reach_the_previous_jobs_leftovers(pool, busybox_image):
    """A runner dies and leaves its container running (listening) in its slot; the slot is
    recycled and leased again: the new container reaches nothing of the old one, and the old
    one has lost its network."""
    old = f"cbt-leftover-{uuid.uuid4().hex[:6]}"
    proc, k = holder(pool, "job-old/1")
    try:
        subprocess.run(["podman", "run", "-d", "--rm", "--name", old, "--cap-drop=ALL",
                        "--network", f"ns:{pool.netns_path(k)}", busybox_image, "sh", "-c",
                        "while true; do nc -l -p 7000 -e echo leftover; done"], check=True, capture_output=True)
        ok = subprocess.run(["podman", "run", "--rm", "--network", f"ns:{pool.netns_path(k)}", busybox_image,
                             "sh", "-c", "sleep 0.5; nc -w 2 127.0.0.1 7000 </dev/null"], capture_output=True, text=True)
        assert "leftover" in ok.stdout  # the listener is there (the probe below can fail)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        pool.acquire("job-other/1").release()  # finds the stale slot and recycles it
        wait_for(lambda: pool.slots()[k]["state"] == CLEAN, 15)
        leases = [pool.acquire(f"job-new-{i}/1") for i in range(3)]
        new = next(x for x in leases if x.index == k)  # the same slot, reused
        ip = pool.container_ip(k)
        probe = subprocess.run(
            ["podman", "run", "--rm", "--cap-drop=ALL", "--network", new.network, busybox_image, "sh", "-c",
             f"for a in 127.0.0.1 {ip}; do nc -w 2 $a 7000 </dev/null || echo $a=closed; done"],
            capture_output=True, text=True, timeout=60)
        assert "leftover" not in probe.stdout
        assert f"127.0.0.1=closed" in probe.stdout and f"{ip}=closed" in probe.stdout, probe.stdout + probe.stderr
        ifaces = subprocess.run(["podman", "exec", old, "ls", "/sys/class/net"], capture_output=True, text=True)
        assert ifaces.stdout.split() == ["lo"], ifaces.stdout  # the old one: cut off
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", old], capture_output=True)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.container
def test_slots_reach_neither_each_other_nor_the_node(pool, busybox_image):
    a, b = pool.acquire("job-a/1"), pool.acquire("job-b/1")
    server = subprocess.Popen(["ip", "netns", "exec", pool.netns_name(a.index), sys.executable, "-c",
                               "import socket; s=socket.socket(); s.bind(('0.0.0.0', 7001)); s.listen(); "
                               "c,_=s.accept(); c.sendall(b'slot-a'); c.close()"])
    node = subprocess.Popen([sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('0.0.0.0', 7002)); "
                             "s.listen(); c,_=s.accept(); c.sendall(b'node'); c.close()"])
    try:
        time.sleep(0.5)
        targets = {"slot_a": (pool.container_ip(a.index), 7001), "gateway": (pool.gateway_ip(b.index), 7002),
                   "a_gateway": (pool.gateway_ip(a.index), 7002)}
        probes = " ".join(f"nc -w 2 {h} {p} </dev/null || echo {k}=closed;" for k, (h, p) in targets.items())
        out = subprocess.run(["podman", "run", "--rm", "--cap-drop=ALL", "--network", b.network, busybox_image,
                              "sh", "-c", probes], capture_output=True, text=True, timeout=60).stdout
        assert "slot-a" not in out and "node" not in out, out
        assert all(f"{k}=closed" in out for k in targets), out
        # the same probe from the node itself does reach slot a (so the probe can fail)
        import socket

        with socket.create_connection((pool.container_ip(a.index), 7001), timeout=5) as c:
            assert c.recv(16) == b"slot-a"
    finally:
        for p in (server, node):
            p.kill()
            p.wait()


def test_rules_are_installed_once_per_machine(pool):
    pool.acquire("job-a/1")
    listing = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    cin, cfwd, _ = pool.chains()
    assert listing.count(f"-j {cin}") == 1 and listing.count(f"-j {cfwd}") == 1
    NetPool(prefix=pool.prefix, subnet=SUBNET, state_dir=pool.state_dir).ensure_rules()  # another runner
    listing = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert listing.count(f"-j {cin}") == 1
    # an older version's chains (other rules) are replaced by the current ones
    pool.destroy()
    old = NetPool(prefix=pool.prefix, subnet=SUBNET, state_dir=pool.state_dir)
    old._uplinks = lambda: ["lo"]
    old.ensure_rules(verify=True)
    pool.ensure_rules(verify=True)  # what a runner does in the background after trusting rules.json
    listing = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert f"-j {cin}" in listing and f"-j {old.chains()[0]}" not in listing and old.chains()[0] not in listing


def test_a_runner_trusts_the_machines_record_and_verifies_in_the_background(pool, monkeypatch):
    pool.ensure_rules(verify=True)
    runner = NetPool(prefix=pool.prefix, subnet=SUBNET, state_dir=pool.state_dir, spare=1)
    calls = []
    real = runner._run
    monkeypatch.setattr(runner, "_run", lambda argv, **kw: calls.append(argv[0]) or real(argv, **kw))
    runner.ensure_rules()
    assert calls == [] and runner._verify_later  # no iptables on the dispatch path
    subprocess.run(["iptables", "-w", "-D", "INPUT", "-j", pool.chains()[0]], check=True)  # flushed by someone
    runner.acquire("job-a/1")
    wait_for(lambda: not runner._verify_later, 10)
    listing = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True).stdout
    assert f"-j {pool.chains()[0]}" in listing  # reinstalled by the background verification
