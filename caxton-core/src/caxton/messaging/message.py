"""The FIPA-ACL message: what agents, clients and nodes exchange.

A :class:`Message` is a plain slotted dataclass so that building one on the hot path
costs a few hundred nanoseconds. Input from outside (an agent's JSON, an API body, a
peer node) goes through :meth:`Message.from_dict` / :meth:`Message.from_json`, which
check every field and raise :class:`~caxton.errors.ValidationError` with the field's
name; code that builds messages directly is trusted to pass the right types (strings
for performatives and priorities are still converted).

On the wire a message is one JSON object with the field names below (FIPA's hyphenated
spellings such as ``conversation-id`` and ``reply-by`` are accepted on input).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import msgpack
import orjson

from caxton.errors import MessageTooLarge, ValidationError
from caxton.messaging.performatives import Performative, Priority
from caxton.text import text_problem

__all__ = ["MAX_FIELD_LENGTH", "Message", "encode_content", "new_message_id", "too_large"]

#: Longest agent name, id, language, ontology or protocol accepted from outside.
MAX_FIELD_LENGTH = 255

_UUID4_VERSION_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_UUID4_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)


class _Entropy:
    """``os.urandom`` read 4 KiB at a time: one system call per 256 message ids."""

    __slots__ = ("buffer", "offset")

    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0

    def take16(self) -> bytes:
        offset = self.offset
        if offset >= len(self.buffer):
            self.buffer = os.urandom(4096)
            offset = 0
        self.offset = offset + 16
        return self.buffer[offset : offset + 16]

    def reset(self) -> None:  # a forked child must not reuse its parent's bytes
        self.buffer = b""
        self.offset = 0


_entropy = _Entropy()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_entropy.reset)


def new_message_id() -> str:
    """A random UUID4 as 32 hex digits, like ``uuid.uuid4().hex`` but cheaper."""
    bits = int.from_bytes(_entropy.take16(), "big")
    return "%032x" % ((bits & _UUID4_VERSION_MASK) | _UUID4_VERSION_BITS)


_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode_json = json.JSONDecoder().decode


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON of ``data``, as every message crossing into an agent is.

    orjson does it (7x faster than the standard library here); what orjson refuses
    (integers past 64 bits, keys that are not strings, lone surrogates) goes to the
    standard library, which encodes it or raises TypeError/ValueError as it always did.
    One difference remains: orjson writes NaN and infinities as ``null``, which JSON
    parsers accept, where the standard library would write an invalid ``NaN``.
    """
    try:
        return orjson.dumps(data)
    except TypeError:
        return _encode_json(data).encode()


#: Every byte to ``x`` but digits to ``0``: a 19-digit run is then a plain substring
#: search (a regular expression costs ten times more on a typical message).
_DIGITS_ONLY = bytes(ord("0") if 48 <= i <= 57 else ord("x") for i in range(256))
_LONG_NUMBER = b"0" * 19


