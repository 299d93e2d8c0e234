"""The transport driver: how nodes exchange frames (entry-point group ``caxton.transport``).

Reliable, ordered, framed delivery per peer for routed messages, requests and bulk
transfers; unreliable datagrams for gossip probes. The wire envelope is described in
docs/transports.md; :class:`caxton.testing.TransportConformance` is the contract.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from caxton.drivers.base import Driver

#: (host, port)
Address = tuple[str, int]


class FrameKind(IntEnum):
    MESSAGE = 1  # a routed agent message, no response
    REQUEST = 2  # expects a RESPONSE with the same request id
    RESPONSE = 3
    GOSSIP = 4  # membership traffic sent over the reliable channel (push-pull)
    BULK = 5  # large payloads such as agent modules
    CONTROL = 6


@dataclass(frozen=True)
class Frame:
    kind: FrameKind
    payload: bytes
    #: Node id of the sender, authenticated by the transport when TLS is on.
    sender: str = ""
    request_id: int = 0


@dataclass
class PeerStats:
    rtt_ms: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    errors: int = 0
    connects: int = 0


#: Called for every inbound reliable frame. For REQUEST frames, the returned bytes are
#: sent back as the RESPONSE; for other kinds the return value is ignored.
FrameHandler = Callable[[Frame], Awaitable[bytes | None]]
#: Called for every inbound datagram: (payload, source address).
DatagramHandler = Callable[[bytes, Address], None]


class Transport(Driver):
    kind: ClassVar[str] = "transport"

    @abstractmethod
    async def listen(
        self, address: Address, on_frame: FrameHandler, on_datagram: DatagramHandler
    ) -> Address:
        """Start accepting peers at ``address``; return the bound address (port 0 allowed)."""

    @abstractmethod
    async def send(self, peer: Address, kind: FrameKind, payload: bytes) -> None:
        """Queue one frame to ``peer`` (connecting or reusing a pooled connection).

        Waits when the peer is slow (back-pressure); raises
        :class:`caxton.errors.TransportError` when the peer cannot be reached.
        """

    @abstractmethod
    async def request(
        self, peer: Address, kind: FrameKind, payload: bytes, timeout: float
    ) -> bytes:
        """Send a request frame and wait up to ``timeout`` seconds for its response."""

    @abstractmethod
    async def send_datagram(self, peer: Address, payload: bytes) -> None:
        """Best-effort datagram (gossip probes). May be dropped silently."""

    @abstractmethod
    def peer_stats(self) -> Mapping[Address, PeerStats]:
        """Per-peer counters and the last measured round-trip time."""

    def forget_peer(self, peer: Address) -> None:
        """Membership says ``peer`` failed or left: a dial to it under way gives up now.

        Its callers get :class:`caxton.errors.TransportError` instead of waiting out
        the dial's retries (seconds), so what queued behind them can go elsewhere. The
        default does nothing (a transport that does not retry dials needs nothing).
        """
