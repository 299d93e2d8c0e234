"""The router's messages for names on other nodes.

The cluster layer gives the router a :data:`Resolver`, which finds a
:class:`RemoteRoute` for a name not registered here. :class:`RemoteQueues` keeps one
ordered queue per such name, forwarded by one task each (never one per message), so
per-conversation order holds across nodes. A message that cannot be forwarded is
dead-lettered, except an at-least-once one, which is tried again re-resolved (it may
have moved, or failed over here) until the message TTL runs out.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from caxton.errors import CaxtonError

if TYPE_CHECKING:
    from caxton.messaging.message import Message
    from caxton.messaging.router import Router

__all__ = [
    "FORWARD_RETRY_INITIAL",
    "FORWARD_RETRY_MAX",
    "RemoteQueues",
    "RemoteRoute",
    "Resolver",
    "resolve",
]

#: At-least-once messages whose node could not be reached are tried again, re-resolved
#: (so they follow an agent that fails over), first after this many seconds ...
FORWARD_RETRY_INITIAL = 0.1
#: ... doubling up to this, for as long as the message TTL (a minute without one).
FORWARD_RETRY_MAX = 1.0


class RemoteRoute(Protocol):
    """How to reach an agent on another node (provided by the cluster layer)."""

    async def forward(self, message: Message) -> None:
        """Hand ``message`` to the node hosting its receiver."""


Resolver = Callable[[str], Awaitable[RemoteRoute | None]]


async def resolve(resolver: Resolver, name: str) -> RemoteRoute | None:
    """Ask ``resolver`` for ``name``; its unexpected errors become :class:`CaxtonError`."""
    try:
        return await resolver(name)
    except CaxtonError:
        raise
    except Exception as exc:
        raise CaxtonError(f"Could not resolve agent {name}: {exc}") from exc


class _Outgoing:
    """Messages for one remote name, forwarded in order by one task."""

    __slots__ = ("inflight", "name", "queue", "task")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: deque[tuple[Message, RemoteRoute | None]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.inflight = 0


class RemoteQueues:
    """The outgoing queues of one :class:`~caxton.messaging.router.Router`, by name."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._outgoing: dict[str, _Outgoing] = {}

    def queued(self, name: str) -> int:
        """Messages waiting to be forwarded to ``name`` (0 when none)."""
        outgoing = self._outgoing.get(name)
        return len(outgoing.queue) if outgoing is not None else 0

    def depths(self) -> dict[str, int]:
        """Messages queued or being forwarded, by remote name."""
        return {name: len(o.queue) + o.inflight for name, o in self._outgoing.items()}

    def pending(self) -> int:
        """Messages queued or being forwarded, in all."""
        return sum(len(o.queue) + o.inflight for o in self._outgoing.values())

    def put(self, message: Message, route: RemoteRoute | None) -> None:
        """Queue ``message`` for its receiver's node (``route``; None: resolve it)."""
        name = message.receiver
        outgoing = self._outgoing.get(name)
        if outgoing is None:
            outgoing = self._outgoing[name] = _Outgoing(name)
        outgoing.queue.append((message, route))
        if outgoing.task is None:
            outgoing.task = self.router._spawn(self._forward_loop(outgoing))

    async def _forward_loop(self, outgoing: _Outgoing) -> None:
        """Forward ``outgoing``'s messages in order.

        A message that cannot be forwarded is dead-lettered, except an at-least-once one
        whose forwarding failed (its node died, or cannot be reached): that one is tried
        again, resolved anew each time, until the message TTL runs out, and the messages
        behind it wait (order is kept). So it reaches its agent where it runs after a
        failover, this node included.
        """
        router = self.router
        route: RemoteRoute | None = None
        retry_until: float | None = None  # set while the head message is being retried
        delay = 0.0
        try:
            while outgoing.queue:
                message, given = outgoing.queue.popleft()
                box = router._boxes.get(outgoing.name)
                if box is not None:  # the agent runs here now (it failed over here)
                    router._to_box(box, message)
                    retry_until, delay = None, 0.0
                    continue
                outgoing.inflight = 1
                problem: str | None = None
                try:
                    if given is not None and retry_until is None:
                        route = given
                    elif route is None and router.resolver is not None:
                        route = await resolve(router.resolver, outgoing.name)
                    if route is None:
                        problem = f"undeliverable: Agent not found: {outgoing.name}"
                    else:
                        started = router.clock()
                        await route.forward(message)
                        router.forward_latency.pending.append(router.clock() - started)
                except Exception as exc:
                    problem = f"delivery error: forwarding to {outgoing.name} failed: {exc}"
                    route = None
                    if router._durable and retry_until is None:
                        ttl = router.message_ttl if router.message_ttl < math.inf else 60.0
                        retry_until = router.clock() + ttl
                finally:
                    outgoing.inflight = 0
                retry = retry_until is not None and router.clock() < retry_until
                if problem is not None and retry and not router._closed:
                    outgoing.queue.appendleft((message, None))
                    delay = min(max(2 * delay, FORWARD_RETRY_INITIAL), FORWARD_RETRY_MAX)
                    await asyncio.sleep(delay)
                    continue
                retry_until, delay = None, 0.0
                if problem is not None:
                    router._dead_letter(message, problem)
                    continue
                router._counts["forwarded"] += 1
                if router._durable:
                    router._ack(message.message_id)
        finally:
            outgoing.task = None
            if not outgoing.queue and self._outgoing.get(outgoing.name) is outgoing:
                del self._outgoing[outgoing.name]
