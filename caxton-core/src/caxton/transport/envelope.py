"""The versioned msgpack envelope every transport puts on the wire.

One envelope is ``[version, flags, sender, records]``: the wire version (1), flag bits,
the sender's node id, and one or more records ``[kind, request_id, payload]``. Batching
is the normal case, not a special kind: small frames queued in the same event-loop turn
travel as records of one envelope. With :data:`FLAG_COMPRESSED` the records list is
packed and zlib-compressed into a single bytes value (compression is for WAN links; it
is off by default).

Record kinds 1-6 are :class:`caxton.drivers.transport.FrameKind`; higher kinds are the
transport's own control records (:class:`Kind`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

import msgpack

from caxton.errors import ProtocolError

WIRE_VERSION = 1
FLAG_COMPRESSED = 0x01

#: One record: (kind, request id, payload).
Record = tuple[int, int, bytes]


class Kind(IntEnum):
    """Record kinds: the public frame kinds and the transport's control records."""

    MESSAGE = 1
    REQUEST = 2
    RESPONSE = 3
    GOSSIP = 4
    BULK = 5
    CONTROL = 6
    #: First record on a connection, both ways: payload ``[listen_host, listen_port]``.
    HELLO = 16
    #: A datagram carried on the connection (when no keyring secures UDP).
    DATAGRAM = 17
    #: A REQUEST whose handler failed: payload is the UTF-8 reason.
    ERROR = 18
    #: The sender is closing: no new requests, in-flight ones still complete.
    GOAWAY = 19
    PING = 20
    PONG = 21
    #: Enrolment, the only record a client without a certificate may send, once; the
    #: answer comes back as the same kind (caxton.security.enrolment).
    ENROL = 22


#: Kinds delivered to the application's frame handler.
APPLICATION_KINDS = frozenset({1, 2, 4, 5, 6})


@dataclass(frozen=True)
class Envelope:
    sender: str
    records: list[Record]
    flags: int = 0
    version: int = WIRE_VERSION


_packer = msgpack.Packer(use_bin_type=True)


def pack_envelope(sender: str, records: list[Record], *, compress_over: int | None = None) -> bytes:
    """Serialize one envelope; compress the records when they exceed ``compress_over``."""
    if compress_over is not None:
        packed = msgpack.packb(records, use_bin_type=True)
        if len(packed) > compress_over:
            compressed = zlib.compress(packed, 1)
            if len(compressed) < len(packed):
                header = [WIRE_VERSION, FLAG_COMPRESSED, sender, compressed]
                return cast(bytes, _packer.pack(header))
    return cast(bytes, _packer.pack([WIRE_VERSION, 0, sender, records]))


def unpack_envelope(body: bytes, *, max_size: int) -> Envelope:
    """Parse one envelope body; raise :class:`ProtocolError` naming what is wrong."""
    try:
        data: Any = msgpack.unpackb(body, use_list=True, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable envelope ({type(exc).__name__})") from None
    if not isinstance(data, list) or len(data) != 4:
        raise ProtocolError("malformed envelope: expected [version, flags, sender, records]")
    version, flags, sender, records = data
    if version != WIRE_VERSION:
        raise ProtocolError(f"unsupported wire version {version!r} (this node speaks 1)")
    if not isinstance(flags, int) or not isinstance(sender, str):
        raise ProtocolError("malformed envelope header")
    if flags & FLAG_COMPRESSED:
        records = _decompress(records, max_size)
    if not isinstance(records, list) or not records:
        raise ProtocolError("malformed envelope: no records")
    checked: list[Record] = []
    for record in records:
        if (
            not isinstance(record, list)
            or len(record) != 3
            or type(record[0]) is not int
            or type(record[1]) is not int
            or type(record[2]) is not bytes
        ):
            raise ProtocolError("malformed record: expected [kind, request_id, payload]")
        checked.append((record[0], record[1], record[2]))
    return Envelope(sender, checked, flags, version)


def _decompress(data: Any, max_size: int) -> Any:
    if not isinstance(data, bytes):
        raise ProtocolError("malformed compressed envelope")
    inflater = zlib.decompressobj()
    try:
        packed = inflater.decompress(data, max_size)
    except zlib.error:
        raise ProtocolError("corrupt compressed envelope") from None
    if inflater.unconsumed_tail:
        raise ProtocolError(f"compressed envelope inflates beyond max_frame_size ({max_size})")
    try:
        return msgpack.unpackb(packed, use_list=True, raw=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable compressed records ({type(exc).__name__})") from None
