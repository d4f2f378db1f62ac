"""The container sandbox of a worker: podman flags, the gang network, secret files, log masking.

Standard library only, like the runner: the executor ships this module to Ray nodes by value.

What an isolated container gets (`isolation_flags`), and why:
- its own network namespace (`network_for`): never the node's, so 127.0.0.1 inside is the
  container's own and the node's loopback services (broker API, agent exporter, PostgreSQL,
  Ray) are out of reach. A one-worker job in an air-gapped pool gets `--network none`. Any
  other job whose workers share a node gets the attempt's own network: a namespace leased
  from the node's pool (`netpool`: made ahead of time, one attempt at a time, recycled after;
  the gang's workers share it and reach each other on 127.0.0.1, any port; egress through NAT,
  or loopback only in an air-gapped pool), so no network is created, no netavark runs and no
  iptables rule changes on the dispatch path. The pool's rules, installed once per machine,
  drop what a slot sends to the node itself and to any other slot or container network.
  Where the pool cannot serve (a service replica's published port, no root, no `ip`), a
  podman bridge per attempt (`cb-<job>-a<attempt>`) as before: its workers find each other by
  container name (podman's DNS), an air-gapped pool's is `--internal`, and `guard_gateway`
  refuses what it sends to the node (DNS to podman's resolver excepted) and to other
  container networks. Gangs across nodes are not covered (see docs/SECURITY.md: they fall back
  to the host network; untested here).
- `--cap-drop=ALL` and `no-new-privileges`: no capability, no setuid gain;
- `--read-only` root with a writable tmpfs /tmp (unless the job asks for a writable root);
- `--pids-limit`, `--memory` (= swap: no swap beyond it) and `--cpus` as admitted.

Secrets: `write_secrets` puts each value in a file (0400) in a 0700 directory on a tmpfs of the
node (`/dev/shm` by default), which the runner bind-mounts read-only at /run/secrets and
deletes when the worker ends: a value never reaches a disk, podman's argv, or an env.
`Masker` replaces any secret value in the worker's output before it reaches the log file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Mapping

SECRETS_IN_CONTAINER = "/run/secrets"
MASK = b"[MASKED]"
MIN_MASKED = 4  # shorter values would mask ordinary output; such secrets are refused at write
GIB = 1 << 30


def isolation_flags(*, memory_gb: float, cpus: float, pids_limit: int, read_only: bool = True) -> list[str]:
    flags = ["--cap-drop=ALL", "--security-opt", "no-new-privileges"]
    if read_only:
        flags += ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,nosuid,nodev,mode=1777"]
    if pids_limit > 0:
        flags += ["--pids-limit", str(int(pids_limit))]
    if memory_gb > 0:
        mem = f"{max(6, int(memory_gb * 1024))}m"  # podman refuses less than 6 MiB
        flags += ["--memory", mem, "--memory-swap", mem]
    if cpus > 0:
        flags += ["--cpus", f"{cpus:g}"]
    return flags


def gang_network(job_id: str, attempt: int) -> str:
    return f"cb-{job_id}-a{attempt}"


def network_for(*, isolated: bool, world_size: int, gang_local: bool, no_egress: bool,
                default: str = "host") -> tuple[str, bool]:
    """(podman --network value, whether the attempt needs its own network: a leased namespace
    of the node's pool, or a podman bridge where the pool cannot serve; the runner decides)."""
    if not isolated:
        return default, False
    if world_size == 1 and no_egress:
        return "none", False
    if not gang_local and not no_egress:
        return "host", False  # workers on several nodes: no cross-node network here (documented)
    return "", True


def ensure_network(name: str, *, internal: bool, env: Mapping[str, str], dns: bool = True) -> None:
    """Create the gang's podman network unless it exists (several runners race to create it).
    `dns` False (a one-worker job: nobody to look up) spares starting podman's resolver."""
    argv = ["podman", "network", "create", *(["--internal"] if internal else []),
            *([] if dns else ["--disable-dns"]), "--label", "broker.network=gang", name]
    r = subprocess.run(argv, capture_output=True, text=True, env=dict(env), timeout=60, check=False)
    created = r.returncode == 0
    if not created:
        ok = subprocess.run(["podman", "network", "exists", name], capture_output=True, env=dict(env),
                            timeout=60, check=False).returncode == 0
        if not ok:
            raise RuntimeError(f"podman network create {name} failed: {r.stderr.strip()[:300]}")
    guard_gateway(name, env, fresh=created)


def remove_network(name: str, env: Mapping[str, str]) -> bool:
    """Remove the gang network once no container uses it (False while one still does)."""
    r = subprocess.run(["podman", "network", "rm", name], capture_output=True, env=dict(env), timeout=60,
                       check=False)
    if r.returncode == 0:
        unguard_gateway(name)
    return r.returncode == 0


def _rule_tag(name: str) -> str:
    return "cb-" + hashlib.sha256(name.encode()).hexdigest()[:12]


NETWORK_CONFIG_DIR = Path("/etc/containers/networks")  # rootful podman's netavark network files


def _network_facts(name: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(bridge interface, gateway) of a podman network, None where podman cannot say: from
    netavark's file when there is one (no process to start), else `podman network inspect`."""
    try:
        conf = json.loads((NETWORK_CONFIG_DIR / f"{name}.json").read_text())
        return conf["network_interface"], conf["subnets"][0]["gateway"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    r = subprocess.run(["podman", "network", "inspect", name, "--format",
                        "{{.NetworkInterface}} {{range .Subnets}}{{.Gateway}} {{end}}"],
                       capture_output=True, text=True, env=dict(env), timeout=60, check=False)
    parts = r.stdout.split()
    return (parts[0], parts[1]) if r.returncode == 0 and len(parts) >= 2 else None


def guard_gateway(name: str, env: Mapping[str, str], fresh: bool = False) -> bool:
    """Refuse what the gang network sends to the node itself (its gateway and every address of
    the node), except DNS to podman's resolver on the gateway. Best effort: needs iptables and
    root (rootful podman); False where it could not be installed."""
    facts = _network_facts(name, env)
    if facts is None or shutil.which("iptables") is None:
        return False
    iface, gateway = facts
    tag = _rule_tag(name)
    if not fresh and _rules_present(tag):  # a gang mate created the network and its rules
        return True
    # replies to connections the node opened (the broker's proxy to a service replica's
    # published port) come back in on the bridge: accepted, first; a connection the network
    # opens to the node is NEW and still refused
    # netavark (1.4) forwards between its bridges: a container on one podman network reaches
    # the containers of every other one (measured). Nothing from this network to another
    # podman bridge or to a pooled namespace (netpool's `<prefix>s<k>` veths), so no other
    # job's container; its own bridge stays open (for hosts that pass bridged frames to iptables)
    rules = [f"-I INPUT -i {iface} -j REJECT",
             f"-I INPUT -i {iface} -p udp -d {gateway} --dport 53 -j ACCEPT",
             f"-I INPUT -i {iface} -p tcp -d {gateway} --dport 53 -j ACCEPT",
             f"-I INPUT -i {iface} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
             f"-I FORWARD -i {iface} -o podman+ -j DROP",
             f"-I FORWARD -i {iface} -o cbs+ -j DROP",
             f"-I FORWARD -i {iface} -o {iface} -j ACCEPT"]
    return _restore(f"{r} -m comment --comment {tag}" for r in rules)


def _restore(rules: Iterable[str]) -> bool:
    """Apply filter-table rule changes in one `iptables-restore` (one take of the xtables lock,
    which every container start on the node also needs)."""
    payload = "*filter\n" + "".join(r + "\n" for r in rules) + "COMMIT\n"
    r = subprocess.run(["iptables-restore", "-w", "--noflush"], input=payload.encode(), capture_output=True,
                       timeout=30, check=False)
    return r.returncode == 0


def _rules_present(tag: str) -> bool:
    r = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True, timeout=30, check=False)
    return tag in r.stdout


def unguard_gateway(name: str) -> None:
    if shutil.which("iptables") is None:
        return
    tag = _rule_tag(name)
    gone = []
    for chain in ("INPUT", "FORWARD"):
        r = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True, text=True, timeout=30, check=False)
        gone += ["-D " + line[3:] for line in r.stdout.splitlines() if tag in line and line.startswith(f"-A {chain}")]
    if gone:
        _restore(gone)


def is_tmpfs(path: str | os.PathLike) -> bool:
    """True when `path` lies on a tmpfs (RAM): the longest mount point in /proc/mounts wins."""
    p = os.path.realpath(path)
    best, fstype = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype in ("tmpfs", "ramfs")


def write_secrets(base: str | os.PathLike, name: str, secrets: Mapping[str, str]) -> Path:
    """One 0700 directory `<base>/cb-secrets/<name>` on a tmpfs, one 0400 file per secret.
    Refuses a `base` that is not a tmpfs: a secret must not reach a disk."""
    if not is_tmpfs(base):
        raise RuntimeError(f"secrets need a tmpfs and {base} is not one (set BROKER_SECRETS_TMPFS_DIR)")
    root = Path(base) / "cb-secrets"
    root.mkdir(mode=0o700, exist_ok=True)
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700)
    for key, value in secrets.items():
        if "/" in key or key in (".", ".."):
            raise ValueError(f"bad secret name {key!r}")
        fd = os.open(d / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(value.encode())
    os.chmod(d, 0o500)
    return d


def remove_secrets(d: str | os.PathLike | None) -> None:
    if not d:
        return
    try:
        os.chmod(d, 0o700)
    except OSError:
        pass
    shutil.rmtree(d, ignore_errors=True)


class Masker:
    """Replaces every secret value in a byte stream with `[MASKED]`, across chunk boundaries:
    the last (longest value - 1) bytes of each chunk are held back until the next one (or
    `flush`), so a value split between two reads is still caught."""

    def __init__(self, values: Iterable[str]) -> None:
        vals = sorted({v.encode() for v in values if len(v) >= MIN_MASKED}, key=len, reverse=True)
        self.values = vals
        self.keep = max((len(v) for v in vals), default=1) - 1
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if not self.values:
            return data
        buf = self._mask(self._held + data)
        if self.keep and len(buf) > self.keep:
            out, self._held = buf[:-self.keep], buf[-self.keep:]
        elif self.keep:
            out, self._held = b"", buf
        else:
            out, self._held = buf, b""
        return out

    def flush(self) -> bytes:
        out, self._held = self._mask(self._held), b""
        return out

    def _mask(self, data: bytes) -> bytes:
        for v in self.values:
            data = data.replace(v, MASK)
        return data


def oom_message(exit_code: int | None, memory_gb: float, stop_requested: bool) -> str:
    """Why a container that the broker did not stop died of SIGKILL: the memory limit. (podman
    4.3 on cgroup v1 reports OOMKilled=false even then, so the exit code is the evidence.)"""
    if exit_code == 137 and not stop_requested and memory_gb > 0:
        return (f"OOM: out of memory: the worker was killed (SIGKILL, exit 137) at its memory limit of "
                f"{memory_gb:g} GiB; ask for more memory_gb or use less")
    return ""

