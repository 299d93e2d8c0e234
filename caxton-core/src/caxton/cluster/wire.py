"""What cluster nodes say to each other over the transport (msgpack).

- ``FrameKind.MESSAGE``, version 1: one routed agent message, ``[1, hops, message]``
  with the message as :meth:`caxton.messaging.Message.to_dict` gives it, sent as a
  plain frame (no answer). ``hops`` counts the nodes that forwarded it already (a node
  that does not host the receiver forwards it at most once more).
- ``FrameKind.MESSAGE``, version 2 (acknowledged): ``[2, [message, ...]]``, each
  message packed on its own (msgpack bytes of its ``to_dict()``), sent as a *request*.
  The receiving node answers once every message is enqueued there (committed to its
  SQLite store when it runs at-least-once) with one result per message: ``nil`` (taken),
  ``["miss", reason]`` (the receiver is not here: resolve again) or ``["dead", reason]``
  (it cannot be taken: dead-letter it with the reason). A node speaks the versions up
  to :data:`MESSAGE_VERSION` and gossips it in its metadata (``wire``); it sends
  version 2 only to a node that gossips 2 or more (docs/design/0003-wire-protocol-
  versioning.md).
- A message passed on by a node that is not its sender's (handed over with a moved
  agent, forwarded from a stale route) carries ``origin`` in its map: the node its
  sender is reached through, so the receiver sends replies there and not to the node
  that passed it on (``Message.from_dict`` ignores the key: older nodes take the
  message as before and learn the route from the frame).
- ``FrameKind.CONTROL``: ``[op, args...]``; as a request it gets a msgpack answer.

============  ========================================  ===============================
op            request                                   answer
============  ========================================  ===============================
``pull``      ``[epoch, counter]`` or ``nil``           a registry delta
``push``      a registry delta (no answer)              -
``where``     ``name``                                  ``[delta]`` or ``[]``
``miss``      ``name`` (no answer: it is not here)      -
``auth``      -                                         the node's security summary
``ping``      -                                         ``node_id``
``lease``     - (a quorum lease heartbeat)               ``node_id``
``silence``   ``node_id``                               seconds since the last round trip
``leave``     ``drain_timeout``                         ``true``
``deploy``    sealed ``{spec, wasm}``                   ``["ok", agent]`` or an error
``replica``   sealed replica (``wasm`` when asked)      ``"ok"``, ``"module"``, ``"stale"``
``holdings``  sealed ``{keep: [agent ids]}``            ``true``
``claim``     sealed ``{agent_id, name, generation}``   the generation here, or ``nil``
``agent``     sealed ``{action, agent_id, options,      ``["ok", result]`` or an error
              caller}``
``backup``    sealed (:mod:`caxton.cluster.operations`: ``["ok", ...]`` or an error
              ``backup``, ``backup-read``, ``emergency``)
============  ========================================  ===============================

*Sealed* bodies carry their sender and are authenticated (mTLS or the gossip keyring),
see :mod:`caxton.cluster.trust`; a refused one is answered with
``["error", status, error, message, details]``. ``deploy`` places an agent here
(:mod:`caxton.cluster.placement`); ``replica``, ``holdings`` and ``claim`` keep the
replicas of agents and settle which node runs a moved one (:mod:`caxton.cluster.failover`).
``agent`` carries out a REST agent operation that reached another node, with the
caller's identity (:mod:`caxton.cluster.agent_ops`).
"""

from __future__ import annotations

from typing import Any

import msgpack

from caxton.errors import ValidationError
from caxton.messaging import Message

__all__ = [
    "ACKED_VERSION",
    "MESSAGE_VERSION",
    "OLDEST_VERSION",
    "decode_batch",
    "decode_control",
    "decode_message",
    "decode_results",
    "encode_batch",
    "encode_control",
    "encode_message",
    "pack_message",
]

#: The newest MESSAGE frame version this node speaks (gossiped as ``wire``).
MESSAGE_VERSION = 2
#: The first version whose MESSAGE frames are acknowledged by the receiving node.
ACKED_VERSION = 2
#: What a node that gossips no ``wire`` speaks (it predates the key).
FIRST_VERSION = 1
#: The oldest version this node still speaks (gossiped as ``wire_min``). The supported
#: skew of a rolling upgrade is this wire version and the previous one: a node refuses
#: members whose range does not overlap its own (:mod:`caxton.cluster.versions`).
OLDEST_VERSION = max(FIRST_VERSION, MESSAGE_VERSION - 1)

