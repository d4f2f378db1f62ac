"""Pooled network namespaces for isolated containers: the sandbox's network, made ahead of time.

Standard library only, like the runner and the sandbox: the executor ships it to Ray nodes by value.

Why: a podman bridge network costs ~0.2 s per container start here (netavark builds the bridge,
the veth and the firewall chains at the first container and tears them down at the last, even
when the network already exists), while `podman run --network ns:<path>` into a namespace that
is already set up costs what `--network host` costs (measured in BENCHMARKS.md, "Job isolation").
So the namespaces are made ahead of time and *leased*: a slot is one network namespace,
`/run/netns/<prefix>-slot-<k>`, of one of two kinds:

- `egress`: a veth pair, `<prefix>s<k>` on the node and `eth0` inside, a /30 of `subnet` per
  slot (node .1, container .2, default route via the node), NAT to the node's uplinks;
- `airgap`: loopback only (a gang in an air-gapped pool: its workers share the namespace).

What a slot's container can reach is set once per machine, by interface name, in our own chains
(`rules()`), not per attempt: nothing on the node itself (INPUT: every new connection from a slot is
rejected, so the node's services on any address, the veth's own gateway included, are out of
reach; replies to connections the node opened pass), no other slot and no other container network (FORWARD: a slot's packets leave only
through the node's uplinks, the interfaces of its default routes; no new connection enters a
slot from anywhere but the node), and egress through NAT. A container in a slot has no
capability (the sandbox drops them all), so it cannot change its addresses, routes or interfaces.

Leases, machine-wide (every runner on the machine shares the pool, whichever Ray node it serves):
`<state_dir>/pool.json` says each slot's kind, state (clean | leased | recycling) and owner
(`<job>/<attempt>`), read and written under `pool.lock` (flock: the pool's mutex). Each runner of
the leasing attempt holds a shared flock on `<k>.lock` while its worker lives; the kernel drops
it when the runner's process dies, so a crashed runner (or a lost node) never keeps a slot.

Invariants:
- a slot serves one attempt at a time: `acquire` hands out only a `clean` slot (its namespace
  made after its last use, no holder) or joins the slot its own attempt already leased;
- a leased slot is recycled before it serves again: namespace and veth deleted and made anew
  (`_setup`), by the last holder at `release` (off the dispatch path) or, for a slot whose
  holders died without releasing, by the next `acquire` that finds it (never handed out
  meanwhile). A process left in an old namespace (a container whose runner crashed) keeps that
  namespace, now without any interface: it reaches nothing, and nothing reaches it.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

EGRESS, AIRGAP = "egress", "airgap"
CLEAN, LEASED, RECYCLING = "clean", "leased", "recycling"
DEFAULT_PREFIX = "cb"
DEFAULT_SUBNET = "10.213.0.0/16"
DEFAULT_STATE_DIR = "/run/compute-broker/netpool"
NETNS_DIR = Path("/run/netns")
VERIFY_DELAY_S = 1.0  # where `ip netns` keeps its namespaces


@dataclass
class Lease:
    """One runner's hold on a slot; `network` is podman's `--network` value."""
    pool: "NetPool"
    index: int
    kind: str
    owner: str
    fd: int

    @property
    def network(self) -> str:
        return f"ns:{self.pool.netns_path(self.index)}"

    @property
    def address(self) -> str:
        """The container's address in the slot (127.0.0.1 in an air-gapped one)."""
        return self.pool.container_ip(self.index) if self.kind == EGRESS else "127.0.0.1"

    def release(self) -> None:
        self.pool.release(self)