def loads(data: bytes | str) -> Any:
    """Parse JSON text or UTF-8 bytes as the standard library does, faster.

    orjson parses, except documents with a run of 19 digits (orjson reads integers
    beyond 64 bits as floats, silently): those, and what orjson refuses (``NaN``, lone
    surrogate escapes), go to the standard library, so the same documents parse to the
    same values, or fail with the same messages.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG_NUMBER not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _decode_json(data if isinstance(data, str) else data.decode())


_OPTIONAL_STRINGS = (
    "language",
    "ontology",
    "protocol",
    "conversation_id",
    "reply_with",
    "in_reply_to",
    "traceparent",
)
_FIELDS = (
    "performative",
    "sender",
    "receiver",
    "receivers",
    "content",
    *_OPTIONAL_STRINGS,
    "reply_by",
    "message_id",
    "priority",
)
_FIELD_SET = frozenset(_FIELDS)
_PERFORMATIVE_NAMES = {p.value: p for p in Performative}
_PRIORITY_NAMES = {p.name.lower(): p for p in Priority}
_PRIORITY_LABELS = tuple(p.name.lower() for p in Priority)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


#: Input spellings of each field: FIPA's hyphenated names and the snake_case ones.
_ALIASES = {name.replace("_", "-"): name for name in _FIELDS if "_" in name}
_ALIASES.update(  # camelCase: conversationId, replyWith, inReplyTo, replyBy, messageId
    {_camel(name): name for name in _FIELDS if "_" in name}
)


def encode_content(content: Any) -> str:
    """``content`` as compact JSON; a clear error when it is not JSON-serializable."""
    try:
        return _encode_json(content)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"Invalid message: content is not JSON-serializable ({exc})"
        ) from None


@dataclass(slots=True)
class Message:
    """One FIPA-ACL message.

    ``receivers`` addresses several agents at once: the router delivers one copy to
    each (``receiver`` is then the first of them, or empty). ``reply_by`` is a Unix
    time in seconds. ``wire_size`` is the size of the JSON the message was parsed from,
    so the router need not encode it again to enforce the size cap.
    """

    performative: Performative
    sender: str
    receiver: str
    content: Any = None
    language: str | None = None
    ontology: str | None = None
    protocol: str | None = None
    conversation_id: str | None = None
    reply_with: str | None = None
    in_reply_to: str | None = None
    reply_by: float | None = None
    message_id: str = field(default_factory=new_message_id)
    priority: Priority = Priority.NORMAL
    receivers: tuple[str, ...] = ()
    #: W3C trace context (``00-<trace id>-<span id>-<flags>``) when the node traces.
    traceparent: str | None = None
    wire_size: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.performative) is not Performative:
            self.performative = Performative.parse(self.performative)
        if type(self.priority) is not Priority:
            self.priority = Priority.parse(self.priority)
        if type(self.receivers) is not tuple:
            self.receivers = tuple(self.receivers)
        if not self.receiver and self.receivers:
            self.receiver = self.receivers[0]

    # -- conversions ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The message as JSON-ready data; unset optional fields are left out."""
        # Unrolled: this runs for every message handed to an agent.
        data: dict[str, Any] = {
            "performative": self.performative._value_,
            "sender": self.sender,
            "receiver": self.receiver,
        }
        if self.receivers:
            data["receivers"] = list(self.receivers)
        if self.content is not None:
            data["content"] = self.content
        if self.language is not None:
            data["language"] = self.language
        if self.ontology is not None:
            data["ontology"] = self.ontology
        if self.protocol is not None:
            data["protocol"] = self.protocol
        if self.conversation_id is not None:
            data["conversation_id"] = self.conversation_id
        if self.reply_with is not None:
            data["reply_with"] = self.reply_with
        if self.in_reply_to is not None:
            data["in_reply_to"] = self.in_reply_to
        if self.reply_by is not None:
            data["reply_by"] = self.reply_by
        data["message_id"] = self.message_id
        data["priority"] = _PRIORITY_LABELS[self.priority]
        if self.traceparent is not None:
            data["traceparent"] = self.traceparent
        return data

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON of :meth:`to_dict`."""
        try:
            return dumps(self.to_dict())
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"Invalid message: content is not JSON-serializable ({exc})"
            ) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = False) -> Message:
        """Build a message from untrusted data, checking every field.

        Unknown fields are ignored (agents may carry extra parameters, as the agent ABI
        promises); ``strict=True`` refuses them, suggesting the field meant.
        """
        if not isinstance(data, Mapping):
            raise ValidationError(
                f"Invalid message: expected a JSON object, got {type(data).__name__}"
            )
        if not _FIELD_SET.issuperset(data):
            data = _canonical(data, strict)
        get = data.get

        performative = get("performative")
        found = _PERFORMATIVE_NAMES.get(performative) if type(performative) is str else None
        if found is None:
            if performative is None:
                raise ValidationError("Invalid message: missing field 'performative'")
            if not isinstance(performative, str):
                raise ValidationError(
                    f"Invalid message: field 'performative' must be a string, got {performative!r}"
                )
            found = Performative.parse(performative)

        sender = get("sender")
        # isprintable() is false for NUL and lone surrogates: _name then says which
        if (
            type(sender) is not str
            or not sender
            or len(sender) > MAX_FIELD_LENGTH
            or not sender.isprintable()
        ):
            sender = _required_name(data, "sender")

        receiver = get("receiver")
        receivers: tuple[str, ...] = ()
        raw_receivers = get("receivers")
        if raw_receivers is not None:
            receivers = _names(raw_receivers, "receivers")
        if (
            type(receiver) is not str
            or not receiver
            or len(receiver) > MAX_FIELD_LENGTH
            or not receiver.isprintable()
        ):
            if isinstance(receiver, (list, tuple)):
                receivers = receivers or _names(receiver, "receiver")
                receiver = receivers[0]
            elif receiver is None and receivers:
                receiver = receivers[0]
            else:
                receiver = _required_name(data, "receiver")

        for name in _OPTIONAL_STRINGS:
            value = get(name)
            if value is not None and (
                type(value) is not str
                or not value
                or len(value) > MAX_FIELD_LENGTH
                or not value.isprintable()
            ):
                _name(data, name, what="a string")  # raises, naming the field

        message_id = get("message_id")
        if message_id is None:
            message_id = new_message_id()
        elif (
            type(message_id) is not str
            or not message_id
            or len(message_id) > MAX_FIELD_LENGTH
            or not message_id.isprintable()
        ):
            _name(data, "message_id", what="an id")

        priority = get("priority")
        if priority is None:
            priority = Priority.NORMAL
        else:
            known = _PRIORITY_NAMES.get(priority) if type(priority) is str else None
            priority = known if known is not None else Priority.parse(priority)

        reply_by = get("reply_by")
        if reply_by is not None:
            reply_by = _timestamp(reply_by)

        return cls(
            found,
            sender,
            receiver,
            get("content"),
            get("language"),
            get("ontology"),
            get("protocol"),
            get("conversation_id"),
            get("reply_with"),
            get("in_reply_to"),
            reply_by,
            message_id,
            priority,
            receivers,
            get("traceparent"),
        )

    @classmethod
    def from_json(
        cls,
        data: bytes | bytearray | memoryview | str,
        *,
        max_size: int | None = None,
        strict: bool = False,
    ) -> Message:
        """Parse one JSON message, refusing more than ``max_size`` bytes first.

        The result remembers its size (``wire_size``), so the router need not encode
        it again to enforce its own cap. ``strict`` is as for :meth:`from_dict`.
        """
        size = len(data)
        if max_size is not None and size > max_size:
            raise MessageTooLarge(too_large(size, max_size))
        try:
            if isinstance(data, str):
                size = len(data.encode())
            elif type(data) is not bytes:
                data = bytes(data)
            decoded = loads(data)
        except UnicodeDecodeError as exc:
            raise ValidationError(f"Invalid message: not UTF-8 ({exc.reason})") from None
        except ValueError as exc:
            raise ValidationError(f"Invalid message JSON: {exc}") from None
        message = cls.from_dict(decoded, strict=strict)
        message.wire_size = size
        return message

    def to_msgpack(self) -> bytes:
        """:meth:`to_dict` as MessagePack (the compact encoding for node-to-node links)."""
        try:
            return bytes(msgpack.packb(self.to_dict(), use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(
                f"Invalid message: content cannot be encoded as MessagePack ({exc})"
            ) from None

    @classmethod
    def from_msgpack(
        cls, data: bytes, *, max_size: int | None = None, strict: bool = False
    ) -> Message:
        """Parse one MessagePack message (see :meth:`from_json` for the arguments)."""
        size = len(data)
        if max_size is not None and size > max_size:
            raise MessageTooLarge(too_large(size, max_size))
        try:
            decoded = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            detail = str(exc) or type(exc).__name__
            raise ValidationError(f"Invalid message MessagePack: {detail}") from None
        message = cls.from_dict(decoded, strict=strict)
        message.wire_size = size
        return message

    # -- replies --------------------------------------------------------------------

    def create_reply(
        self, performative: Performative | str, content: Any = None, *, sender: str | None = None
    ) -> Message:
        """A reply to the sender, in the same conversation and protocol.

        ``in_reply_to`` is this message's ``reply_with``, or its ``message_id`` when it
        asked for no particular token, so every reply can be matched to its request.
        """
        replier = sender if sender is not None else self.receiver
        if not replier:
            raise ValidationError(
                "Invalid reply: the message has several receivers; pass sender= to say who replies"
            )
        return Message(
            performative=Performative.parse(performative),
            sender=replier,
            receiver=self.sender,
            content=content,
            language=self.language,
            ontology=self.ontology,
            protocol=self.protocol,
            conversation_id=self.conversation_id,
            in_reply_to=self.reply_with if self.reply_with is not None else self.message_id,
            priority=self.priority,
        )

    @property
    def reply_token(self) -> str:
        """What a reply to this message carries as ``in_reply_to``."""
        return self.reply_with if self.reply_with is not None else self.message_id

    def copy(self, **changes: Any) -> Message:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return replace(self, **changes)


def too_large(size: int, limit: int) -> str:
    """The one wording of a size refusal (the sandbox uses it too)."""
    return f"Message too large: {size} bytes exceeds max_message_bytes ({limit} bytes)"


def _canonical(data: Mapping[str, Any], strict: bool) -> dict[str, Any]:
    """``data`` with alternative field names mapped, and unknown fields dropped or refused."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = _ALIASES.get(key, key) if isinstance(key, str) else key
        if name not in _FIELD_SET:
            if not strict:
                continue
            close = difflib.get_close_matches(str(name), _FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValidationError(
                f"Invalid message: unknown field {key!r}{hint}; fields are {', '.join(_FIELDS)}"
            )
        values[name] = value
    return values


def _required_name(values: Mapping[str, Any], key: str) -> str:
    name = _name(values, key)
    if name is None:
        raise ValidationError(f"Invalid message: missing field {key!r}")
    return name


def _name(values: Mapping[str, Any], key: str, *, what: str = "a name") -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(
            f"Invalid message: field {key!r} must be {what} (a non-empty string), got {value!r}"
        )
    if len(value) > MAX_FIELD_LENGTH:
        raise ValidationError(
            f"Invalid message: field {key!r} is {len(value)} characters long; "
            f"the limit is {MAX_FIELD_LENGTH}"
        )
    if "\x00" in value:
        raise ValidationError(f"Invalid message: field {key!r} holds a NUL character")
    problem = text_problem(value)
    if problem is not None:
        raise ValidationError(f"Invalid message: field {key!r} {problem}")
    return value


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValidationError(
            f"Invalid message: field {key!r} must be a non-empty list of agent names, got {value!r}"
        )
    names = []
    for item in value:
        name = _name({key: item}, key)
        if name is None:
            raise ValidationError(f"Invalid message: field {key!r} holds an empty name")
        names.append(name)
    return tuple(names)


def _timestamp(value: Any) -> float | None:
    """``reply_by`` as Unix seconds, from a number or an ISO-8601 string."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # fromisoformat takes "Z" only from Python 3.11
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
            if seconds >= 0:  # as for numbers: before 1970 is no deadline a message can keep
                return seconds
    raise ValidationError(
        f"Invalid message: field 'reply_by' must be Unix seconds or an ISO-8601 time "
        f"such as 2026-01-31T12:00:00Z, got {value!r}"
    )
