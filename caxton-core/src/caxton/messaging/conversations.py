"""Conversations: the messages that share a ``conversation_id``.

The router records each conversation's participants, protocol, state and timestamps,
checks protocol conversations against their :mod:`~caxton.messaging.protocols` state
machine, and forgets a conversation once it has been idle for its time to live.
With a node's state store the table is kept there too (write-behind, see
:meth:`ConversationTable.take_changes`), so conversations outlive a restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from caxton.messaging.message import Message
from caxton.messaging.performatives import Performative
from caxton.messaging.protocols import PROTOCOLS, START, InteractionProtocol

__all__ = ["TRAIL_MESSAGES", "TRAIL_RING", "Conversation", "ConversationTable"]

#: The node's last conversation messages kept for sequence diagrams (who sent what to
#: whom, when; about 8 MB at most, in memory only), and the most one trail shows.
TRAIL_RING = 65_536
TRAIL_MESSAGES = 200


@dataclass(slots=True)
class Conversation:
    """What the router knows about one conversation (times are Unix seconds).

    ``state`` is ``active`` for a conversation without a known protocol; for
    ``fipa-request``/``fipa-query`` it is the participant's protocol state
    (``requested``, ``agreed``, ``done``...); for ``fipa-contract-net`` it is ``active``
    until every participant's exchange is finished, then ``completed``. ``roles`` has
    each participant's protocol state.
    """

    conversation_id: str
    protocol: str | None
    initiator: str
    started_at: float
    updated_at: float
    ttl: float
    state: str = "active"
    message_count: int = 0
    participants: set[str] = field(default_factory=set)
    roles: dict[str, str] = field(default_factory=dict)

    @property
    def expires_at(self) -> float:
        return self.updated_at + self.ttl

    @property
    def finished(self) -> bool:
        spec = PROTOCOLS.get(self.protocol or "")
        return (
            spec is not None
            and bool(self.roles)
            and all(state in spec.terminal for state in self.roles.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "protocol": self.protocol,
            "initiator": self.initiator,
            "participants": sorted(self.participants),
            "state": self.state,
            "roles": dict(self.roles),
            "message_count": self.message_count,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "ttl": self.ttl,
            "active": not self.finished,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Conversation:
        """The inverse of :meth:`to_dict` (what the state store gives back)."""
        return cls(
            conversation_id=data["conversation_id"],
            protocol=data["protocol"],
            initiator=data["initiator"],
            started_at=data["started_at"],
            updated_at=data["updated_at"],
            ttl=data["ttl"],
            state=data["state"],
            message_count=data["message_count"],
            participants=set(data["participants"]),
            roles=dict(data["roles"]),
        )


class ConversationTable:
    """Conversations by id, bounded by ``limit`` (the oldest is forgotten first)."""

    __slots__ = ("_changed", "_forgotten", "_items", "_recent", "limit", "tracking", "ttl")

    def __init__(self, *, ttl: float, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._items: dict[str, Conversation] = {}
        #: Whether to note what changes for take_changes() (a store keeps the table).
        self.tracking = False
        #: Ids recorded or forgotten since the last take_changes().
        self._changed: set[str] = set()
        self._forgotten: set[str] = set()
        #: (conversation id, at, sender, receiver, performative, message id) of the
        #: last TRAIL_RING messages recorded: one append per message, searched only when
        #: someone asks for a trail (the console's sequence diagrams); not persisted.
        self._recent: deque[tuple[str, float, str, str, Performative, str]] = deque(
            maxlen=TRAIL_RING
        )

    def __len__(self) -> int:
        return len(self._items)

    def get(self, conversation_id: str) -> Conversation | None:
        return self._items.get(conversation_id)

    def values(self) -> list[Conversation]:
        return list(self._items.values())

    def observe(self, message: Message, now: float) -> str | None:
        """Record ``message``; return why it is out of protocol (recording nothing), or None."""
        conversation_id = message.conversation_id
        assert conversation_id is not None
        conversation = self._items.get(conversation_id)
        if conversation is None:
            spec = PROTOCOLS.get(message.protocol) if message.protocol else None
            target: str | None = None
            if spec is not None:
                target = spec.next_state(START, message.performative, True)
                if target is None:
                    return (
                        f"{message.performative.value} cannot start a {spec.name} "
                        f"conversation; it starts with "
                        f"{' or '.join(spec.allowed(START, True))}"
                    )
            conversation = Conversation(
                conversation_id, message.protocol, message.sender, now, now, self.ttl
            )
            if spec is not None and target is not None:
                conversation.roles[message.receiver] = target
                conversation.state = _summary(spec, conversation)
            if len(self._items) >= self.limit:
                self._forget(next(iter(self._items)))
            self._items[conversation_id] = conversation

        else:
            spec = PROTOCOLS.get(conversation.protocol) if conversation.protocol else None
            if spec is not None:
                problem = _advance(spec, conversation, message)
                if problem is not None:
                    return problem
            conversation.updated_at = now
        conversation.message_count += 1
        self._recent.append(
            (conversation_id, now, message.sender, message.receiver, message.performative,
             message.message_id)
        )  # fmt: skip
        participants = conversation.participants
        participants.add(message.sender)
        participants.add(message.receiver)
        if self.tracking:
            self._changed.add(conversation_id)
        return None

    def expire(self, now: float) -> list[Conversation]:
        """Forget conversations idle for longer than their ttl; return them."""
        gone = [c for c in self._items.values() if c.updated_at + c.ttl <= now]
        for conversation in gone:
            self._forget(conversation.conversation_id)
        return gone

    def trail(self, conversation_id: str) -> list[dict[str, Any]]:
        """The messages of a conversation among the last :data:`TRAIL_RING` recorded here,
        oldest first, at most :data:`TRAIL_MESSAGES` (the latest): ``at`` (Unix time),
        ``sender``, ``receiver``, ``performative``, ``message_id``."""
        found = [entry for entry in self._recent if entry[0] == conversation_id]
        return [
            {
                "at": at,
                "sender": sender,
                "receiver": receiver,
                "performative": performative.value,
                "message_id": message_id,
            }
            for _, at, sender, receiver, performative, message_id in found[-TRAIL_MESSAGES:]
        ]

    def messages_since(self, since: float) -> list[dict[str, Any]]:
        """The messages recorded here at or after ``since`` (Unix time), oldest first, as
        :meth:`trail` gives them with their ``conversation_id``."""
        found = []
        for entry in reversed(self._recent):
            if entry[1] < since:
                break
            found.append(entry)
        return [
            {
                "conversation_id": conversation_id,
                "at": at,
                "sender": sender,
                "receiver": receiver,
                "performative": performative.value,
                "message_id": message_id,
            }
            for conversation_id, at, sender, receiver, performative, message_id in reversed(found)
        ]

    def clear(self) -> None:
        self._recent.clear()
        self._items.clear()
        self._changed.clear()
        self._forgotten.clear()

    def _forget(self, conversation_id: str) -> None:
        del self._items[conversation_id]
        if self.tracking:
            self._changed.discard(conversation_id)
            self._forgotten.add(conversation_id)

    @property
    def has_changes(self) -> bool:
        return bool(self._changed or self._forgotten)

    def take_changes(self) -> tuple[list[Conversation], list[str]]:
        """The conversations recorded and the ids forgotten since the last call."""
        changed = [self._items[cid] for cid in self._changed if cid in self._items]
        forgotten = list(self._forgotten)
        self._changed.clear()
        self._forgotten.clear()
        return changed, forgotten

    def restore(self, conversations: Iterable[Conversation], now: float) -> int:
        """Load conversations kept by the state store, skipping those idle past their
        ttl (forgotten at once) and any beyond ``limit``; return how many were loaded."""
        loaded = 0
        for conversation in conversations:
            if conversation.expires_at <= now or len(self._items) >= self.limit:
                if self.tracking:
                    self._forgotten.add(conversation.conversation_id)
                continue
            self._items[conversation.conversation_id] = conversation
            loaded += 1
        return loaded

    def adopt(self, conversations: Iterable[Conversation], now: float) -> int:
        """Take conversations another node handed over with a moved agent: a
        conversation not known here, or known with fewer messages, is replaced by the
        handed-over one. Returns how many were taken."""
        taken = 0
        for conversation in conversations:
            known = self._items.get(conversation.conversation_id)
            if known is not None and known.message_count >= conversation.message_count:
                continue
            if conversation.expires_at <= now:
                continue
            if known is None and len(self._items) >= self.limit:
                self._forget(next(iter(self._items)))
            self._items[conversation.conversation_id] = conversation
            if self.tracking:
                self._changed.add(conversation.conversation_id)
            taken += 1
        return taken


def _advance(spec: InteractionProtocol, conversation: Conversation, message: Message) -> str | None:
    if message.protocol is not None and message.protocol != spec.name:
        return (
            f"conversation {conversation.conversation_id} follows {spec.name}, "
            f"not {message.protocol}"
        )
    initiator = conversation.initiator
    if message.sender == initiator:
        participant, from_initiator = message.receiver, True
    elif message.receiver == initiator:
        participant, from_initiator = message.sender, False
    else:
        return (
            f"{message.sender} -> {message.receiver} is not between the initiator "
            f"{initiator} and a participant of conversation {conversation.conversation_id}"
        )
    state = conversation.roles.get(participant)
    if state is None:
        if not spec.multi_party:
            return f"{spec.name} conversation {conversation.conversation_id} has one participant"
        state = START
    target = spec.next_state(state, message.performative, from_initiator)
    if target is None:
        side = "initiator" if from_initiator else "participant"
        allowed = spec.allowed(state, from_initiator)
        expected = f"the {side} may send {', '.join(allowed)}" if allowed else "it is over"
        return (
            f"{message.performative.value} from {message.sender} is out of protocol: "
            f"{spec.name} exchange with {participant} is {state}; {expected}"
        )
    conversation.roles[participant] = target
    conversation.state = _summary(spec, conversation)
    return None


def _summary(spec: InteractionProtocol, conversation: Conversation) -> str:
    if not spec.multi_party:
        return next(iter(conversation.roles.values()))
    if all(state in spec.terminal for state in conversation.roles.values()):
        return "completed"
    return "active"
