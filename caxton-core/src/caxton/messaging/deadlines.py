"""``reply_by`` deadlines: which replies are awaited, until when, and which came late.

When a message with ``reply_by`` is sent, its reply is awaited: a message from its
receiver back to its sender whose ``in_reply_to`` is the request's reply token, or,
without ``in_reply_to``, one in the same conversation. When the deadline passes first,
the initiator is sent a ``failure`` with reason ``timeout``, and a reply arriving after
that is late (the router dead-letters it instead of delivering it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from caxton.messaging.message import Message
from caxton.messaging.performatives import Performative, Priority

__all__ = ["ReplyDeadlines", "Watch", "iso_time"]

#: (initiator, reply token or conversation id, responder)
Key = tuple[str, str, str]


def iso_time(moment: float) -> str:
    """Unix seconds as ISO-8601 UTC with milliseconds, for messages people read."""
    return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Watch:
    """A sent message waiting for its reply until ``reply_by``."""

    initiator: str
    token: str
    responder: str
    conversation_id: str | None
    protocol: str | None
    reply_by: float
    priority: Priority
    handle: asyncio.TimerHandle


class ReplyDeadlines:
    """The watches of one router. ``on_timeout`` gets each timeout ``failure`` to route."""

    __slots__ = ("_by_conversation", "_timed_out", "_watches", "on_timeout", "remember")

    def __init__(self, on_timeout: Callable[[Message], None], *, remember: int = 10_000) -> None:
        self.on_timeout = on_timeout
        #: How many timed-out replies are remembered to recognise late ones.
        self.remember = remember
        self._watches: dict[Key, Watch] = {}
        self._by_conversation: dict[Key, Key] = {}
        self._timed_out: dict[Key, None] = {}

    def __len__(self) -> int:
        return len(self._watches)

    def __bool__(self) -> bool:
        """Whether any message could be a reply to watch for (the hot path's test)."""
        return bool(self._watches or self._timed_out)

    def watch(self, message: Message, delay: float, loop: asyncio.AbstractEventLoop) -> None:
        """Await the reply to ``message`` for ``delay`` seconds."""
        assert message.reply_by is not None
        key = (message.sender, message.reply_token, message.receiver)
        previous = self._watches.get(key)
        if previous is not None:
            previous.handle.cancel()
        self._watches[key] = Watch(
            message.sender,
            key[1],
            message.receiver,
            message.conversation_id,
            message.protocol,
            message.reply_by,
            message.priority,
            loop.call_later(max(delay, 0.0), self._fire, key),
        )
        if message.conversation_id is not None:
            self._by_conversation[(message.sender, message.conversation_id, message.receiver)] = key

    def match(self, message: Message, now: float) -> tuple[bool, Watch | None]:
        """Whether ``message`` is a late reply, and the watch it answers in time.

        A reply found after its ``reply_by`` whose timer has not fired yet times the
        watch out now. A timely reply's watch stays until :meth:`settle` (the router
        settles it once the reply passed protocol validation).
        """
        token = message.in_reply_to
        if token is not None:
            key = (message.receiver, token, message.sender)
        elif message.conversation_id is not None:
            by_conversation = (message.receiver, message.conversation_id, message.sender)
            key = self._by_conversation.get(by_conversation, by_conversation)
        else:
            return False, None
        watch = self._watches.get(key)
        if watch is None:
            return key in self._timed_out, None
        if now > watch.reply_by:
            self.settle(watch)
            self._expire(watch)
            return True, None
        return False, watch

    def settle(self, watch: Watch) -> None:
        """The reply arrived: stop waiting."""
        watch.handle.cancel()
        self._watches.pop((watch.initiator, watch.token, watch.responder), None)
        if watch.conversation_id is not None:
            self._by_conversation.pop(
                (watch.initiator, watch.conversation_id, watch.responder), None
            )

    def clear(self) -> None:
        for watch in self._watches.values():
            watch.handle.cancel()
        self._watches.clear()
        self._by_conversation.clear()

    def _fire(self, key: Key) -> None:
        watch = self._watches.get(key)
        if watch is not None:
            self.settle(watch)
            self._expire(watch)

    def _expire(self, watch: Watch) -> None:
        timed_out = self._timed_out
        timed_out[(watch.initiator, watch.token, watch.responder)] = None
        if watch.conversation_id is not None:
            timed_out[(watch.initiator, watch.conversation_id, watch.responder)] = None
        while len(timed_out) > self.remember:
            del timed_out[next(iter(timed_out))]
        self.on_timeout(
            Message(
                Performative.FAILURE,
                sender=watch.responder,
                receiver=watch.initiator,
                content={
                    "reason": "timeout",
                    "error": f"No reply from {watch.responder} by reply_by "
                    f"{iso_time(watch.reply_by)}",
                },
                protocol=watch.protocol,
                conversation_id=watch.conversation_id,
                in_reply_to=watch.token,
                priority=watch.priority,
            )
        )
