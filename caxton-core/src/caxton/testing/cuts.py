"""Network cuts between in-process nodes, on their established transport connections.

:class:`ConnectionCuts` is a test double for a firewall rule that drops packets between
two nodes, seen from the connection: once :meth:`~ConnectionCuts.cut`, whatever one
node writes on its transport connections to the other is dropped, a whole envelope at a
time (the stream on the other side stays parseable; nothing arrives, as behind a silent
drop). Cuts are per direction, so a one-way cut (``a`` reaches ``b``, ``b`` does not
reach ``a``) and a bridge (``a`` and ``c`` cut, both still reach ``b``) are one call each
(the shapes are :class:`caxton.testing.network.Cuts`, shared with ``LinkCuts``)::

    cuts = ConnectionCuts()
    for node in nodes:
        cuts.attach(node.transport)          # a ConnectionTransport (tcp, quic)
    cuts.cut("n1", "n3")                     # n1 -> n3 dropped, n3 -> n1 flows
    ...
    cuts.heal()
    cuts.close_connections("n1", "n3")       # what a long cut ends with: the connection
                                             # closes (keep-alive, membership), data lost

Datagrams (SWIM probes over UDP) are not cut: membership keeps seeing every node, so a
test decides itself when a connection closes (:meth:`~ConnectionCuts.close_connections`),
deterministically. Only frames written after a connection's HELLO exchange are cut.

Unlike :class:`caxton.testing.network.LinkCuts`, which wraps the transport driver (a
frame sent over a cut link never reaches a connection; a request times out), this one
lets the transport take the frame and loses it on the connection, which then closes:
the transport's own failure path (pending requests failed with "connection lost"), as
when a silent drop ends with a keep-alive timeout or membership declaring the peer
failed. Attach it to the nodes' real transports; no driver to register.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caxton.testing.network import Cuts
from caxton.transport.base import ConnectionTransport
from caxton.transport.connection import Connection

__all__ = ["ConnectionCuts"]


class ConnectionCuts(Cuts):
    """Directional cuts between the transports attached to it; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._transports: dict[str, ConnectionTransport] = {}
        #: Envelopes dropped, by (from, to).
        self.dropped: dict[tuple[str, str], int] = {}

    def attach(self, transport: Any) -> None:
        """Cut this transport's connections from now on (existing ones included)."""
        if not isinstance(transport, ConnectionTransport):
            raise TypeError(f"ConnectionCuts needs a ConnectionTransport, not {transport!r}")
        self._transports[transport.settings.node_id] = transport
        ready = transport.connection_ready

        def connection_ready(connection: Connection) -> None:
            self._wrap(transport.settings.node_id, connection)
            ready(connection)

        transport.connection_ready = connection_ready  # type: ignore[method-assign]
        for connection in transport.connections():
            if connection.peer_node_id is not None:
                self._wrap(transport.settings.node_id, connection)

    def nodes(self) -> list[str]:
        return sorted(self._transports)

    def close_connections(self, a: str, b: str) -> int:
        """Abort every connection between ``a`` and ``b`` on both sides, as a cut that
        lasted ends (keep-alive gave up, or membership declared the peer failed); the
        data still buffered in them is lost. Returns how many were closed."""
        closed = 0
        for node_id, peer in ((a, b), (b, a)):
            transport = self._transports.get(node_id)
            if transport is None:
                continue
            for connection in transport.connections():
                if connection.peer_node_id == peer:
                    connection.abort()
                    closed += 1
        return closed

    def _wrap(self, node_id: str, connection: Connection) -> None:
        channel = connection.channel
        if getattr(channel, "_caxton_cut", False):
            return
        write: Callable[[bytes], None] = channel.write
        peer = connection.peer_node_id or ""
        link = (node_id, peer)

        def cut_write(data: bytes) -> None:
            if self.is_cut(*link):
                self.dropped[link] = self.dropped.get(link, 0) + 1
                return
            write(data)

        channel.write = cut_write  # type: ignore[method-assign]
        channel._caxton_cut = True  # type: ignore[attr-defined]
