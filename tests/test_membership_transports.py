"""The ``swim`` driver over the real transport drivers (TCP and QUIC), in one process.

Each node is wired as a Caxton node wires it: the transport's datagrams go to
``on_datagram``, its ``GOSSIP`` requests to ``on_gossip_frame``. Covered: mTLS with
datagrams on the encrypted connection (TCP) or as QUIC datagrams, and plaintext with a
gossip keyring (sealed UDP datagrams).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from caxton.drivers.base import DriverContext
from caxton.drivers.membership import MemberStatus
from caxton.drivers.transport import Address, Frame, FrameKind, Transport
from caxton.membership.swim import SwimMembership
from caxton.plugins import PluginHost
from caxton.testing.conformance import driver_config
from caxton.testing.membership import FAST_CLUSTER
from caxton.testing.node import HookRecorder
from caxton.testing.transport import TransportPKI, make_pki
from caxton.transport import TransportSettings
from caxton.transport.keyring import Keyring, generate_key
from caxton.units import format_address

INSTALLED = {ep.name for ep in entry_points(group="caxton.transport")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TransportPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Node:
    def __init__(self, transport: Transport, membership: SwimMembership) -> None:
        self.transport = transport
        self.membership = membership

    def status(self, node_id: str) -> MemberStatus | None:
        for member in self.membership.members():
            if member.node_id == node_id:
                return member.status
        return None

    async def stop(self) -> None:
        await self.membership.close()
        await self.transport.close()


async def start_node(
    name: str, node_id: str, settings: TransportSettings, tmp_path: Path, recorder: HookRecorder
) -> Node:
    (entry,) = [ep for ep in entry_points(group="caxton.transport") if ep.name == name]
    cls = entry.load()
    host = PluginHost(use_entry_points=False, env={})
    recorder.attach(host)
    context = DriverContext(node_id=node_id, data_dir=tmp_path, hook=host.hook)
    transport = cls(driver_config(cls), context, settings=settings)
    membership: SwimMembership | None = None

    async def on_frame(frame: Frame) -> bytes | None:
        if frame.kind == FrameKind.GOSSIP and membership is not None:
            return await membership.on_gossip_frame(frame)
        return None

    def on_datagram(payload: bytes, source: Address) -> None:
        if membership is not None:
            membership.on_datagram(payload, source)

    await transport.start()
    bound = await transport.listen(("127.0.0.1", 0), on_frame, on_datagram)
    context.services["transport"] = transport
    # A wider suspicion margin (1 s) than the conformance suite's: real handshakes
    # on a shared test machine.
    config = {**FAST_CLUSTER, "suspicion_multiplier": 5, "advertise_addr": format_address(bound)}
    membership = SwimMembership(driver_config(SwimMembership, config), context)
    await membership.start()
    return Node(transport, membership)


async def eventually(condition: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "the cluster did not settle in time"
        await asyncio.sleep(0.05)


SECURITY = ["mtls", "plaintext+keyring"]


@pytest.fixture(params=[(t, s) for t in ("tcp", "quic") for s in SECURITY], ids=str)
async def nodes(
    request: pytest.FixtureRequest, pki: TransportPKI, tmp_path: Path
) -> AsyncIterator[tuple[list[Node], HookRecorder]]:
    transport_name, security = request.param
    if transport_name not in INSTALLED:
        pytest.fail(f"the {transport_name} transport plugin is not installed")
    recorder = HookRecorder()
    keyring = Keyring.from_config([generate_key()])
    started: list[Node] = []
    for i in range(3):
        node_id = f"node-{i}"
        if security == "mtls":
            settings = TransportSettings(node_id, tls=pki.node(node_id), connect_timeout=1.0)
        else:
            settings = TransportSettings(node_id, plaintext=True, keyring=keyring)
        started.append(await start_node(transport_name, node_id, settings, tmp_path, recorder))
    yield started, recorder
    for node in started:
        await node.stop()


async def test_swim_over_real_transports(nodes: tuple[list[Node], HookRecorder]) -> None:
    members, recorder = nodes
    seed = members[0].membership.local_member().address
    for node in members[1:]:
        assert await node.membership.join([seed]) == 1
    await eventually(
        lambda: all(
            a.status(f"node-{j}") is MemberStatus.ALIVE
            for a in members
            for j in range(3)
            if a.membership.local_member().node_id != f"node-{j}"
        )
    )
    await members[2].stop()
    await eventually(
        lambda: (
            members[0].status("node-2") is MemberStatus.FAILED
            and members[1].status("node-2") is MemberStatus.FAILED
        )
    )
    failed = {call.member.node_id for call in recorder.calls("caxton_member_failed")}
    assert failed == {"node-2"}
    members.pop()
