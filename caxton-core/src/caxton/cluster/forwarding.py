"""Messages between nodes: forwarding to the node of an agent, and taking in what
other nodes forward here.

- :class:`PeerRoute` is what the cluster's resolver hands the router for an agent on
  another node; its :meth:`~PeerRoute.forward` sends one ``MESSAGE`` frame
  (:mod:`caxton.cluster.wire`) on the pooled connection to that node.
- :class:`Forwarding` sends those frames and handles the ones that arrive: a message
  for an agent registered here goes to the router; one whose agent is not here any
  more (a stale registry) is forwarded at most :data:`MAX_HOPS` more times, then
  dead-lettered here with the reason (``undeliverable``) and the sender is told
  (``miss``) so it stops routing there; one the receiver's allow-list refuses is
  answered with ``refuse``.

See docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from caxton.cluster import wire
from caxton.drivers.transport import Address, Frame, FrameKind
from caxton.errors import AgentNotFound, CaxtonError, Forbidden, TransportError
from caxton.messaging import Performative
from caxton.units import format_address

if TYPE_CHECKING:
    from caxton.cluster.service import Cluster
    from caxton.messaging import Message

__all__ = ["MAX_HOPS", "Forwarding", "PeerRoute"]

log = logging.getLogger("caxton.cluster")

#: Nodes a message may pass through after the first (a stale registry costs one hop).
MAX_HOPS = 1


class PeerRoute:
    """The way to an agent on another node (a :class:`caxton.messaging.RemoteRoute`)."""

    __slots__ = ("address", "cluster", "node_id")

    def __init__(self, cluster: Cluster, node_id: str, address: Address) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.address = address

    async def forward(self, message: Message) -> None:
        await self.cluster.forwarding.forward(self, message)

    def __repr__(self) -> str:
        return f"<PeerRoute {self.node_id}@{format_address(self.address)}>"


class Forwarding:
    """The ``MESSAGE`` frames of one node's cluster service; see the module docstring."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        #: Hop counts of messages that arrived here for a name not registered here, by id,
        #: until the router forwards them on.
        self._hops: dict[str, int] = {}

    async def forward(self, route: PeerRoute, message: Message) -> None:
        """Send ``message`` to the node of ``route`` (in order, on its one connection)."""
        cluster = self.cluster
        hops = self._hops.pop(message.message_id, 0) if self._hops else 0
        payload = wire.encode_message(message, hops)
        try:
            await cluster.transport.send(route.address, FrameKind.MESSAGE, payload)
        except TransportError:
            cluster._invalidate_node(route.node_id)
            if await cluster.partition.forward_failed(route, message):
                return
            raise
        cluster.counts["forwarded"] += 1

    def on_message(self, frame: Frame) -> None:
        """A ``MESSAGE`` frame arrived: hand the message to the router."""
        cluster = self.cluster
        router = cluster.router
        try:
            message, hops = wire.decode_message(frame.payload)
        except CaxtonError as exc:
            log.warning("dropped a message frame from %s: %s", frame.sender, exc)
            return
        cluster.counts["received"] += 1
        origin = frame.sender
        sender = message.sender
        if origin and sender and origin != cluster.node_id:
            cluster.learn_reply_route(sender, origin)
        if router is None:
            return
        receiver = message.receiver
        if not router.is_registered(receiver):
            if hops >= MAX_HOPS or cluster.leaving:
                self.undeliverable(message, origin, f"Agent not found: {receiver}")
                return
            self._hops[message.message_id] = hops + 1
            if len(self._hops) > 10_000:
                self._hops.clear()
            if origin:
                self.notify_miss(origin, receiver)
        try:
            router.send_nowait(message)
        except Forbidden as exc:
            # The receiver's allow-list refused a sender from another node: answer it
            # with `refuse`, as a local sender would be answered.
            self.refuse(message, str(exc))
        except AgentNotFound as exc:
            self.undeliverable(message, origin, str(exc))
        except CaxtonError as exc:
            self.undeliverable(message, origin, str(exc), miss=False)

    def refuse(self, message: Message, reason: str) -> None:
        cluster = self.cluster
        cluster.counts["refused"] += 1
        if cluster.router is None or not message.sender:
            return
        refusal = message.create_reply(Performative.REFUSE, reason, sender=message.receiver)
        with contextlib.suppress(CaxtonError):
            cluster.router.send_nowait(refusal)

    def undeliverable(
        self, message: Message, origin: str, reason: str, *, miss: bool = True
    ) -> None:
        cluster = self.cluster
        cluster.counts["undeliverable"] += 1
        text = f"undeliverable: {reason} (forwarded from {origin or 'a peer'})"
        log.warning("message %s to %s %s", message.message_id, message.receiver, text)
        store = cluster.node.store
        if store is not None:
            with contextlib.suppress(Exception):
                store.add_dead_letter(message, text)
        if origin and miss:
            self.notify_miss(origin, message.receiver)

    def notify_miss(self, origin: str, name: str) -> None:
        """Tell ``origin`` that ``name`` is not here (it drops its route)."""
        cluster = self.cluster
        member = cluster._live(origin)
        if member is not None:
            cluster._send_later(member.address, wire.encode_control("miss", name))
