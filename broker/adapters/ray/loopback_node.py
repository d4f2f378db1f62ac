"""`python -m broker.adapters.ray.loopback_node <ray start args>`: `ray start --address=...` for
a further node of a loopback-only local cluster.

Ray's single-machine switch (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, see `local.enable_local_only`)
keeps every node address at 127.0.0.1, but `ray start` then refuses to start a second node
("multi-node clusters are not supported"); with the switch on, it turns 127.0.0.1 into the
machine's routable address, which the loopback-bound head does not answer on. This launcher lets
this one `ray start` process through the multi-node check while keeping the loopback address;
its children (the raylet and its workers) still get the switch from the environment.
"""

from __future__ import annotations

import sys

LOOPBACK = "127.0.0.1"


def main(argv: list[str]) -> int:
    from ray._private import ray_constants, services
    from ray.scripts.scripts import main as ray_main

    ray_constants.ENABLE_RAY_CLUSTER = True  # only the multi-node check reads it in this process
    services.resolve_ip_for_localhost = lambda host: host
    services.get_node_ip_address = lambda address=None: LOOPBACK
    sys.argv = ["ray", "start", *argv]
    return ray_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
