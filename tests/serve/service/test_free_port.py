"""`free_port` hands out ports that differ: a test cluster takes nine before any server listens,
and a node that got its neighbour's port failed to start (seen: n2's client port was n1's monitor port)."""

from __future__ import annotations

import socket

from runtime.serve.service.embedded_nats import free_port


def test_ports_taken_before_anything_listens_are_all_different() -> None:
    ports = [free_port() for _ in range(1000)]  # the old free_port repeated one in every run of 1000
    assert len(set(ports)) == len(ports)


def test_a_free_port_can_be_listened_on() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