_packb = msgpack.Packer(use_bin_type=True).pack

#: The key of a passed-on message's map naming the node its sender is reached through.
ORIGIN = "origin"


def encode_message(message: Message, hops: int = 0, origin: str | None = None) -> bytes:
    """A version 1 frame (not acknowledged); ``origin``: the node the sender is reached
    through, when it is not the node that sends the frame."""
    try:
        return bytes(_packb([FIRST_VERSION, hops, _message_map(message, origin)]))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"Invalid message: content cannot be encoded for another node ({exc})"
        ) from None


def decode_message(payload: bytes, max_size: int | None = None) -> tuple[Message, int, str | None]:
    """The message, its hop count and its ``origin`` (None: the node that sent the
    frame); ValidationError when malformed."""
    try:
        version, hops, data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ValidationError("malformed message frame") from None
    if version != FIRST_VERSION or not isinstance(hops, int) or not isinstance(data, dict):
        raise ValidationError(f"unsupported message frame (version {version!r})")
    message, origin = _received(data)
    return message, hops, origin


def pack_message(message: Message, origin: str | None = None) -> bytes:
    """One message of a version 2 frame (``origin`` as for :func:`encode_message`);
    ValidationError when its content cannot travel."""
    try:
        return bytes(_packb(_message_map(message, origin)))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"Invalid message: content cannot be encoded for another node ({exc})"
        ) from None


def encode_batch(packed: list[bytes]) -> bytes:
    """A version 2 frame of messages packed by :func:`pack_message`."""
    return bytes(_packb([ACKED_VERSION, packed]))


def decode_batch(payload: bytes) -> list[tuple[Message, str | None] | ValidationError]:
    """The messages of a version 2 frame, each with its ``origin`` (as
    :func:`decode_message`); a malformed one is its ValidationError (the others still
    count); a malformed frame raises ValidationError."""
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ValidationError("malformed message frame") from None
    if not isinstance(data, list) or not data:
        raise ValidationError("malformed message frame")
    if data[0] != ACKED_VERSION:
        raise ValidationError(f"unsupported message frame (version {data[0]!r})")
    packed = data[1] if len(data) == 2 else None
    if not isinstance(packed, list):
        raise ValidationError("malformed message frame")
    messages: list[tuple[Message, str | None] | ValidationError] = []
    for item in packed:
        try:
            data = msgpack.unpackb(item, raw=False, strict_map_key=True)
            if not isinstance(data, dict):
                raise ValidationError("malformed message in a message frame")
            messages.append(_received(data))
        except (ValueError, TypeError, msgpack.UnpackException):
            messages.append(ValidationError("malformed message in a message frame"))
        except ValidationError as exc:
            messages.append(exc)
    return messages


def _message_map(message: Message, origin: str | None) -> dict[str, Any]:
    data = message.to_dict()
    if origin is not None:
        data[ORIGIN] = origin
    return data


def _received(data: dict[str, Any]) -> tuple[Message, str | None]:
    origin = data.pop(ORIGIN, None)
    message = Message.from_dict(data)
    message.wire_size = None
    return message, origin if isinstance(origin, str) and origin else None


def decode_results(payload: bytes, count: int) -> list[tuple[str, str] | None]:
    """The answer to a version 2 frame of ``count`` messages: per message ``None``
    (taken) or ``(kind, reason)``, kind ``"miss"`` or ``"dead"``."""
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        data = None
    if not isinstance(data, list) or len(data) != count:
        raise ValidationError("malformed acknowledgement of a message frame")
    results: list[tuple[str, str] | None] = []
    for item in data:
        if item is None:
            results.append(None)
        elif (
            isinstance(item, list)
            and len(item) == 2
            and item[0] in ("miss", "dead")
            and isinstance(item[1], str)
        ):
            results.append((item[0], item[1]))
        else:
            raise ValidationError("malformed acknowledgement of a message frame")
    return results


def encode_control(op: str, *args: Any) -> bytes:
    return bytes(_packb([op, *args]))


def decode_control(payload: bytes) -> tuple[str, list[Any]]:
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ValidationError("malformed control frame") from None
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise ValidationError("malformed control frame")
    return data[0], data[1:]


def pack(value: Any) -> bytes:
    """A control answer."""
    return bytes(_packb(value))


def unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ValidationError("malformed control answer") from None
