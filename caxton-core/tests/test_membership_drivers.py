"""The asyncio membership drivers over real UDP sockets on loopback.

The transport is :class:`caxton.testing.membership.UdpLoopbackTransport` (a test
double) until the TCP/QUIC transports' cluster tests cover real node processes.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from caxton.drivers.base import DriverContext
from caxton.drivers.membership import MemberStatus
from caxton.errors import ConfigError, Conflict, NotFound, PluginError, ValidationError
from caxton.membership.core import EventKind, MemberEvent
from caxton.membership.static import StaticMembership
from caxton.membership.swim import SwimMembership
from caxton.plugins import PluginHost
from caxton.testing.conformance import driver_config
from caxton.testing.membership import (
    FAST_CLUSTER,
    MembershipConformance,
    UdpLoopbackTransport,
    VersionedMapDelegate,
)
from caxton.testing.node import HookRecorder


class TestSwimConformance(MembershipConformance):
    driver_class = SwimMembership
    entry_point_name = "swim"


class TestStaticConformance(MembershipConformance):
    driver_class = StaticMembership
    entry_point_name = "static"


class Cluster:
    """A few SWIM drivers on loopback, sharing one hook recorder."""

    def __init__(self, tmp_path: Path) -> None:
        self.suite = TestSwimConformance()
        self.tmp_path = tmp_path
        self.recorder = HookRecorder()
        self.drivers: dict[str, SwimMembership] = {}

    async def add(self, node_id: str, join: str | None = None, **config: Any) -> SwimMembership:
        driver = await self.suite.start_node(node_id, self.tmp_path, self.recorder, **config)
        assert isinstance(driver, SwimMembership)
        self.drivers[node_id] = driver
        if join is not None:
            await driver.join([self.drivers[join].local_member().address])
        return driver

    async def kill(self, node_id: str) -> None:
        await self.suite.stop_node(self.drivers.pop(node_id))

    def status(self, observer: str, member: str) -> MemberStatus | None:
        return self.suite.status(self.drivers[observer], member)

    async def eventually(self, condition: Any) -> None:
        await self.suite.eventually(condition)

    async def close(self) -> None:
        for node_id in list(self.drivers):
            await self.kill(node_id)


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    cluster = Cluster(tmp_path)
    yield cluster
    await cluster.close()


async def test_three_nodes_converge_and_detect_a_killed_node(cluster: Cluster) -> None:
    await cluster.add("a")
    await cluster.add("b", join="a")
    await cluster.add("c", join="b")
    await cluster.eventually(
        lambda: all(
            cluster.status(x, y) is MemberStatus.ALIVE for x in "abc" for y in "abc" if x != y
        )
    )
    await cluster.kill("c")
    await cluster.eventually(
        lambda: (
            cluster.status("a", "c") is MemberStatus.FAILED
            and cluster.status("b", "c") is MemberStatus.FAILED
        )
    )
    failed = {(c.member.node_id) for c in cluster.recorder.calls("caxton_member_failed")}
    assert failed == {"c"}
    suspects = {c.member.node_id for c in cluster.recorder.calls("caxton_member_suspect")}
    assert "c" in suspects


async def test_subscribers_see_events_and_can_unsubscribe(cluster: Cluster) -> None:
    a = await cluster.add("a")
    seen: list[MemberEvent] = []
    unsubscribe = a.subscribe(seen.append)
    await cluster.add("b", join="a")
    await cluster.eventually(lambda: any(e.kind is EventKind.JOINED for e in seen))
    unsubscribe()
    count = len(seen)
    await cluster.add("c", join="a")
    await cluster.eventually(lambda: cluster.status("a", "c") is MemberStatus.ALIVE)
    assert len(seen) == count


async def test_a_failing_listener_does_not_stop_membership(cluster: Cluster) -> None:
    a = await cluster.add("a")

    def broken(event: MemberEvent) -> None:
        raise RuntimeError("listener bug")

    a.subscribe(broken)
    await cluster.add("b", join="a")
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.ALIVE)


async def test_metadata_spreads_to_other_nodes(cluster: Cluster) -> None:
    a = await cluster.add("a")
    b = await cluster.add("b", join="a")
    b.update_metadata({"agents": 7, "cpu": 0.25, "zone": "eu-west-1a"})

    def seen_by_a() -> bool:
        return a.member("b").meta.get("agents") == 7

    await cluster.eventually(seen_by_a)
    assert a.member("b").meta["zone"] == "eu-west-1a"


async def test_stats_ping_and_size_estimate(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.add("b", join="a")
    await cluster.eventually(lambda: a.cluster_size_estimate() == 2)
    rtt = await a.ping("b")
    assert rtt >= 0
    stats = a.stats()
    assert stats["datagrams_sent"] > 0
    assert stats["bytes_received"] > 0
    assert stats["nodes_total"] == stats["nodes_alive"] == 2
    await cluster.eventually(lambda: a.stats()["probe_rtt_ms"] > 0)
    with pytest.raises(NotFound):
        await a.ping("nobody")


async def test_force_remove_of_a_failed_member(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.add("b", join="a")
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.ALIVE)
    with pytest.raises(Conflict, match="only failed members"):
        a.remove("b")
    await cluster.kill("b")
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.FAILED)
    assert a.remove("b").status is MemberStatus.LEFT
    with pytest.raises(NotFound):
        a.remove("nobody")


async def test_restart_with_same_id_rejoins(cluster: Cluster) -> None:
    await cluster.add("a")
    await cluster.add("b", join="a")
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.ALIVE)
    await cluster.kill("b")
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.FAILED)
    await cluster.add("b", join="a")
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.ALIVE)
    joined = [c.member for c in cluster.recorder.calls("caxton_member_joined")]
    assert [m.incarnation for m in joined if m.node_id == "b"][-1] > 0


async def test_wait_for_members_uses_bootstrap_expect(cluster: Cluster) -> None:
    a = await cluster.add("a", bootstrap_expect=2)
    assert not await a.wait_for_members(timeout=0.2)
    await cluster.add("b", join="a")
    assert await a.wait_for_members(timeout=5)


async def test_lost_packets_do_not_fail_members(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.add("b", join="a")
    await cluster.add("c", join="a")
    await cluster.eventually(lambda: a.cluster_size_estimate() == 3)
    transport = a.context.services["transport"]
    sends = itertools.count()
    transport.drop = lambda peer: next(sends) % 5 == 0  # every fifth datagram a sends
    await asyncio.sleep(3)
    cluster.recorder.assert_not_called("caxton_member_failed")


def context(tmp_path: Path, transport: object | None = None) -> DriverContext:
    host = PluginHost(use_entry_points=False, env={})
    ctx = DriverContext(node_id="n1", data_dir=tmp_path, hook=host.hook)
    if transport is not None:
        ctx.services["transport"] = transport
    return ctx


async def test_start_without_transport_is_a_clear_error(tmp_path: Path) -> None:
    driver = SwimMembership(driver_config(SwimMembership, FAST_CLUSTER), context(tmp_path))
    with pytest.raises(PluginError, match="needs a transport driver"):
        await driver.start()


def test_bad_seed_is_a_config_error(tmp_path: Path) -> None:
    config = driver_config(SwimMembership, {"seeds": ["node-1"]})
    with pytest.raises(ConfigError, match=r"coordination\.cluster\.seeds"):
        SwimMembership(config, context(tmp_path))


def test_negative_durations_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="probe_interval must be greater than zero"):
        SwimMembership({"probe_interval": 0.0}, context(tmp_path))
    with pytest.raises(ConfigError, match="gossip_fanout: expected a whole number"):
        SwimMembership({"gossip_fanout": "many"}, context(tmp_path))


def test_documented_keys_reach_the_protocol(tmp_path: Path) -> None:
    config = driver_config(
        SwimMembership,
        {
            "gossip_interval": "100ms",
            "gossip_fanout": 4,
            "probe_interval": "500ms",
            "probe_timeout": "200ms",
            "indirect_probes": 2,
            "suspicion_multiplier": 3,
            "gossip_to_dead": 5,
            "push_pull_interval": "10s",
            "bootstrap_expect": 3,
            "seeds": ["10.0.0.1:7946", "[::1]:7946"],
        },
    )
    settings = SwimMembership(config, context(tmp_path)).settings
    assert (settings.gossip_interval, settings.gossip_fanout) == (0.1, 4)
    assert (settings.probe_interval, settings.probe_timeout) == (0.5, 0.2)
    assert (settings.indirect_probes, settings.suspicion_multiplier) == (2, 3)
    assert (settings.gossip_to_dead, settings.push_pull_interval) == (5, 10.0)
    assert settings.bootstrap_expect == 3
    assert settings.seeds == (("10.0.0.1", 7946), ("::1", 7946))


def test_advertise_address_resolution(tmp_path: Path) -> None:
    def address(**values: Any) -> tuple[str, int]:
        return SwimMembership(values, context(tmp_path)).advertise_address()

    assert address(bind_addr="127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert address(bind_addr="127.0.0.1:7000", advertise_addr="node-1.example.com") == (
        "node-1.example.com",
        7000,
    )
    assert address(bind_addr="0.0.0.0:7000", advertise_addr="10.1.2.3:7946") == (
        "10.1.2.3",
        7946,
    )
    host, port = address(bind_addr="0.0.0.0:7000")
    assert port == 7000
    assert host != "0.0.0.0"


async def test_gossip_delegate_over_udp(cluster: Cluster) -> None:
    a = await cluster.add("a")
    b = await cluster.add("b", join="a")
    registry_a, registry_b = VersionedMapDelegate(), VersionedMapDelegate()
    a.set_gossip_delegate(registry_a)
    b.set_gossip_delegate(registry_b)
    a.gossip("agents/a", registry_a.set("agents/a", b"echo"))
    await cluster.eventually(lambda: registry_b.entries.get("agents/a") == (1, b"echo"))
    with pytest.raises(ValidationError, match="send large state"):
        a.gossip("big", b"x" * 4000)


async def test_static_driver_does_not_gossip(tmp_path: Path) -> None:
    suite = TestStaticConformance()
    driver = await suite.start_node("s1", tmp_path)
    try:
        with pytest.raises(PluginError, match="does not gossip"):
            driver.gossip("k", b"v")  # type: ignore[attr-defined]
    finally:
        await suite.stop_node(driver)


async def test_cluster_view_for_the_partition_policy(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.add("b", join="a")
    await cluster.add("c", join="a")
    await cluster.eventually(lambda: a.cluster_size_estimate() == 3)
    await cluster.kill("c")
    await cluster.eventually(lambda: cluster.status("a", "c") is MemberStatus.FAILED)
    view = a.cluster_view(quorum_size=2)
    assert view.local_node_id == "a"
    assert sorted(view.known_nodes) == ["a", "b", "c"]
    assert sorted(view.reachable_nodes) == ["a", "b"]
    assert view.quorum_size == 2


async def test_a_send_stuck_on_one_peer_does_not_hold_up_the_others(cluster: Cluster) -> None:
    a = await cluster.add("a")
    b = await cluster.add("b", join="a")
    c = await cluster.add("c", join="a")
    await cluster.eventually(lambda: a.cluster_size_estimate() == 3)
    transport = a.context.services["transport"]
    stuck = c.local_member().address
    send = transport.send_datagram

    async def dialling_forever(peer: tuple[str, int], payload: bytes) -> None:
        if peer == stuck:
            await asyncio.sleep(3600)  # like a transport dialling a peer that never answers
        await send(peer, payload)

    transport.send_datagram = dialling_forever
    await asyncio.sleep(3)
    cluster.recorder.assert_not_called("caxton_member_failed")
    assert cluster.status("a", "b") is MemberStatus.ALIVE
    assert b.cluster_size_estimate() == 3


async def test_a_closed_driver_stays_quiet_while_its_transport_still_delivers(
    cluster: Cluster,
) -> None:
    # Found with the QUIC transport: datagrams arriving between membership.close() and
    # transport.close() re-armed the timer, and the closed node declared everyone failed.
    a = await cluster.add("a")
    b = await cluster.add("b", join="a")
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.ALIVE)
    await b.close()  # its transport stays open and keeps receiving a's probes
    await cluster.eventually(lambda: cluster.status("a", "b") is MemberStatus.FAILED)
    await asyncio.sleep(1.0)
    failed = [c.member.node_id for c in cluster.recorder.calls("caxton_member_failed")]
    assert failed == ["b"]
    assert a.stats()["nodes_alive"] == 1


def test_bad_advertise_address_is_a_config_error(tmp_path: Path) -> None:
    driver = SwimMembership({"advertise_addr": "node-1:99999"}, context(tmp_path))
    with pytest.raises(ConfigError, match=r"coordination\.cluster\.advertise_addr"):
        driver.advertise_address()


async def test_node_labels_too_large_to_gossip_are_a_config_error(tmp_path: Path) -> None:
    node = SimpleNamespace(
        version="0.2.0",
        config={"node": {"region": "eu", "zone": "", "labels": {"blob": "x" * 1000}}},
        api_address=None,
        cluster_address=None,
    )
    ctx = context(tmp_path, UdpLoopbackTransport())
    ctx.services["node"] = node
    driver = SwimMembership(driver_config(SwimMembership, FAST_CLUSTER), ctx)
    with pytest.raises(ConfigError, match=r"shorten node\.labels"):
        await driver.start()


async def test_node_facts_are_gossiped_from_the_start(tmp_path: Path) -> None:
    node = SimpleNamespace(
        version="0.2.0",
        config={"node": {"region": "eu-west", "zone": "eu-west-1a", "labels": {"gpu": "yes"}}},
        api_address=("127.0.0.1", 8080),
        cluster_address=("127.0.0.1", 7999),
    )
    ctx = context(tmp_path, UdpLoopbackTransport())
    ctx.services["node"] = node
    driver = SwimMembership(driver_config(SwimMembership, FAST_CLUSTER), ctx)
    await driver.start()
    try:
        local = driver.local_member()
        assert local.address == ("127.0.0.1", 7999)
        assert local.meta == {
            "version": "0.2.0",
            "region": "eu-west",
            "zone": "eu-west-1a",
            "labels": {"gpu": "yes"},
            "api": "127.0.0.1:8080",
        }
    finally:
        await driver.close()
