"""Seeds from DNS (``coordination.cluster.discovery = "dns"``), against a real DNS server.

dnsmasq (Debian package ``dnsmasq-base``) serves the records on a loopback port, as a
Kubernetes headless Service would: A records, SRV records, and records that appear while
the nodes already run (dnsmasq re-reads its hosts file on SIGHUP). Nodes bind 127.0.0.1,
127.0.0.2 and 127.0.0.3 on one port, like pods behind one Service.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import ProcessCluster, caxton_command, clean_environment, free_port

from caxton.cluster.discovery import DnsSeeds

pytestmark = pytest.mark.cluster


class Dnsmasq:
    """dnsmasq on 127.0.0.1:PORT answering only from its options and ``hosts``."""

    def __init__(self, directory: Path, *options: str) -> None:
        binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin")
        if binary is None:
            message = "dnsmasq is missing: apt-get install dnsmasq-base"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.port = free_port(udp_too=True)
        self.hosts = directory / "hosts"
        self.hosts.write_text("")
        self.process = subprocess.Popen(
            [
                binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", f"--addn-hosts={self.hosts}", "--listen-address=127.0.0.1",
                "--bind-interfaces", f"--port={self.port}", "--local-ttl=0", "--user=root",
                f"--pid-file={directory / 'dnsmasq.pid'}", *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.server = f"127.0.0.1:{self.port}"
        time.sleep(0.2)
        if self.process.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.process.communicate()[0]!r}")

    def publish(self, lines: str) -> None:
        """Replace the hosts file's records and have dnsmasq read it again."""
        self.hosts.write_text(lines)
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.2)

    def close(self) -> None:
        self.process.kill()
        self.process.communicate()


@pytest.fixture
def dnsmasq_factory(tmp_path: Path) -> Iterator[type[Dnsmasq]]:
    started: list[Dnsmasq] = []

    class Started(Dnsmasq):
        def __init__(self, *options: str) -> None:
            super().__init__(tmp_path, *options)
            started.append(self)

    yield Started
    for server in started:
        server.close()


async def test_a_records_are_seeds_on_the_given_port(dnsmasq_factory: type[Dnsmasq]) -> None:
    dns = dnsmasq_factory()
    dns.publish("127.0.0.3 caxton.test\n127.0.0.2 caxton.test\n")
    assert await DnsSeeds("caxton.test", 7946, dns.server).resolve() == [
        "127.0.0.2:7946",
        "127.0.0.3:7946",
    ]


async def test_srv_records_give_hosts_and_ports(dnsmasq_factory: type[Dnsmasq]) -> None:
    dns = dnsmasq_factory(
        "--srv-host=_cluster._tcp.caxton.test,n1.caxton.test,7001",
        "--srv-host=_cluster._tcp.caxton.test,n2.caxton.test,7002",
    )
    dns.publish("127.0.0.1 n1.caxton.test\n127.0.0.2 n2.caxton.test\n")
    seeds = await DnsSeeds("_cluster._tcp.caxton.test", 7946, dns.server).resolve()
    assert seeds == ["127.0.0.1:7001", "127.0.0.2:7002"]


async def test_a_name_without_records_is_no_seed_yet(dnsmasq_factory: type[Dnsmasq]) -> None:
    dns = dnsmasq_factory()
    assert await DnsSeeds("nobody.caxton.test", 7946, dns.server).resolve() == []


def dns_cluster(tmp_path: Path, server: str, port: int, **settings: object) -> ProcessCluster:
    discovery = {
        "discovery": "dns", "dns_name": "caxton.test", "dns_server": server,
        "dns_port": port, "dns_interval": "300ms", **settings,
    }  # fmt: skip
    cluster = ProcessCluster(tmp_path / "nodes")
    cluster.cluster_settings.update(discovery)
    return cluster


def same_port_on(hosts: list[str]) -> int:
    """A port free for TCP and UDP on every one of ``hosts``."""
    for _ in range(50):
        port = free_port(udp_too=True)
        try:
            for host in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as sock:
                        sock.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on all of " + ", ".join(hosts))


def test_pods_behind_one_name_form_one_cluster(
    tmp_path: Path, dnsmasq_factory: type[Dnsmasq]
) -> None:
    """Three nodes started at once, none with --join or --bootstrap, find each other."""
    dns = dnsmasq_factory()
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    dns.publish("".join(f"{host} caxton.test\n" for host in hosts))
    port = same_port_on(hosts)
    cluster = dns_cluster(tmp_path, dns.server, port)
    try:
        nodes = [cluster.add(f"n{i}", host=host) for i, host in enumerate(hosts, 1)]
        for node in nodes:
            node.cluster_port = port
            node.start()
        cluster.wait_converged(nodes, timeout=60)
    finally:
        cluster.close()


def test_records_that_appear_later_are_joined(
    tmp_path: Path, dnsmasq_factory: type[Dnsmasq]
) -> None:
    """Nodes that started alone (no record yet) join each other once DNS lists them."""
    dns = dnsmasq_factory()
    hosts = ["127.0.0.1", "127.0.0.2"]
    port = same_port_on(hosts)
    cluster = dns_cluster(tmp_path, dns.server, port)
    try:
        nodes = [cluster.add(f"n{i}", host=host) for i, host in enumerate(hosts, 1)]
        for node in nodes:
            node.cluster_port = port
            node.start()
        cluster.wait_until(lambda: all(n.ready() for n in nodes), 60, "both nodes ready")
        assert all(set(n.members()) == {n.node_id} for n in nodes)  # alone so far
        dns.publish("".join(f"{host} caxton.test\n" for host in hosts))
        cluster.wait_converged(nodes, timeout=30)
    finally:
        cluster.close()


def test_dns_discovery_without_a_name_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "caxton.toml"
    config.write_text('[coordination.cluster]\ndiscovery = "dns"\n')
    result = subprocess.run(
        [*caxton_command(), "config", "validate", str(config)],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {config}: coordination.cluster.discovery = 'dns' needs "
        "coordination.cluster.dns_name (a headless Service's name for its A records, "
        "or _PORT._tcp.NAME for SRV records)"
    ]
