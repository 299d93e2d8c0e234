"""Network faults between nodes of one test process: one-way, two-way and shaped cuts.

:class:`LinkCuts` wraps a real transport driver (tcp, quic...) of every node built by a
:class:`~caxton.testing.NodeFactory` and drops what crosses a cut link, in the
direction cut only. Cuts are *directed*: ``cut("n1", "n2")`` loses what n1 sends to n2
while what n2 sends to n1 still arrives, so a node can be made to receive but not send
(:meth:`LinkCuts.mute`), or to send but not receive (:meth:`LinkCuts.deafen`).
Shapes: :meth:`~LinkCuts.split` (clean partition), :meth:`~LinkCuts.isolate`,
:meth:`~LinkCuts.bridge` (two groups that reach one node between them, not each other)
and :meth:`~LinkCuts.ring` (each node reaches only its neighbours)::

    links = LinkCuts()
    factory.register_driver("transport", "cut", links.driver(TcpTransport))
    ...  # nodes built with {"plugins.transport": "cut"}
    links.mute("n3")  # n3 receives everything, nothing it sends arrives
    links.heal()

``LinkCuts(kinds={FrameKind.CONTROL})`` loses only frames of those kinds (here the
cluster's calls: replication, promises, leases), while membership datagrams and gossip
still flow, so the failure detector does not act on its own.

What is lost, like on a real network whose packets one way are dropped: a frame or
datagram sent over a cut link vanishes (the sender is not told); a request over a cut
link gets no answer, and one whose *answer* would cross a cut link reaches the other
node, is handled there, and its answer is lost: both time out. Everything else is the
wrapped driver's real traffic. A test double: use it only in tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from caxton.drivers import Driver, DriverContext, FrameKind, Transport
from caxton.drivers.transport import Address, DatagramHandler, FrameHandler, PeerStats

__all__ = ["Cuts", "LinkCuts"]


class Cuts:
    """A set of directed cuts between named nodes, and the shapes a partition takes.

    The base of :class:`LinkCuts` (lost in the transport driver) and
    :class:`caxton.testing.cuts.ConnectionCuts` (lost on the established connections):
    both read :meth:`is_cut`; subclasses say which nodes exist (:meth:`nodes`)."""

    def __init__(self) -> None:
        self._cut: set[tuple[str, str]] = set()

    def nodes(self) -> list[str]:
        raise NotImplementedError

    def cut(self, source: str, target: str) -> None:
        """Lose what ``source`` sends to ``target`` (one way)."""
        self._cut.add((source, target))

    def cut_both(self, a: str, b: str) -> None:
        self.cut(a, b)
        self.cut(b, a)

    def mute(self, node: str) -> None:
        """``node`` receives everything and nothing it sends arrives."""
        for other in self.nodes():
            if other != node:
                self.cut(node, other)

    def deafen(self, node: str) -> None:
        """What ``node`` sends arrives; nothing sent to it does."""
        for other in self.nodes():
            if other != node:
                self.cut(other, node)

    def isolate(self, node: str) -> None:
        self.mute(node)
        self.deafen(node)

    def split(self, *groups: Iterable[str]) -> None:
        """Only nodes of the same group reach each other (unnamed nodes: one more group)."""
        side = {n: i for i, group in enumerate(groups) for n in group}
        for a, b in itertools.permutations(self.nodes(), 2):
            if side.get(a, -1) != side.get(b, -1):
                self.cut(a, b)

    def bridge(self, left: Iterable[str], middle: str, right: Iterable[str]) -> None:
        """``left`` and ``right`` do not reach each other; both reach ``middle``."""
        for a in left:
            for b in right:
                self.cut_both(a, b)
        del middle  # reached by both sides: nothing to cut

    def ring(self, order: Sequence[str], reach: int = 1) -> None:
        """Each node reaches only the ``reach`` nodes on either side of it in ``order``."""
        size = len(order)
        for i, a in enumerate(order):
            for j, b in enumerate(order):
                distance = min((i - j) % size, (j - i) % size)
                if distance > reach:
                    self.cut(a, b)

    def heal(self) -> None:
        """Every link flows again (what was lost stays lost)."""
        self._cut.clear()

    def is_cut(self, source: str, target: str) -> bool:
        return (source, target) in self._cut


class LinkCuts(Cuts):
    """The directed links cut between the nodes of one test (see the module docstring)."""

    def __init__(self, kinds: Iterable[FrameKind] | None = None) -> None:
        super().__init__()
        #: Only frames of these kinds are lost (None: every frame and datagram), e.g.
        #: ``{FrameKind.CONTROL}`` cuts the cluster's calls while membership still flows.
        self.kinds = frozenset(kinds) if kinds is not None else None
        #: Listen address -> node id, filled as nodes listen.
        self.addresses: dict[Address, str] = {}
        #: Frames, requests and datagrams dropped so far.
        self.dropped = 0

    def nodes(self) -> list[str]:
        return sorted(set(self.addresses.values()))

    def blocked(self, source: str, target: str | None, kind: FrameKind | None = None) -> bool:
        """Is what ``source`` sends to ``target`` lost (a frame of ``kind``; None: a
        datagram)?"""
        if self.kinds is not None and kind not in self.kinds:
            return False
        return target is not None and self.is_cut(source, target)

    # -- the driver -----------------------------------------------------------------------

    def driver(self, inner: type[Transport]) -> type[Transport]:
        """A transport driver class wrapping ``inner`` and obeying these cuts."""
        return type(
            f"Cut{inner.__name__}",
            (CutTransport,),
            {"links": self, "inner_class": inner, "config_section": inner.config_section},
        )


class CutTransport(Transport):
    """A transport that loses what crosses a cut link (built by :meth:`LinkCuts.driver`)."""

    links: ClassVar[LinkCuts]
    inner_class: ClassVar[type[Transport]]

    def __init__(self, config: Mapping[str, Any], context: DriverContext, **options: Any) -> None:
        super().__init__(config, context)
        inner: Driver = self.inner_class(config, context, **options)
        assert isinstance(inner, Transport)
        self.inner = inner
        self.node_id = context.node_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _target(self, peer: Address) -> str | None:
        return self.links.addresses.get(peer)

    def _lost(self, peer: Address, kind: FrameKind | None) -> bool:
        if self.links.blocked(self.node_id, self._target(peer), kind):
            self.links.dropped += 1
            return True
        return False

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def listen(
        self, address: Address, on_frame: FrameHandler, on_datagram: DatagramHandler
    ) -> Address:
        bound = await self.inner.listen(address, on_frame, on_datagram)
        self.links.addresses[bound] = self.node_id
        return bound

    async def send(self, peer: Address, kind: FrameKind, payload: bytes) -> None:
        if not self._lost(peer, kind):
            await self.inner.send(peer, kind, payload)

    async def request(
        self, peer: Address, kind: FrameKind, payload: bytes, timeout: float
    ) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not self._lost(peer, kind):
            answer = await self.inner.request(peer, kind, payload, timeout)
            target = self._target(peer)
            if not self.links.blocked(target or "", self.node_id, kind):
                return answer
            self.links.dropped += 1  # handled there; the answer is lost on the way back
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        raise asyncio.TimeoutError

    async def send_datagram(self, peer: Address, payload: bytes) -> None:
        if not self._lost(peer, None):
            await self.inner.send_datagram(peer, payload)

    def peer_stats(self) -> Mapping[Address, PeerStats]:
        return self.inner.peer_stats()

    def forget_peer(self, peer: Address) -> None:
        self.inner.forget_peer(peer)
