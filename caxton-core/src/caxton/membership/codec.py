"""The SWIM wire format: compact msgpack datagrams and push-pull state.

A datagram is one msgpack array ``[VERSION, sender_id, host, port, msg, msg, ...]``:
the sender names itself and the address it wants replies on (the source address a
transport reports may be an ephemeral socket), then carries one or more messages, the
primary one (a ping, an ack) first and piggybacked gossip after it, up to the datagram
budget. Each message is an array whose first item is its :class:`MsgType`.

A push-pull payload (sent over the transport's reliable ``GOSSIP`` request) is
``[VERSION, sender_id, host, port, purpose, [entry, ...], delegate_state]`` with one
entry ``[node_id, host, port, incarnation, status, meta]`` per known member and the
gossip delegate's full state (bytes, or nil without a delegate).

Decoding never raises anything but :class:`MalformedMessage`, so a garbage packet from
the network is counted and dropped, never a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from caxton.drivers.membership import MemberStatus
from caxton.drivers.transport import Address

VERSION = 1
#: Bytes a datagram may use; below the usual 1500-byte MTU with IP/UDP headers to spare.
DATAGRAM_BUDGET = 1400
#: The largest encoded metadata a node may gossip (as memberlist's ``MetaMaxSize``).
META_MAX_BYTES = 512
#: Room kept for the array header of a compound datagram (array16: 3 bytes).
_ARRAY_HEADER_ROOM = 3


class MalformedMessage(ValueError):
    """An inbound datagram or push-pull payload that is not valid SWIM wire data."""


class MsgType(IntEnum):
    PING = 0  # [PING, seq, target_id]
    PING_REQ = 1  # [PING_REQ, seq, target_id, host, port, want_nack]
    ACK = 2  # [ACK, seq, incarnation of the member that was pinged]
    NACK = 3  # [NACK, seq]
    ALIVE = 4  # [ALIVE, incarnation, node_id, host, port, meta]
    SUSPECT = 5  # [SUSPECT, incarnation, node_id, from_id]
    DEAD = 6  # [DEAD, incarnation, node_id, from_id]
    LEFT = 7  # [LEFT, incarnation, node_id]
    USER = 8  # [USER, key, payload]: a gossip delegate's message (agent registry...)


#: Status codes in push-pull entries.
STATUS_CODES: dict[MemberStatus, int] = {
    MemberStatus.ALIVE: 0,
    MemberStatus.SUSPECT: 1,
    MemberStatus.FAILED: 2,
    MemberStatus.LEFT: 3,
}
_STATUS_BY_CODE = {code: status for status, code in STATUS_CODES.items()}

#: Well-known metadata keys travel as one letter.
META_SHORT_KEYS = {
    "agents": "a",
    "cpu": "c",
    "memory": "m",
    "version": "v",
    "region": "r",
    "zone": "z",
    "labels": "l",
    "api": "p",
}
_META_LONG_KEYS = {short: long for long, short in META_SHORT_KEYS.items()}

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    packed: bytes = _packer.pack(obj)
    return packed


def encode_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata as it travels: well-known keys shortened."""
    return {META_SHORT_KEYS.get(key, key): value for key, value in meta.items()}


