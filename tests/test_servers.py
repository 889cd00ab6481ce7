"""The test servers' ports (servers.free_port): each pytest-xdist worker has its own, so one
worker's server never finds its port taken by another's between choosing and binding it."""

import socket

import servers


def test_each_call_gives_another_port_of_the_workers_own_range():
    ports = [servers.free_port() for _ in range(5)]
    assert len(set(ports)) == 5
    assert all(port in servers._PORTS for port in ports)
    assert max(ports) < 32768  # under the kernel's ephemeral ports: no outgoing socket takes one


def test_a_port_something_listens_on_is_passed_over():
    taken = servers.free_port() + 1
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", taken))
        listener.listen()
        assert servers.free_port() != taken
