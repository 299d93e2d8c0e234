"""What both node-to-node transports share: envelope, framing, connections, pooling,
the gossip keyring and the driver base class. See docs/transports.md."""

from __future__ import annotations

from caxton.transport.base import ConnectionTransport, settings_from_context
from caxton.transport.connection import Channel, Connection
from caxton.transport.dispatch import FrameDispatcher
from caxton.transport.envelope import WIRE_VERSION, Envelope, Kind, pack_envelope, unpack_envelope
from caxton.transport.framing import FrameDecoder, FrameTooLarge, frame
from caxton.transport.keyring import Keyring, generate_key
from caxton.transport.pool import Backoff, PeerPool
from caxton.transport.settings import TransportSettings

__all__ = [
    "WIRE_VERSION",
    "Backoff",
    "Channel",
    "Connection",
    "ConnectionTransport",
    "Envelope",
    "FrameDecoder",
    "FrameDispatcher",
    "FrameTooLarge",
    "Keyring",
    "Kind",
    "PeerPool",
    "TransportSettings",
    "frame",
    "generate_key",
    "pack_envelope",
    "settings_from_context",
    "unpack_envelope",
]
