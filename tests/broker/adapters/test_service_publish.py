"""A container service replica's port: published on the node's address for the broker only."""

from __future__ import annotations

from broker.adapters.ray.runner import podman_argv
from broker.models import Job
from broker.services.scheduling import launch_spec


def _argv(publish):
    return podman_argv(name="c", job_id="j", attempt=1, image="img", command=["run"], env_file="/dev/fd/3",
                       gpu_ids=(), real_gpus=False, network="cb-j-a1", publish=publish)


def test_the_replica_port_is_published_on_the_node_address():
    argv = _argv([("10.0.0.5", 23456, 8080)])
    i = argv.index("-p")
    assert argv[i + 1] == "10.0.0.5:23456:8080" and argv.index("img") > i
    assert "-p" not in _argv([])


CASES = [
    ("container replica", dict(service_id="s1", port=23456, runtime="container", env={"PORT": "8080"}),
     ((23456, 8080),)),
    ("process replica: PORT is its own port", dict(service_id="s1", port=23456, runtime="process",
                                                    env={"PORT": "23456"}), ()),
    ("batch job", dict(service_id=None, port=None, runtime="container", env={}), ()),
]


def test_launch_spec_publishes_only_container_replicas():
    for name, fields, want in CASES:
        job = Job(id="j", project_id="p", image="img", command=["x"], **fields)
        assert launch_spec(job, [], 5.0).publish == want, name
