"""One transport, several consumers: routing inbound frames by kind.

A node listens once (``transport.listen(address, dispatcher.on_frame,
dispatcher.on_datagram)``) while membership wants ``GOSSIP`` frames and datagrams and
the message router wants ``MESSAGE``/``REQUEST``/``BULK`` frames. A frame of a kind
nobody routed is dropped (logged once per kind), or, if it is a request, answered with
an error the requester sees as :class:`caxton.errors.TransportError`.
"""

from __future__ import annotations

import logging

from caxton.drivers.transport import (
    Address,
    DatagramHandler,
    Frame,
    FrameHandler,
    FrameKind,
)
from caxton.errors import TransportError

log = logging.getLogger("caxton.transport")


class FrameDispatcher:
    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        self._routes: dict[FrameKind, FrameHandler] = {}
        self._datagram_handler: DatagramHandler | None = None
        self._warned: set[FrameKind] = set()

    def route(self, kind: FrameKind, handler: FrameHandler) -> None:
        """Send frames of ``kind`` to ``handler`` (one handler per kind)."""
        if kind in self._routes:
            raise ValueError(f"{kind.name} frames are already routed to {self._routes[kind]!r}")
        self._routes[kind] = handler

    def route_datagrams(self, handler: DatagramHandler) -> None:
        if self._datagram_handler is not None:
            raise ValueError("datagrams are already routed")
        self._datagram_handler = handler

    async def on_frame(self, frame: Frame) -> bytes | None:
        handler = self._routes.get(frame.kind)
        if handler is not None:
            return await handler(frame)
        if frame.kind not in self._warned:
            self._warned.add(frame.kind)
            log.warning(
                "no handler for %s frames (from %s); dropping them",
                frame.kind.name,
                frame.sender or "?",
            )
        if frame.request_id:
            where = f" on node {self.node_id}" if self.node_id else ""
            raise TransportError(f"no handler for {frame.kind.name} requests{where}")
        return None

    def on_datagram(self, payload: bytes, source: Address) -> None:
        if self._datagram_handler is not None:
            self._datagram_handler(payload, source)
