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

import asyncio
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
    from caxton.messaging.remote import Acknowledgement

__all__ = ["ACK_TIMEOUT", "MAX_BATCH", "MAX_HOPS", "Forwarding", "PeerRoute"]

log = logging.getLogger("caxton.cluster")

#: Nodes a message may pass through after the first (a stale registry costs one hop;
#: version 1 frames only: an acknowledged one is answered ``miss`` instead).
MAX_HOPS = 1
#: Acknowledged messages sent to one node in one request at most (a loop turn's worth).
MAX_BATCH = 512
#: Seconds a node has to acknowledge a batch; then its messages are sent again.
ACK_TIMEOUT = 5.0


class PeerRoute:
    """The way to an agent on another node (a :class:`caxton.messaging.RemoteRoute`).

    ``version`` is the newest MESSAGE frame version that node gossips (1 when it
    gossips none: it predates acknowledgements).
    """

    __slots__ = ("address", "cluster", "node_id", "version")

    def __init__(
        self,
        cluster: Cluster,
        node_id: str,
        address: Address,
        version: int = wire.FIRST_VERSION,
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.address = address
        self.version = version

    async def forward(self, message: Message) -> Acknowledgement | None:
        return await self.cluster.forwarding.forward(self, message)

    def __repr__(self) -> str:
        return f"<PeerRoute {self.node_id}@{format_address(self.address)}>"


class _Batch:
    """Acknowledged messages for one node, gathered in one event-loop turn."""

    __slots__ = ("acks", "packed", "route")

    def __init__(self, route: PeerRoute) -> None:
        self.route = route
        self.packed: list[bytes] = []
        self.acks: list[tuple[Message, Acknowledgement]] = []


class Forwarding:
    """The ``MESSAGE`` frames of one node's cluster service; see the module docstring."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        #: Hop counts of messages that arrived here for a name not registered here, by id,
        #: until the router forwards them on.
        self._hops: dict[str, int] = {}
        #: Acknowledged messages to send at the end of this loop turn, by node id.
        self._batches: dict[str, _Batch] = {}
        #: Nodes already reported to speak only unacknowledged frames (logged once each).
        self._unacked_peers: set[str] = set()

    async def forward(self, route: PeerRoute, message: Message) -> Acknowledgement | None:
        """Send ``message`` to the node of ``route`` (in order, on its one connection).

        An at-least-once node sends it acknowledged (version 2) to a node that speaks
        it: the returned :data:`~caxton.messaging.remote.Acknowledgement` settles when
        that node answers. Otherwise (at-most-once, or an older node) the frame is
        unacknowledged (version 1) and None is returned once the transport took it.
        """
        tracing = self.cluster.node.tracing
        if tracing is None or not tracing.sampled(message):
            return await self._forward(route, message)
        with tracing.message_span("caxton.forward", message, **{"caxton.to_node": route.node_id}):
            return await self._forward(route, message)

    async def _forward(self, route: PeerRoute, message: Message) -> Acknowledgement | None:
        cluster = self.cluster
        router = cluster.router
        if router is not None and router.guarantee == "at-least-once":
            if route.version >= wire.ACKED_VERSION:
                if self._hops:  # one arrived unacknowledged: answered "miss" if stale now
                    self._hops.pop(message.message_id, None)
                return self._batch(route, message)
            if route.node_id not in self._unacked_peers:
                self._unacked_peers.add(route.node_id)
                log.warning(
                    "node %s speaks MESSAGE frames up to version %d, without acknowledgements:"
                    " at-least-once messages to it count as delivered once its transport"
                    " took them (upgrade it to get them acknowledged)",
                    route.node_id,
                    route.version,
                )
        hops = self._hops.pop(message.message_id, 0) if self._hops else 0
        payload = wire.encode_message(message, hops, self._origin(message))
        try:
            await cluster.transport.send(route.address, FrameKind.MESSAGE, payload)
        except TransportError:
            cluster._invalidate_node(route.node_id)
            if await cluster.partition.forward_failed(route, message):
                return None
            raise
        cluster.counts["forwarded"] += 1
        return None

    def _origin(self, message: Message) -> str | None:
        """The node of ``message``'s sender when this node only passes the message on
        (handed over with a moved agent, or it reached a stale route here): the
        receiver sends replies there, not here, where the sender is not."""
        cluster = self.cluster
        origin = cluster.reply_route(message.sender) if message.sender else None
        return None if origin == cluster.node_id else origin

    # -- acknowledged (version 2) ----------------------------------------------------

    def _batch(self, route: PeerRoute, message: Message) -> Acknowledgement:
        packed = wire.pack_message(message, self._origin(message))
        batch = self._batches.get(route.node_id)
        loop = self.cluster._get_loop()
        if batch is None or batch.route.address != route.address:
            if batch is not None:
                self._flush(route.node_id)
            batch = self._batches[route.node_id] = _Batch(route)
            loop.call_soon(self._flush, route.node_id, batch)
        ack: Acknowledgement = loop.create_future()
        batch.packed.append(packed)
        batch.acks.append((message, ack))
        if len(batch.packed) >= MAX_BATCH:
            self._flush(route.node_id)
        return ack

    def _flush(self, node_id: str, batch: _Batch | None = None) -> None:
        """Send the batch gathered for ``node_id`` (if it is still ``batch``)."""
        current = self._batches.get(node_id)
        if current is None or (batch is not None and current is not batch):
            return
        del self._batches[node_id]
        self.cluster._spawn(self._send_batch(current))

    async def _send_batch(self, batch: _Batch) -> None:
        """One request for the batch; settle every message's acknowledgement."""
        cluster = self.cluster
        route = batch.route
        try:
            try:
                # (the outer bound covers a connection stuck in back-pressure too)
                answer = await asyncio.wait_for(
                    cluster.transport.request(
                        route.address,
                        FrameKind.MESSAGE,
                        wire.encode_batch(batch.packed),
                        ACK_TIMEOUT,
                    ),
                    ACK_TIMEOUT + 1.0,
                )
            except asyncio.TimeoutError:
                raise TransportError(
                    f"{route.node_id} did not acknowledge within {ACK_TIMEOUT:g}s"
                ) from None
            results = wire.decode_results(answer, len(batch.acks))
        except CaxtonError as exc:
            if isinstance(exc, TransportError):
                cluster._invalidate_node(route.node_id)
            for message, ack in batch.acks:
                if await cluster.partition.forward_failed(route, message):
                    ack.set_result(None)  # queued until the partition heals
                elif not ack.done():
                    ack.set_exception(exc)
            return
        except BaseException as exc:  # cancelled (the node stops): the outbox keeps them
            for _message, ack in batch.acks:
                if not ack.done():
                    ack.set_exception(TransportError(f"not acknowledged: {exc!r}"))
            raise
        for (message, ack), result in zip(batch.acks, results, strict=True):
            if result is None:
                cluster.counts["forwarded"] += 1
                ack.set_result(None)
            elif result[0] == "miss":
                cluster.drop_route(message.receiver, route.node_id)
                ack.set_exception(AgentNotFound(f"{result[1]} (on {route.node_id})"))
            else:
                cluster.counts["undeliverable"] += 1
                ack.set_result(f"undeliverable: {result[1]} (refused by {route.node_id})")

    async def on_batch(self, frame: Frame) -> bytes:
        """An acknowledged ``MESSAGE`` frame arrived: take each message to the router,
        answer once every one is enqueued (committed to the store, at-least-once)."""
        cluster = self.cluster
        router = cluster.router
        messages = wire.decode_batch(frame.payload)
        results: list[list[str] | None] = []
        waiting: list[asyncio.Future[None]] = []
        for item in messages:
            if isinstance(item, CaxtonError):
                results.append(["dead", str(item)])
                continue
            message, origin = item
            cluster.counts["received"] += 1
            cluster.learn_reply_route(message.sender, origin or frame.sender)
            receiver = message.receiver
            if router is not None and not cluster.leaving and router.client_ended(receiver):
                # a late reply: no other node has that client, so "miss" (look for it
                # again until the TTL runs out) would only hold it on the sender's side
                results.append(["dead", f"{receiver} is no longer waiting for a reply"])
                continue
            if router is None or cluster.leaving or not router.is_registered(receiver):
                results.append(["miss", f"Agent not found: {receiver}"])
                continue
            try:
                done = router.accept_forwarded(message)
            except Forbidden as exc:
                self.refuse(message, str(exc))
                results.append(["dead", f"refused: {exc}"])
                continue
            except AgentNotFound as exc:
                results.append(["miss", str(exc)])
                continue
            except CaxtonError as exc:
                results.append(["dead", str(exc)])
                continue
            results.append(None)
            if done is not None:
                waiting.append(done)
        if waiting:
            # A failed commit fails the whole request: the sender sends it all again,
            # and what was committed is dropped here as a duplicate.
            await asyncio.gather(*waiting)
        return wire.pack(results)

    # -- inbound ------------------------------------------------------------------------

    def on_message(self, frame: Frame) -> None:
        """An unacknowledged (version 1) ``MESSAGE`` frame arrived: hand the message to
        the router."""
        cluster = self.cluster
        router = cluster.router
        try:
            message, hops, sender_node = wire.decode_message(frame.payload)
        except CaxtonError as exc:
            log.warning("dropped a message frame from %s: %s", frame.sender, exc)
            return
        cluster.counts["received"] += 1
        origin = frame.sender
        cluster.learn_reply_route(message.sender, sender_node or origin)
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
