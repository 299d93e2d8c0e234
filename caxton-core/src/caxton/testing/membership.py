"""Membership test helpers: a deterministic cluster simulator, property scenarios, a
UDP transport double, a gossip delegate double and the membership conformance suite.

:class:`SimCluster` runs sans-IO membership cores (:class:`~caxton.membership.swim_core.
SwimCore`, :class:`~caxton.membership.static_core.StaticCore`) on a simulated clock and
network: per-packet delay and jitter, global and per-node loss, partitions, one-way cuts
and the shapes made of them (:meth:`~SimCluster.mute`, :meth:`~SimCluster.deafen`,
:meth:`~SimCluster.bridge`, :meth:`~SimCluster.ring`), pauses (a node that stops
processing, like ``SIGSTOP``), kills and restarts. Everything random
comes from one seed, so a failing seed replays exactly::

    sim = SimCluster(seed=7)
    sim.start_nodes(5)
    sim.run_for(10)
    sim.kill("n3")
    sim.run_until(lambda: sim.all_see("n3", MemberStatus.FAILED), timeout=30)

:data:`SCENARIOS` (kill, loss, pause, partition, leave, restart) each run one seeded
cluster and check one property; ``caxton-core/tests/test_swim_seeds.py`` sweeps them
over thousands of seeds and :func:`formed_cluster` starts from a converged cluster.

:class:`UdpLoopbackTransport` is a small :class:`~caxton.drivers.transport.Transport`
over one asyncio UDP socket (datagrams and request/response both), enough to run the
real asyncio membership drivers on loopback without a transport plugin. It is a test
double: no reliability, no security. :class:`VersionedMapDelegate` is a minimal
:class:`~caxton.membership.core.GossipDelegate`. :class:`MembershipConformance` is the
contract suite a membership driver's tests subclass.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import socket
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest

from caxton.drivers.base import Driver, DriverContext
from caxton.drivers.membership import Membership, MemberStatus
from caxton.drivers.transport import (
    Address,
    DatagramHandler,
    Frame,
    FrameHandler,
    FrameKind,
    PeerStats,
    Transport,
)
from caxton.errors import TransportError, ValidationError
from caxton.membership.core import MemberEvent, MembershipCore, SyncRequest
from caxton.membership.settings import SwimSettings
from caxton.membership.swim_core import SwimCore
from caxton.plugins import PluginHost
from caxton.testing.conformance import DriverConformance, driver_config, run
from caxton.testing.node import HookRecorder
from caxton.units import format_address

__all__ = [
    "SCENARIOS",
    "MembershipConformance",
    "ScenarioResult",
    "SimCluster",
    "SimNode",
    "UdpLoopbackTransport",
    "VersionedMapDelegate",
    "formed_cluster",
]

CoreFactory = Callable[[str, Address, float, random.Random], MembershipCore]


@dataclass
class SimNode:
    """One simulated node: a core plus what the network needs to know about it."""

    node_id: str
    address: Address
    core: MembershipCore
    started_at: float
    killed: bool = False
    paused_until: float | None = None
    #: Events this node's core reported, in order.
    events: list[MemberEvent] = field(default_factory=list)
    _inbox: list[Callable[[], None]] = field(default_factory=list)
    _timer_version: int = 0

    @property
    def running(self) -> bool:
        return not self.killed and self.paused_until is None

    def view(self) -> dict[str, MemberStatus]:
        return {m.node_id: m.status for m in self.core.members() if m.node_id != self.node_id}


@dataclass
class SimStats:
    datagrams: int = 0
    dropped: int = 0
    syncs: int = 0


class SimCluster:
    """A seeded discrete-event simulation of a cluster of membership cores."""

    def __init__(
        self,
        seed: int,
        settings: SwimSettings | None = None,
        *,
        latency: float = 0.001,
        jitter: float = 0.002,
        loss: float = 0.0,
        core_factory: CoreFactory | None = None,
    ) -> None:
        self.seed = seed
        self.settings = settings or SwimSettings()
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.rng = random.Random(f"net:{seed}")
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.stats = SimStats()
        #: (time, observer, kind, member) for every event of every node.
        self.log: list[tuple[float, str, str, str]] = []
        self.node_loss: dict[str, float] = {}
        self._groups: dict[str, int] | None = None
        #: Directed links cut: (sender, receiver) pairs whose traffic is lost.
        self._cuts: set[tuple[str, str]] = set()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._addresses: dict[Address, SimNode] = {}
        self._ports = itertools.count(1)
        self._assigned: dict[str, Address] = {}
        self._factory = core_factory or self._swim_core

    # -- building -------------------------------------------------------------------

    def _swim_core(
        self, node_id: str, address: Address, now: float, rng: random.Random
    ) -> MembershipCore:
        return SwimCore(node_id, address, self.settings, now=now, rng=rng)

    def address_of(self, node_id: str) -> Address:
        address = self._assigned.get(node_id)
        if address is None:
            index = next(self._ports)
            address = self._assigned[node_id] = (f"10.{index // 250}.{index % 250}.1", 7946)
        return address

    def add_node(self, node_id: str, join: Sequence[str] = ()) -> SimNode:
        """Start ``node_id`` (a restart if it existed) and join it through ``join``."""
        address = self.address_of(node_id)
        old = self.nodes.get(node_id)
        if old is not None:
            old.killed = True
        generation = sum(1 for entry in self.log if entry[1] == node_id and entry[2] == "start")
        rng = random.Random(f"node:{self.seed}:{node_id}:{generation}")
        node = SimNode(node_id, address, self._factory(node_id, address, self.now, rng), self.now)
        self.nodes[node_id] = node
        self._addresses[address] = node
        self.log.append((self.now, node_id, "start", node_id))
        if join:
            node.core.join(self.now, [self.address_of(seed) for seed in join])
        self._flush(node)
        return node

    def start_nodes(self, count: int, *, prefix: str = "n", stagger: float = 0.0) -> list[str]:
        """Start ``count`` nodes; each joins through the first. ``stagger`` spreads the
        starts uniformly over that many seconds."""
        names = [f"{prefix}{i}" for i in range(count)]
        self.add_node(names[0])
        for name in names[1:]:
            delay = self.rng.uniform(0, stagger) if stagger else 0.0
            self._at(self.now + delay, self._joiner(name, names[0]))
        if not stagger:
            self.run_for(0)
        return names

    def _joiner(self, name: str, seed: str) -> Callable[[], None]:
        def join() -> None:
            self.add_node(name, [seed])

        return join

    # -- faults -----------------------------------------------------------------------

    def kill(self, node_id: str) -> None:
        """Stop a node abruptly (SIGKILL): no more sending, receiving or answering."""
        node = self.nodes[node_id]
        node.killed = True
        self._addresses.pop(node.address, None)
        self.log.append((self.now, node_id, "kill", node_id))

    def restart(self, node_id: str, join: Sequence[str]) -> SimNode:
        return self.add_node(node_id, join)

    def pause(self, node_id: str, duration: float) -> None:
        """Freeze a node for ``duration`` (SIGSTOP): inbound traffic is buffered and
        processed on resume, before any of its timers fire."""
        node = self.nodes[node_id]
        node.paused_until = self.now + duration
        self._at(node.paused_until, lambda: self._resume(node))

    def set_loss(self, node_id: str, probability: float) -> None:
        """Drop this fraction of the datagrams a node sends and of those it receives."""
        self.node_loss[node_id] = probability

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes in the same group can talk; nodes not named form one more group."""
        self._groups = {}
        for index, group in enumerate(groups):
            for node_id in group:
                self._groups[node_id] = index

    def cut(self, sender: str, receiver: str) -> None:
        """Lose what ``sender`` sends to ``receiver`` (one way; :meth:`heal` restores)."""
        self._cuts.add((sender, receiver))

    def mute(self, node_id: str) -> None:
        """``node_id`` receives everything; nothing it sends arrives."""
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def deafen(self, node_id: str) -> None:
        """What ``node_id`` sends arrives; nothing sent to it does."""
        for other in self.nodes:
            if other != node_id:
                self.cut(other, node_id)

    def bridge(self, left: Iterable[str], right: Iterable[str]) -> None:
        """``left`` and ``right`` no longer reach each other; the nodes in neither (the
        bridge) still reach both."""
        right = list(right)
        for a in left:
            for b in right:
                self.cut(a, b)
                self.cut(b, a)

    def ring(self, order: Sequence[str], reach: int = 1) -> None:
        """Each node reaches only the ``reach`` nodes on either side of it in ``order``."""
        size = len(order)
        for i, a in enumerate(order):
            for j, b in enumerate(order):
                if min((i - j) % size, (j - i) % size) > reach:
                    self.cut(a, b)

    def heal(self) -> None:
        self._groups = None
        self._cuts.clear()

    def leave(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.core.leave(self.now)
        self._flush(node)

    def gossip(self, node_id: str, key: str, payload: bytes) -> None:
        """Have ``node_id`` spread a gossip-delegate message (SWIM cores only)."""
        node = self.nodes[node_id]
        node.core.gossip(self.now, key, payload)  # type: ignore[attr-defined]
        self._flush(node)

    def update_meta(self, node_id: str, meta: Mapping[str, Any]) -> None:
        node = self.nodes[node_id]
        node.core.update_meta(self.now, meta)
        self._flush(node)

    # -- running ----------------------------------------------------------------------

    def run_until_time(self, deadline: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= deadline:
            when, _, action = heapq.heappop(queue)
            self.now = max(self.now, when)
            action()
        self.now = max(self.now, deadline)

    def run_for(self, duration: float) -> None:
        self.run_until_time(self.now + duration)

    def run_until(
        self, condition: Callable[[], bool], timeout: float, step: float = 0.05
    ) -> float | None:
        """Run until ``condition()`` holds (checked every ``step``); the time it took,
        or None if ``timeout`` simulated seconds passed first."""
        start = self.now
        while True:
            if condition():
                return self.now - start
            if self.now - start >= timeout:
                return None
            self.run_for(step)

    # -- observing --------------------------------------------------------------------

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.killed and not n.core.leaving]

    def status(self, observer: str, member: str) -> MemberStatus | None:
        return self.nodes[observer].view().get(member)

    def all_see(
        self, member: str, status: MemberStatus, observers: Iterable[str] | None = None
    ) -> bool:
        names = (
            observers
            if observers is not None
            else [n.node_id for n in self.live_nodes() if n.node_id != member]
        )
        return all(self.status(name, member) is status for name in names)

    def converged(self, members: Iterable[str] | None = None) -> bool:
        """Every live node sees every other live node (or ``members``) alive."""
        live = [n.node_id for n in self.live_nodes()]
        expected = set(members) if members is not None else set(live)
        for name in live:
            view = self.nodes[name].view()
            alive = {m for m, s in view.items() if s is MemberStatus.ALIVE}
            if alive != expected - {name}:
                return False
        return True

    def first_event(self, kind: str, member: str, observer: str | None = None) -> float | None:
        for when, who, what, about in self.log:
            if what == kind and about == member and (observer is None or who == observer):
                return when
        return None

    def events(self, kind: str, member: str | None = None) -> list[tuple[float, str, str]]:
        return [
            (when, who, about)
            for when, who, what, about in self.log
            if what == kind and (member is None or about == member)
        ]

    # -- the network --------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def _delay(self) -> float:
        return self.latency + self.rng.random() * self.jitter

    def reachable(self, a: str, b: str) -> bool:
        """Does what ``a`` sends reach ``b`` (partitions and one-way cuts)?"""
        if (a, b) in self._cuts:
            return False
        groups = self._groups
        return groups is None or groups.get(a, -1) == groups.get(b, -1)

    def _flush(self, node: SimNode) -> None:
        """Send what ``node``'s core produced and re-arm its timer."""
        if node.killed:
            return
        outbox = node.core.drain()
        for datagram in outbox.datagrams:
            self._transmit(node, datagram.address, datagram.payload)
        for request in outbox.syncs:
            self._sync(node, request)
        for event in outbox.events:
            node.events.append(event)
            self.log.append((self.now, node.node_id, event.kind.value, event.member.node_id))
        node._timer_version += 1
        version = node._timer_version
        deadline = max(self.now, node.core.next_deadline())
        self._at(deadline, lambda: self._tick(node, version))

    def _tick(self, node: SimNode, version: int) -> None:
        if node.running and version == node._timer_version:
            node.core.tick(self.now)
            self._flush(node)

    def _deliver(self, node: SimNode, action: Callable[[], None]) -> None:
        if node.killed:
            return
        if node.paused_until is not None:
            node._inbox.append(action)
            return
        action()
        self._flush(node)

    def _resume(self, node: SimNode) -> None:
        if node.killed or node.paused_until is None or node.paused_until > self.now:
            return
        node.paused_until = None
        inbox, node._inbox = node._inbox, []
        for action in inbox:
            action()
        self._flush(node)

    def _lost(self, sender: str, receiver: str) -> bool:
        for probability in (
            self.loss,
            self.node_loss.get(sender, 0.0),
            self.node_loss.get(receiver, 0.0),
        ):
            if probability and self.rng.random() < probability:
                return True
        return False

    def _transmit(self, sender: SimNode, address: Address, payload: bytes) -> None:
        self.stats.datagrams += 1
        receiver = self._addresses.get(address)
        if receiver is None or not self.reachable(sender.node_id, receiver.node_id):
            self.stats.dropped += 1
            return
        if self._lost(sender.node_id, receiver.node_id):
            self.stats.dropped += 1
            return
        source = sender.address

        def arrive() -> None:
            self._deliver(
                receiver,
                lambda: receiver.core.handle_datagram(self.now, payload, source),
            )

        self._at(self.now + self._delay(), arrive)

    def _sync(self, sender: SimNode, request: SyncRequest) -> None:
        """A push-pull over a reliable stream: no loss, but partitions and dead peers
        fail it (refused at once, or timed out behind a partition)."""
        self.stats.syncs += 1
        done = False

        def finish(response: bytes | None) -> None:
            nonlocal done
            if done or sender.killed:
                return
            done = True

            def merge() -> None:
                sender.core.sync_done(self.now, request.token, response)

            self._deliver(sender, merge)

        def arrive() -> None:
            receiver = self._addresses.get(request.address)
            if receiver is None:
                self._at(self.now + self._delay(), lambda: finish(None))
                return
            if not self.reachable(sender.node_id, receiver.node_id):
                return  # the timeout answers

            def answer() -> None:
                response = receiver.core.handle_sync(self.now, request.payload)
                reachable = self.reachable(receiver.node_id, sender.node_id)
                if reachable and not receiver.killed:
                    self._at(self.now + self._delay(), lambda: finish(response))

            self._deliver(receiver, answer)

        self._at(self.now + request.timeout, lambda: finish(None))
        self._at(self.now + self._delay(), arrive)


class VersionedMapDelegate:
    """A :class:`~caxton.membership.core.GossipDelegate` holding ``key -> (version,
    value)`` where the highest version wins: the shape of an agent registry, for tests.

    ``set(key, value)`` bumps the version and returns the message to ``gossip()``.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, bytes]] = {}

    def set(self, key: str, value: bytes) -> bytes:
        version = self.entries.get(key, (0, b""))[0] + 1
        self.entries[key] = (version, value)
        return msgpack.packb([version, value])  # type: ignore[no-any-return]

    def _apply(self, key: str, version: int, value: bytes) -> bool:
        if version <= self.entries.get(key, (0, b""))[0]:
            return False
        self.entries[key] = (version, value)
        return True

    def notify(self, key: str, payload: bytes) -> bool:
        version, value = msgpack.unpackb(payload)
        return self._apply(key, version, value)

    def local_state(self) -> bytes | None:
        return msgpack.packb({k: list(v) for k, v in self.entries.items()})  # type: ignore[no-any-return]

    def merge_remote_state(self, state: bytes) -> None:
        for key, (version, value) in msgpack.unpackb(state).items():
            self._apply(key, version, value)


# -------------------------------------------------------------------------
# Property scenarios: each runs one seeded cluster and checks one property
# -------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """What a scenario observed: ``failure`` is None when the property held."""

    failure: str | None
    #: Simulated seconds measured by the scenario (detection time, merge time...).
    measured: float | None = None


def _failures_other_than(sim: SimCluster, expected: Iterable[str] = ()) -> list[str]:
    allowed = set(expected)
    return [
        f"{observer} marked {member} failed at {when:.2f}s"
        for when, observer, member in sim.events("failed")
        if member not in allowed
    ]


def formed_cluster(seed: int, nodes: int, settings: SwimSettings | None = None) -> SimCluster:
    """A simulated cluster of ``nodes`` that has converged, at a random probe phase."""
    sim = SimCluster(seed, settings)
    sim.start_nodes(nodes)
    if sim.run_until(sim.converged, timeout=30) is None:
        raise AssertionError(f"seed {seed}: {nodes} nodes did not converge in 30s")
    # A random phase so kills and faults do not line up with the probe schedule.
    sim.run_for(2.0 + sim.rng.random())
    return sim


def scenario_kill(
    seed: int, nodes: int = 5, settings: SwimSettings | None = None
) -> ScenarioResult:
    """Kill one node: every survivor marks it failed, and nobody else is failed."""
    sim = formed_cluster(seed, nodes, settings)
    victim = f"n{1 + sim.rng.randrange(nodes - 1)}"
    sim.kill(victim)
    took = sim.run_until(lambda: sim.all_see(victim, MemberStatus.FAILED), 120, step=0.01)
    if took is None:
        return ScenarioResult(f"survivors did not all mark {victim} failed within 120s")
    sim.run_for(10)
    wrong = _failures_other_than(sim, [victim])
    return ScenarioResult("; ".join(wrong) or None, took)


def scenario_loss(
    seed: int,
    nodes: int = 5,
    settings: SwimSettings | None = None,
    loss: float = 0.2,
    duration: float = 60.0,
) -> ScenarioResult:
    """One node loses ``loss`` of its packets both ways: nobody is declared failed."""
    sim = formed_cluster(seed, nodes, settings)
    sim.set_loss(f"n{1 + sim.rng.randrange(nodes - 1)}", loss)
    sim.run_for(duration)
    wrong = _failures_other_than(sim)
    return ScenarioResult("; ".join(wrong) or None)


def scenario_pause(
    seed: int, nodes: int = 5, settings: SwimSettings | None = None, pause: float = 2.0
) -> ScenarioResult:
    """One node stops for ``pause`` seconds (shorter than the suspicion timeout): it is
    not declared failed."""
    sim = formed_cluster(seed, nodes, settings)
    sim.pause(f"n{1 + sim.rng.randrange(nodes - 1)}", pause)
    sim.run_for(pause + 30)
    wrong = _failures_other_than(sim)
    return ScenarioResult("; ".join(wrong) or None)


def scenario_partition(
    seed: int, nodes: int = 6, settings: SwimSettings | None = None, split: float = 60.0
) -> ScenarioResult:
    """Split the cluster for ``split`` seconds, heal: views merge again by themselves."""
    sim = formed_cluster(seed, nodes, settings)
    names = sorted(sim.nodes)
    sim.rng.shuffle(names)
    cut = 1 + sim.rng.randrange(nodes - 1)
    left_side, right_side = names[:cut], names[cut:]
    sim.partition(left_side, right_side)
    sim.run_for(split)
    # The larger side must have noticed; a lone node is slower on purpose (Lifeguard:
    # when nothing answers, it doubts itself first).
    big, small = sorted((left_side, right_side), key=len, reverse=True)
    if not sim.all_see(small[0], MemberStatus.FAILED, big):
        return ScenarioResult(f"the partition {big} | {small} was not detected")
    sim.heal()
    took = sim.run_until(sim.converged, timeout=180)
    if took is None:
        return ScenarioResult(f"views did not merge within 180s after healing {left_side}")
    return ScenarioResult(None, took)


def scenario_leave(
    seed: int, nodes: int = 5, settings: SwimSettings | None = None
) -> ScenarioResult:
    """A node leaves gracefully then stops: everyone lists it left, nobody failed."""
    sim = formed_cluster(seed, nodes, settings)
    leaver = f"n{1 + sim.rng.randrange(nodes - 1)}"
    sim.leave(leaver)
    took = sim.run_until(lambda: sim.nodes[leaver].core.leave_done, timeout=10)
    if took is None:
        return ScenarioResult(f"{leaver} did not finish announcing its leave in 10s")
    sim.kill(leaver)
    sim.run_for(30)
    if not sim.all_see(leaver, MemberStatus.LEFT):
        return ScenarioResult(f"not every node lists {leaver} as left")
    wrong = _failures_other_than(sim)
    return ScenarioResult("; ".join(wrong) or None, took)


def scenario_restart(
    seed: int, nodes: int = 5, settings: SwimSettings | None = None
) -> ScenarioResult:
    """Kill a node, let it be declared failed, restart it with the same id: it reclaims
    its name (a higher incarnation) and every view converges."""
    sim = formed_cluster(seed, nodes, settings)
    victim = f"n{1 + sim.rng.randrange(nodes - 1)}"
    sim.kill(victim)
    if sim.run_until(lambda: sim.all_see(victim, MemberStatus.FAILED), 120) is None:
        return ScenarioResult(f"{victim} was not declared failed")
    sim.restart(victim, ["n0"])
    took = sim.run_until(sim.converged, timeout=30)
    if took is None:
        return ScenarioResult(f"restarted {victim} was not alive everywhere within 30s")
    return ScenarioResult(None, took)


#: The properties swept over many seeds by the test suite (name -> scenario).
SCENARIOS: dict[str, Callable[..., ScenarioResult]] = {
    "kill": scenario_kill,
    "loss": scenario_loss,
    "pause": scenario_pause,
    "partition": scenario_partition,
    "leave": scenario_leave,
    "restart": scenario_restart,
}


# -------------------------------------------------------------------------
# A UDP transport for loopback tests of the asyncio drivers
# -------------------------------------------------------------------------

_DATAGRAM, _REQUEST, _RESPONSE = 0, 1, 2
_HEADER = struct.Struct("!BI")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpLoopbackTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.owner._received(data, (str(addr[0]), int(addr[1])))


class UdpLoopbackTransport(Transport):
    """Datagrams and small request/response exchanges over one UDP socket (test double).

    Requests are whole datagrams, so push-pull state must fit in ~64 KB: plenty for the
    handful of nodes a loopback test runs. ``drop`` (a callable on the peer address)
    lets a test lose packets on purpose.
    """

    kind: ClassVar[str] = "transport"

    def __init__(self, config: Mapping[str, Any] | None = None, context: Any = None) -> None:
        super().__init__(config or {}, context)
        self._socket: asyncio.DatagramTransport | None = None
        self._on_frame: FrameHandler | None = None
        self._on_datagram: DatagramHandler | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._stats: dict[Address, PeerStats] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.drop: Callable[[Address], bool] = lambda peer: False
        #: Upper bound on any request's timeout (keeps tests of silent peers short).
        self.request_timeout: float | None = None
        self.address: Address | None = None

    async def listen(
        self, address: Address, on_frame: FrameHandler, on_datagram: DatagramHandler
    ) -> Address:
        loop = asyncio.get_running_loop()
        self._on_frame, self._on_datagram = on_frame, on_datagram
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=address
        )
        self._socket = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = (str(host), int(port))
        return self.address

    def _peer(self, peer: Address) -> PeerStats:
        return self._stats.setdefault(peer, PeerStats())

    def _sendto(self, peer: Address, data: bytes) -> None:
        if self._socket is None:
            raise TransportError("the UDP test transport is not listening; call listen() first")
        stats = self._peer(peer)
        stats.frames_sent += 1
        stats.bytes_sent += len(data)
        if not self.drop(peer):
            self._socket.sendto(data, peer)

    def _received(self, data: bytes, source: Address) -> None:
        if len(data) < _HEADER.size:
            return
        stats = self._peer(source)
        stats.frames_received += 1
        stats.bytes_received += len(data)
        kind, ident = _HEADER.unpack_from(data)
        body = data[_HEADER.size :]
        if kind == _DATAGRAM and self._on_datagram is not None:
            self._on_datagram(body, source)
        elif kind == _RESPONSE:
            future = self._pending.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(body)
        elif kind == _REQUEST and self._on_frame is not None:
            task = asyncio.ensure_future(self._answer(FrameKind.GOSSIP, ident, body, source))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, kind: FrameKind, ident: int, body: bytes, source: Address) -> None:
        assert self._on_frame is not None
        reply = await self._on_frame(Frame(kind, body, request_id=ident))
        if reply is not None and self._socket is not None:
            self._sendto(source, _HEADER.pack(_RESPONSE, ident) + reply)

    async def send(self, peer: Address, kind: FrameKind, payload: bytes) -> None:
        self._sendto(peer, _HEADER.pack(_DATAGRAM, 0) + payload)

    async def request(
        self, peer: Address, kind: FrameKind, payload: bytes, timeout: float
    ) -> bytes:
        if self.request_timeout is not None:
            timeout = min(timeout, self.request_timeout)
        ident = next(self._ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        self._sendto(peer, _HEADER.pack(_REQUEST, ident) + payload)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self._peer(peer).errors += 1
            raise TransportError(f"no answer from {peer[0]}:{peer[1]} in {timeout:g}s") from None
        finally:
            self._pending.pop(ident, None)

    async def send_datagram(self, peer: Address, payload: bytes) -> None:
        self._sendto(peer, _HEADER.pack(_DATAGRAM, 0) + payload)

    def peer_stats(self) -> Mapping[Address, PeerStats]:
        return dict(self._stats)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._socket is not None:
            self._socket.close()
            self._socket = None


# -------------------------------------------------------------------------
# The membership driver contract
# -------------------------------------------------------------------------

#: Quick timings for the conformance suite (real sockets, so real time), with enough
#: suspicion slack (0.8 s) that a busy test machine's event-loop stalls are not failures.
FAST_CLUSTER = {
    "bind_addr": "127.0.0.1:0",
    "gossip_interval": "50ms",
    "probe_interval": "200ms",
    "probe_timeout": "100ms",
    "suspicion_multiplier": 4,
    "push_pull_interval": "2s",
}


class MembershipConformance(DriverConformance):
    """The contract of :class:`caxton.drivers.Membership`, on UDP loopback.

    A membership plugin's tests subclass it and name the class under test::

        class TestMyMembership(MembershipConformance):
            driver_class = MyMembership
            entry_point_name = "my-membership"

    Each node gets a :class:`UdpLoopbackTransport` as ``services["transport"]``, the node
    wires its datagrams to ``driver.on_datagram`` and its ``GOSSIP`` requests to
    ``driver.on_gossip_frame`` (as a Caxton node does), and advertises the port it bound.
    Membership events are checked through the hooks (:class:`~caxton.testing.HookRecorder`).
    """

    interface: ClassVar[type[Driver]] = Membership
    driver_config: ClassVar[Mapping[str, Any]] = FAST_CLUSTER
    #: Seconds a test waits for the cluster to reach an expected state.
    settle_timeout: ClassVar[float] = 10.0

    def make_context(self, data_dir: Path) -> DriverContext:
        context = super().make_context(data_dir)
        context.services["transport"] = UdpLoopbackTransport()
        return context

    async def start_node(
        self,
        node_id: str,
        data_dir: Path,
        recorder: HookRecorder | None = None,
        **config: Any,
    ) -> Membership:
        """A started driver on its own transport and plugin host."""
        host = PluginHost(use_entry_points=False, env={})
        if recorder is not None:
            recorder.attach(host)
        transport = UdpLoopbackTransport()
        transport.request_timeout = 1.0
        context = DriverContext(node_id=node_id, data_dir=data_dir, hook=host.hook)
        context.services["transport"] = transport
        driver: Any = None

        async def on_frame(frame: Frame) -> bytes | None:
            return await driver.on_gossip_frame(frame) if driver is not None else None

        def on_datagram(payload: bytes, source: Address) -> None:
            if driver is not None:
                driver.on_datagram(payload, source)

        bound = await transport.listen(("127.0.0.1", 0), on_frame, on_datagram)
        values = {**self.driver_config, **config, "advertise_addr": format_address(bound)}
        driver = self.driver_class(driver_config(self.driver_class, values), context)
        assert isinstance(driver, Membership)
        await driver.start()
        return driver

    async def stop_node(self, driver: Membership) -> None:
        await driver.close()
        await driver.context.services["transport"].close()

    async def eventually(self, condition: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_timeout
        while not condition():
            assert loop.time() < deadline, "the cluster did not settle in time"
            await asyncio.sleep(0.02)

    @staticmethod
    def status(driver: Membership, node_id: str) -> MemberStatus | None:
        for member in driver.members():
            if member.node_id == node_id:
                return member.status
        return None

    # -- checks -------------------------------------------------------------------

    def test_local_member_is_listed_alive(self, tmp_path: Path) -> None:
        async def check() -> None:
            driver = await self.start_node("node-1", tmp_path)
            try:
                local = driver.local_member()
                assert local.node_id == "node-1"
                assert local.status is MemberStatus.ALIVE
                assert local in driver.members()
            finally:
                await self.stop_node(driver)

        run(check())

    def test_two_nodes_join_and_announce_it(self, tmp_path: Path) -> None:
        recorder = HookRecorder()

        async def check() -> None:
            first = await self.start_node("node-1", tmp_path, recorder)
            second = await self.start_node("node-2", tmp_path, recorder)
            try:
                # Both ways, so a fixed-list driver (``static``) lists both too.
                assert await second.join([first.local_member().address]) == 1
                assert await first.join([second.local_member().address]) == 1
                await self.eventually(
                    lambda: (
                        self.status(first, "node-2") is MemberStatus.ALIVE
                        and self.status(second, "node-1") is MemberStatus.ALIVE
                    )
                )
                joined = {c.member.node_id for c in recorder.calls("caxton_member_joined")}
                assert joined == {"node-1", "node-2"}
            finally:
                await self.stop_node(second)
                await self.stop_node(first)

        run(check())

    def test_leave_is_reported_as_left_not_failed(self, tmp_path: Path) -> None:
        recorder = HookRecorder()

        async def check() -> None:
            first = await self.start_node("node-1", tmp_path, recorder)
            second = await self.start_node("node-2", tmp_path, recorder)
            try:
                await second.join([first.local_member().address])
                await first.join([second.local_member().address])
                await self.eventually(lambda: self.status(first, "node-2") is MemberStatus.ALIVE)
                await second.leave(timeout=2.0)
                await self.stop_node(second)
                await self.eventually(lambda: self.status(first, "node-2") is MemberStatus.LEFT)
                await asyncio.sleep(1.0)
                assert self.status(first, "node-2") is MemberStatus.LEFT
                left = [c.member.node_id for c in recorder.calls("caxton_member_left")]
                assert left == ["node-2"]
                recorder.assert_not_called("caxton_member_failed")
            finally:
                await self.stop_node(first)

        run(check())

    def test_unreachable_seed_answers_zero(self, tmp_path: Path) -> None:
        async def check() -> None:
            driver = await self.start_node("node-1", tmp_path)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("127.0.0.1", 0))
                    silent = probe.getsockname()
                    assert await driver.join([silent]) == 0
            finally:
                await self.stop_node(driver)

        run(check())

    def test_metadata_is_validated(self, tmp_path: Path) -> None:
        async def check() -> None:
            driver = await self.start_node("node-1", tmp_path)
            try:
                driver.update_metadata({"agents": 3, "region": "eu-west"})
                assert driver.local_member().meta["agents"] == 3
                with pytest.raises(ValidationError):
                    driver.update_metadata({"blob": "x" * 4096})
                with pytest.raises(ValidationError):
                    driver.update_metadata(["not", "a", "mapping"])  # type: ignore[arg-type]
            finally:
                await self.stop_node(driver)

        run(check())
