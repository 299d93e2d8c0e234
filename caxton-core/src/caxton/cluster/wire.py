"""What cluster nodes say to each other over the transport (msgpack).

- ``FrameKind.MESSAGE``: one routed agent message, ``[1, hops, message]`` with the
  message as :meth:`caxton.messaging.Message.to_dict` gives it. ``hops`` counts the
  nodes that forwarded it already (a node that does not host the receiver forwards it
  at most once more).
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
``leave``     ``drain_timeout``                         ``true``
``deploy``    sealed ``{spec, wasm}``                   ``["ok", agent]`` or an error
``replica``   sealed replica (``wasm`` when asked)      ``"ok"``, ``"module"``, ``"stale"``
``holdings``  sealed ``{keep: [agent ids]}``            ``true``
``claim``     sealed ``{agent_id, name, generation}``   the generation here, or ``nil``
``agent``     sealed ``{action, agent_id, options,      ``["ok", result]`` or an error
              caller}``
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
    "MESSAGE_VERSION",
    "decode_control",
    "decode_message",
    "encode_control",
    "encode_message",
]

MESSAGE_VERSION = 1

_packb = msgpack.Packer(use_bin_type=True).pack


def encode_message(message: Message, hops: int = 0) -> bytes:
    try:
        return bytes(_packb([MESSAGE_VERSION, hops, message.to_dict()]))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"Invalid message: content cannot be encoded for another node ({exc})"
        ) from None


def decode_message(payload: bytes, max_size: int | None = None) -> tuple[Message, int]:
    """The message and its hop count; ValidationError when malformed."""
    try:
        version, hops, data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ValidationError("malformed message frame") from None
    if version != MESSAGE_VERSION or not isinstance(hops, int) or not isinstance(data, dict):
        raise ValidationError(f"unsupported message frame (version {version!r})")
    message = Message.from_dict(data)
    message.wire_size = None
    return message, hops


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