def decode_meta(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise MalformedMessage(f"metadata must be a map, got {type(raw).__name__}")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise MalformedMessage("metadata keys must be strings")
        meta[_META_LONG_KEYS.get(key, key)] = value
    return meta


def meta_size(meta: Mapping[str, Any]) -> int:
    """Encoded size of ``meta``; raises TypeError/ValueError when it cannot be encoded."""
    return len(pack(encode_meta(meta)))


# -------------------------------------------------------------------------
# Messages
# -------------------------------------------------------------------------


def ping(seq: int, target_id: str) -> bytes:
    return pack([MsgType.PING, seq, target_id])


def ping_req(seq: int, target_id: str, target: Address, want_nack: bool) -> bytes:
    return pack([MsgType.PING_REQ, seq, target_id, target[0], target[1], want_nack])


def ack(seq: int, incarnation: int) -> bytes:
    return pack([MsgType.ACK, seq, incarnation])


def nack(seq: int) -> bytes:
    return pack([MsgType.NACK, seq])


def alive(incarnation: int, node_id: str, address: Address, meta: Mapping[str, Any]) -> bytes:
    return pack([MsgType.ALIVE, incarnation, node_id, address[0], address[1], encode_meta(meta)])


def suspect(incarnation: int, node_id: str, from_id: str) -> bytes:
    return pack([MsgType.SUSPECT, incarnation, node_id, from_id])


def dead(incarnation: int, node_id: str, from_id: str) -> bytes:
    return pack([MsgType.DEAD, incarnation, node_id, from_id])


def left(incarnation: int, node_id: str) -> bytes:
    return pack([MsgType.LEFT, incarnation, node_id])


def user(key: str, payload: bytes) -> bytes:
    return pack([MsgType.USER, key, payload])


@dataclass(frozen=True)
class Header:
    sender_id: str
    address: Address


class DatagramBuilder:
    """Assembles compound datagrams for one sender within :data:`DATAGRAM_BUDGET`."""

    def __init__(self, sender_id: str, address: Address, budget: int = DATAGRAM_BUDGET):
        self._prefix = pack(VERSION) + pack(sender_id) + pack(address[0]) + pack(address[1])
        self.budget = budget

    @property
    def room(self) -> int:
        """Bytes left for messages in an empty datagram."""
        return self.budget - len(self._prefix) - _ARRAY_HEADER_ROOM

    def build(self, messages: Iterable[bytes]) -> bytes:
        parts = list(messages)
        header: bytes = _packer.pack_array_header(4 + len(parts))
        return header + self._prefix + b"".join(parts)


def decode_datagram(payload: bytes) -> tuple[Header, list[list[Any]]]:
    """Split a datagram into its header and messages (each a list starting with a type)."""
    items = _unpack(payload)
    if not isinstance(items, list) or len(items) < 5:
        raise MalformedMessage("not a SWIM datagram")
    version, sender_id, host, port, *messages = items
    if version != VERSION:
        raise MalformedMessage(f"unsupported SWIM protocol version {version!r}")
    header = Header(_str(sender_id), _address(host, port))
    for message in messages:
        _check_message(message)
    return header, messages


def _check_message(message: Any) -> None:
    if not isinstance(message, list) or not message or not isinstance(message[0], int):
        raise MalformedMessage("message is not a typed array")
    try:
        kind = MsgType(message[0])
    except ValueError:
        raise MalformedMessage(f"unknown message type {message[0]}") from None
    arity = _ARITY[kind]
    if len(message) != arity:
        raise MalformedMessage(f"{kind.name} has {len(message) - 1} fields, expected {arity - 1}")
    for index, check in enumerate(_FIELD_CHECKS[kind], start=1):
        message[index] = check(message[index])


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedMessage(f"undecodable payload: {exc}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"expected a string, got {type(value).__name__}")
    return value


def _uint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedMessage(f"expected a non-negative integer, got {value!r}")
    return value


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedMessage(f"expected bytes, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise MalformedMessage(f"expected a boolean, got {value!r}")
    return value


def _port(value: Any) -> int:
    port = _uint(value)
    if port > 65535:
        raise MalformedMessage(f"port out of range: {port}")
    return port


def _address(host: Any, port: Any) -> Address:
    return (_str(host), _port(port))


_ARITY = {
    MsgType.PING: 3,
    MsgType.PING_REQ: 6,
    MsgType.ACK: 3,
    MsgType.NACK: 2,
    MsgType.ALIVE: 6,
    MsgType.SUSPECT: 4,
    MsgType.DEAD: 4,
    MsgType.LEFT: 3,
    MsgType.USER: 3,
}
_FIELD_CHECKS: dict[MsgType, tuple[Any, ...]] = {
    MsgType.PING: (_uint, _str),
    MsgType.PING_REQ: (_uint, _str, _str, _port, _bool),
    MsgType.ACK: (_uint, _uint),
    MsgType.NACK: (_uint,),
    MsgType.ALIVE: (_uint, _str, _str, _port, decode_meta),
    MsgType.SUSPECT: (_uint, _str, _str),
    MsgType.DEAD: (_uint, _str, _str),
    MsgType.LEFT: (_uint, _str),
    MsgType.USER: (_str, _bytes),
}


# -------------------------------------------------------------------------
# Push-pull state
# -------------------------------------------------------------------------


@dataclass(frozen=True)
class StateEntry:
    node_id: str
    address: Address
    incarnation: int
    status: MemberStatus
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class SyncPayload:
    header: Header
    purpose: str
    entries: list[StateEntry]
    delegate_state: bytes | None = None


def encode_sync(
    sender_id: str,
    address: Address,
    purpose: str,
    entries: Iterable[StateEntry],
    delegate_state: bytes | None = None,
) -> bytes:
    rows = [
        [
            e.node_id,
            e.address[0],
            e.address[1],
            e.incarnation,
            STATUS_CODES[e.status],
            encode_meta(e.meta),
        ]
        for e in entries
    ]
    return pack([VERSION, sender_id, address[0], address[1], purpose, rows, delegate_state])


def decode_sync(payload: bytes) -> SyncPayload:
    items = _unpack(payload)
    if not isinstance(items, list) or len(items) != 7:
        raise MalformedMessage("not a SWIM push-pull payload")
    version, sender_id, host, port, purpose, rows, delegate_state = items
    if version != VERSION:
        raise MalformedMessage(f"unsupported SWIM protocol version {version!r}")
    if not isinstance(rows, list):
        raise MalformedMessage("push-pull entries must be a list")
    entries = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 6:
            raise MalformedMessage("push-pull entry must have 6 fields")
        node_id, e_host, e_port, incarnation, code, meta = row
        status = _STATUS_BY_CODE.get(code) if isinstance(code, int) else None
        if status is None:
            raise MalformedMessage(f"unknown member status code {code!r}")
        entries.append(
            StateEntry(
                _str(node_id),
                _address(e_host, e_port),
                _uint(incarnation),
                status,
                decode_meta(meta),
            )
        )
    header = Header(_str(sender_id), _address(host, port))
    state = None if delegate_state is None else _bytes(delegate_state)
    return SyncPayload(header, _str(purpose), entries, state)