class NetPool:
    """A machine's pool of network namespaces for sandboxed containers (see the module doc)."""

    def __init__(self, *, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET,
                 state_dir: str | os.PathLike = DEFAULT_STATE_DIR, spare: int = 4, max_slots: int = 1024,
                 run: Callable[..., Any] | None = None, netns_dir: str | os.PathLike = NETNS_DIR) -> None:
        """`run` and `netns_dir`: a fake `ip`/`iptables` and where it keeps namespaces (tests)."""
        self.prefix, self.spare = prefix, spare
        self.net = ipaddress.ip_network(subnet)
        self.max_slots = min(max_slots, self.net.num_addresses // 4)
        self.state_dir = Path(state_dir)
        self._run = run or _run
        self.netns_dir = Path(netns_dir)
        self._rules_ok = False
        self._uplinks_seen: list[str] | None = None
        self._verify_later = False
        self._bg = threading.Lock()  # one background refill per process at a time
        self._threads: list[threading.Thread] = []

    # --- names ---------------------------------------------------------------------------

    def netns_name(self, k: int) -> str:
        return f"{self.prefix}-slot-{k}"

    def netns_path(self, k: int) -> Path:
        return self.netns_dir / self.netns_name(k)

    def host_if(self, k: int) -> str:
        return f"{self.prefix}s{k}"

    def gateway_ip(self, k: int) -> str:
        return str(self.net.network_address + 4 * k + 1)

    def container_ip(self, k: int) -> str:
        return str(self.net.network_address + 4 * k + 2)

    # --- leases --------------------------------------------------------------------------

    @staticmethod
    def available() -> bool:
        """Root, `ip` and `iptables`: what making namespaces and their rules needs."""
        return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("iptables") is not None

    def acquire(self, owner: str, kind: str = EGRESS) -> Lease:
        """Lease a slot of `kind` to `owner` (`<job>/<attempt>`): the slot this owner already
        holds (a gang mate leased it), else a clean one, else a new one (made now: the only case
        that costs a namespace's setup on the dispatch path). Stale slots found on the way (their
        holders died) are recycled in the background. Raises RuntimeError when none can be had."""
        if kind not in (EGRESS, AIRGAP):
            raise ValueError(f"unknown slot kind {kind!r}")
        self.ensure_rules()
        stale: list[tuple[int, int]] = []
        new: tuple[int, int] | None = None
        with self._mutex():
            state = self._load()
            lease = self._join_or_take(state, owner, kind, stale)
            if lease is None:
                k = self._free_index(state)
                fd = self._try_lock(k, fcntl.LOCK_EX)
                if fd is None:
                    raise RuntimeError(f"network slot {k} is locked by another process")
                state[str(k)] = {"kind": kind, "state": RECYCLING, "owner": owner}
                new = (k, fd)
            self._save(state)
        if new is not None:
            k, fd = new
            try:
                self._setup(k, kind)
            except Exception:
                self._set(k, RECYCLING, "")  # a later acquire retries it as stale
                _close(fd)
                raise
            with self._mutex():
                state = self._load()
                state[str(k)] = {"kind": kind, "state": LEASED, "owner": owner}
                self._save(state)
                fcntl.flock(fd, fcntl.LOCK_SH)
            lease = Lease(self, k, kind, owner, fd)
        self._background(stale, kind)
        return lease

    def release(self, lease: Lease) -> None:
        """Drop this runner's hold; the slot's last holder recycles it (a fresh namespace) and
        marks it clean. Call after the container is gone."""
        if lease.fd < 0:
            return
        fd, lease.fd = lease.fd, -1
        with self._mutex():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # only when no gang mate holds it
            except OSError:
                _close(fd)
                return
            self._set_locked(lease.index, RECYCLING, lease.owner)
        self._recycle_and_free(lease.index, lease.kind, fd)

    def prepare(self, kinds: tuple[str, ...] = (EGRESS,)) -> None:
        """Make the machine's rules and `spare` clean slots of each kind ahead of the first
        dispatch (a warm runner calls it at its start). Best effort."""
        try:
            self.ensure_rules(verify=True)
            for kind in kinds:
                self.refill(kind)
        except Exception as e:  # noqa: BLE001 - the lease path makes what is missing
            log.warning("network slots not prepared ahead (the first lease makes them): %s", e)

    def refill(self, kind: str) -> None:
        """Make clean slots until `spare` of `kind` are clean (and recycle stale ones)."""
        stale: list[tuple[int, int]] = []
        todo: list[tuple[int, int]] = []
        with self._mutex():
            state = self._load()
            self._collect_stale(state, stale)
            # slots being recycled or made become clean soon: counted, or concurrent refills overshoot
            clean = sum(1 for s in state.values() if s["kind"] == kind and s["state"] in (CLEAN, RECYCLING))
            for _ in range(max(0, self.spare - clean)):
                k = self._free_index(state)
                fd = self._try_lock(k, fcntl.LOCK_EX)
                if fd is None:
                    break
                state[str(k)] = {"kind": kind, "state": RECYCLING, "owner": ""}
                todo.append((k, fd))
            self._save(state)
        for k, fd in stale:
            self._recycle_and_free(k, self._kind_of(k), fd)
        for k, fd in todo:
            self._recycle_and_free(k, kind, fd)

    def slots(self) -> dict[int, dict[str, str]]:
        """The pool's state (for tests and diagnostics)."""
        with self._mutex():
            return {int(k): dict(v) for k, v in self._load().items()}

    def destroy(self) -> None:
        """Remove every slot and the rules (tests; a node being retired). Slots still held are
        removed too: call it only when nothing runs."""
        for t in self._threads:
            t.join(timeout=30)
        with self._mutex():
            for k in self._load():
                self._teardown(int(k))
            self._save({})
            (self.state_dir / "rules.json").unlink(missing_ok=True)
        self._remove_rules()
        self._rules_ok = False

    # --- rules ---------------------------------------------------------------------------

    def chains(self, uplinks: list[str] | None = None) -> tuple[str, str, str]:
        """Our chains' names: they carry a digest of the rules, so changed rules (new code, new
        uplinks) are installed beside the old ones and replace them without a gap."""
        tag = hashlib.sha256(self._template(self._uplinks() if uplinks is None else uplinks).encode()).hexdigest()[:8]
        p = self.prefix.upper()
        return f"{p}-NP-IN-{tag}", f"{p}-NP-FWD-{tag}", f"{p}-NP-NAT-{tag}"

    def rules(self, uplinks: list[str]) -> str:
        """The iptables-restore payload of the machine's slot rules (see the module doc)."""
        cin, cfwd, cnat = self.chains(uplinks)
        return self._template(uplinks).format(IN=cin, FWD=cfwd, NAT=cnat)

    def _template(self, uplinks: list[str]) -> str:
        slots = f"{self.prefix}s+"
        lines = ["*filter", ":{IN} - [0:0]", ":{FWD} - [0:0]",
                 f"-A {{IN}} -i {slots} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                 f"-A {{IN}} -i {slots} -j REJECT",
                 f"-A {{FWD}} -o {slots} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                 f"-A {{FWD}} -o {slots} -j DROP"]
        lines += [f"-A {{FWD}} -i {slots} -o {u} -j ACCEPT" for u in uplinks]
        lines += [f"-A {{FWD}} -i {slots} -j DROP",
                  "-I INPUT -j {IN}", "-I FORWARD -j {FWD}", "COMMIT",
                  "*nat", ":{NAT} - [0:0]",
                  f"-A {{NAT}} -s {self.net} ! -d {self.net} -j MASQUERADE",
                  "-I POSTROUTING -j {NAT}", "COMMIT"]
        return "\n".join(lines) + "\n"

    def _uplinks(self) -> list[str]:
        if self._uplinks_seen is None:
            self._uplinks_seen = uplinks()
        return self._uplinks_seen

    def ensure_rules(self, verify: bool = False) -> None:
        """Install the slot rules once per machine; rules of an earlier version are removed once
        the current ones are in place. Without `verify`, a process trusts the machine's record
        (`rules.json`, written when they were installed or last verified) and verifies them in
        the background (no iptables run on the dispatch path); with it, it asks iptables."""
        if self._rules_ok and not verify:
            return
        if not verify:
            try:
                seen = json.loads((self.state_dir / "rules.json").read_text())
                self._uplinks_seen = list(seen["uplinks"])
                self._rules_ok, self._verify_later = True, True
                return
            except (OSError, ValueError, KeyError, TypeError):
                log.info("no usable record of the network rules: asking iptables")
        with self._mutex():
            self._uplinks_seen = None  # asked afresh: an uplink may have changed
            cin = self.chains()[0]
            r = self._run(["iptables", "-w", "-S", "INPUT"])
            if f"-j {cin}" not in r.stdout:
                r = self._run(["iptables-restore", "-w", "--noflush"], input=self.rules(self._uplinks()))
                if r.returncode != 0:
                    raise RuntimeError(f"iptables-restore failed: {r.stderr.strip()[:300]}")
                self._remove_rules(keep=self.chains())
            (self.state_dir / "rules.json").write_text(json.dumps({"uplinks": self._uplinks(),
                                                                   "chains": self.chains()}))
        self._rules_ok, self._verify_later = True, False

    def _remove_rules(self, keep: tuple[str, ...] = ()) -> None:
        """Remove our chains (every version of them) but `keep`."""
        mine = re.compile(rf"^{re.escape(self.prefix.upper())}-NP-(IN|FWD|NAT)-[0-9a-f]{{8}}$")
        for table, parents in (("filter", ("INPUT", "FORWARD")), ("nat", ("POSTROUTING",))):
            for parent in parents:
                for line in self._run(["iptables", "-w", "-t", table, "-S", parent]).stdout.splitlines():
                    parts = line.split()
                    if parts[:1] == ["-A"] and parts[2:3] == ["-j"] and len(parts) == 4 \
                            and mine.match(parts[3]) and parts[3] not in keep:
                        self._run(["iptables", "-w", "-t", table, "-D", parent, "-j", parts[3]])
            for line in self._run(["iptables", "-w", "-t", table, "-S"]).stdout.splitlines():
                parts = line.split()
                if parts[:1] == ["-N"] and len(parts) == 2 and mine.match(parts[1]) and parts[1] not in keep:
                    self._run(["iptables", "-w", "-t", table, "-F", parts[1]])
                    self._run(["iptables", "-w", "-t", table, "-X", parts[1]])

    # --- internals -----------------------------------------------------------------------

    def _join_or_take(self, state: dict, owner: str, kind: str,
                      stale: list[tuple[int, int]]) -> Lease | None:
        for k, s in state.items():  # a gang mate's lease: share it
            if s["state"] == LEASED and s["owner"] == owner and s["kind"] == kind:
                fd = self._try_lock(int(k), fcntl.LOCK_SH)
                if fd is not None:
                    return Lease(self, int(k), kind, owner, fd)
        self._collect_stale(state, stale)
        for k, s in sorted(state.items(), key=lambda kv: int(kv[0])):
            if s["state"] == CLEAN and s["kind"] == kind:
                fd = self._try_lock(int(k), fcntl.LOCK_EX)
                if fd is None:
                    continue
                state[k] = {"kind": kind, "state": LEASED, "owner": owner}
                fcntl.flock(fd, fcntl.LOCK_SH)  # still under the pool mutex: nobody sees the gap
                return Lease(self, int(k), kind, owner, fd)
        return None

    def _collect_stale(self, state: dict, stale: list[tuple[int, int]]) -> None:
        """Leased or recycling slots nobody holds (their runner died): take them for recycling."""
        taken = {k for k, _ in stale}
        for k, s in state.items():
            gone = s["state"] == CLEAN and not self.netns_path(int(k)).exists()  # removed behind our back
            if (s["state"] in (LEASED, RECYCLING) or gone) and int(k) not in taken:
                fd = self._try_lock(int(k), fcntl.LOCK_EX)
                if fd is not None:
                    s["state"] = RECYCLING
                    stale.append((int(k), fd))

    def _background(self, stale: list[tuple[int, int]], kind: str) -> None:
        """Recycle the stale slots taken and top the clean ones of `kind` up, off the caller's path."""
        def work() -> None:
            with self._bg:
                if self._verify_later:
                    time.sleep(VERIFY_DELAY_S)  # after the container's start, not beside it
                    self.ensure_rules(verify=True)
                for k, fd in stale:
                    self._recycle_and_free(k, self._kind_of(k), fd)
                self.refill(kind)
        t = threading.Thread(target=work, name="netpool-refill", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _kind_of(self, k: int) -> str:
        with self._mutex():
            return self._load().get(str(k), {}).get("kind", EGRESS)

    def _recycle_and_free(self, k: int, kind: str, fd: int) -> None:
        """With `k` locked exclusively: a fresh namespace, then clean (or left recycling, and
        retried by a later acquire, when the setup fails)."""
        try:
            self._setup(k, kind, background=True)
        except Exception:  # noqa: BLE001 - stays RECYCLING: a later acquire retries it
            _close(fd)
            return
        with self._mutex():
            self._set_locked(k, CLEAN, "")
            _close(fd)

    def _setup(self, k: int, kind: str, background: bool = False) -> None:
        """A fresh namespace for slot `k` (whatever was there first removed): two `ip -batch`
        runs, one on the node and one inside. In the background (recycling, refills) at a lower
        CPU priority, so dispatches running meanwhile go first."""
        ns = self.netns_name(k)
        self._teardown(k, background)
        host, inside = [f"netns add {ns}"], ["link set lo up"]
        if kind == EGRESS:
            h, gw, ip = self.host_if(k), self.gateway_ip(k), self.container_ip(k)
            host += [f"link add {h} type veth peer name eth0 netns {ns}", f"addr add {gw}/30 dev {h}",
                     f"link set {h} up"]
            inside += [f"addr add {ip}/30 dev eth0", "link set eth0 up", f"route add default via {gw}"]
        for argv, lines in ((["ip", "-batch", "-"], host), (["ip", "-n", ns, "-batch", "-"], inside)):
            r = self._run(_niced(argv, background), input="\n".join(lines) + "\n")
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()[:300]}")

    def _teardown(self, k: int, background: bool = False) -> None:
        """Cut the slot's veth (a process left in the old namespace keeps no interface) and drop
        the namespace's name."""
        self._run(_niced(["ip", "-force", "-batch", "-"], background),
                  input=f"link del {self.host_if(k)}\nnetns del {self.netns_name(k)}\n")

    def _free_index(self, state: dict) -> int:
        for k in range(self.max_slots):
            if str(k) not in state:
                return k
        raise RuntimeError(f"the network pool is full ({self.max_slots} slots)")

    def _set(self, k: int, st: str, owner: str) -> None:
        with self._mutex():
            self._set_locked(k, st, owner)

    def _set_locked(self, k: int, st: str, owner: str) -> None:
        state = self._load()
        state.setdefault(str(k), {"kind": EGRESS, "state": st, "owner": owner})
        state[str(k)].update(state=st, owner=owner)
        self._save(state)

    def _try_lock(self, k: int, how: int) -> int | None:
        fd = os.open(self.state_dir / f"{k}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return fd
        except OSError:
            os.close(fd)
            return None

    def _mutex(self) -> "_Flock":
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _Flock(self.state_dir / "pool.lock")

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads((self.state_dir / "pool.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict) -> None:
        tmp = self.state_dir / "pool.json.tmp"
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, self.state_dir / "pool.json")


class _Flock:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_Flock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def uplinks() -> list[str]:
    """The node's uplinks: the interfaces of its IPv4 default routes."""
    r = _run(["ip", "-4", "route", "show", "default"])
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if "dev" in parts and parts.index("dev") + 1 < len(parts):
            dev = parts[parts.index("dev") + 1]
            if dev not in out:
                out.append(dev)
    return out


def _niced(argv: list[str], background: bool) -> list[str]:
    return ["nice", "-n", "10", *argv] if background and shutil.which("nice") else argv


def _run(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30, check=False)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):  # already closed: closing is idempotent here
        os.close(fd)


_DEFAULT: dict[str, NetPool] = {}  # no lock here: this module travels by value (a lock does not pickle)


def default_pool(subnet: str = DEFAULT_SUBNET) -> NetPool:
    """This process's handle on the machine's pool (the runner's). Two handles made by a race
    would be harmless: every decision is taken under the pool's file lock."""
    pool = _DEFAULT.get(subnet)
    if pool is None:
        pool = _DEFAULT.setdefault(subnet, NetPool(subnet=subnet))
    return pool
