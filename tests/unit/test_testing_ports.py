"""Ports for the local servers tests start: distinct within one pick, and never one already taken."""

from __future__ import annotations

import socket

from mrlkit.testing.ray_head import LocalRayHead
from mrlkit.testing.s3_server import free_ports


def test_free_ports_are_distinct_and_skip_the_ones_to_avoid():
    # Picked one at a time, a just-closed port can come back at once: ray start then refused a dashboard and a
    # client server on the same port (CI). One pick holds every socket until all are chosen.
    for _ in range(50):
        ports = free_ports(4)
        assert len(set(ports)) == 4
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        assert busy not in free_ports(8)  # a bound port is never handed out
    avoid = set(free_ports(3))
    assert not avoid & set(free_ports(6, avoid=avoid))


def test_ray_head_ports_are_distinct_and_keep_the_ones_given(tmp_path):
    head = LocalRayHead(tmp_path, num_cpus=1)
    assert head.port != head.dashboard_port
    fixed = LocalRayHead(tmp_path, num_cpus=1, port=6390, dashboard_port=8275)
    assert (fixed.port, fixed.dashboard_port) == (6390, 8275)
    partly = LocalRayHead(tmp_path, num_cpus=1, port=6390)
    assert partly.port == 6390 and partly.dashboard_port != 6390
