"""The router's messages for names on other nodes.

The cluster layer gives the router a :data:`Resolver`, which finds a
:class:`RemoteRoute` for a name not registered here. :class:`RemoteQueues` keeps one
ordered queue per such name, forwarded by one task each (never one per message), so
per-conversation order holds across nodes. A route may hand back an
:data:`Acknowledgement` (the receiving node answers once it holds the message): the
queue sends on without waiting for it, up to :data:`UNACKED_LIMIT` unanswered, and the
at-least-once outbox row is marked done only when it comes. A message that cannot be
forwarded is dead-lettered, except an at-least-once one, which is sent again
re-resolved (it may have moved, or failed over here) until the message TTL runs out,
then dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import functools
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
    "UNACKED_LIMIT",
    "Acknowledgement",
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


#: Messages forwarded to one name and not yet acknowledged by the receiving node; the
#: name's queue waits beyond (back-pressure on a slow or silent node).
UNACKED_LIMIT = 4096

#: What the receiving node makes of a forwarded message (see :class:`RemoteRoute`).
Acknowledgement = asyncio.Future[str | None]


class RemoteRoute(Protocol):
    """How to reach an agent on another node (provided by the cluster layer)."""

    async def forward(self, message: Message) -> Acknowledgement | None:
        """Hand ``message`` to the node hosting its receiver.

        Returns None once the transport took it (nothing more will be known of it), or
        an :data:`Acknowledgement` the receiving node settles: ``None`` once it holds
        the message (enqueued there; committed to its store when it runs at-least-once),
        a reason when it cannot take it (the message is dead-lettered with it). An
        exception, raised here or set on the acknowledgement (connection lost, no answer
        in time, the receiver is not on that node), means: resolve again and retry.
        """


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

    __slots__ = (
        "backoff",
        "inflight",
        "name",
        "not_before",
        "queue",
        "retries",
        "room",
        "route",
        "task",
        "unacked",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        #: (message, route found when it was sent or None, forward-until deadline).
        self.queue: deque[tuple[Message, RemoteRoute | None, float]] = deque()
        #: Messages to send again (not acknowledged), before the queue, in order.
        self.retries: deque[tuple[Message, RemoteRoute | None, float]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.route: RemoteRoute | None = None
        self.inflight = 0
        self.unacked = 0
        self.room: asyncio.Future[None] | None = None
        self.backoff = 0.0
        self.not_before = 0.0

    def __len__(self) -> int:
        return len(self.queue) + len(self.retries)


class RemoteQueues:
    """The outgoing queues of one :class:`~caxton.messaging.router.Router`, by name."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._outgoing: dict[str, _Outgoing] = {}

    def queued(self, name: str) -> int:
        """Messages waiting to be forwarded to ``name`` (0 when none)."""
        outgoing = self._outgoing.get(name)
        return len(outgoing) if outgoing is not None else 0

    def depths(self) -> dict[str, int]:
        """Messages queued, being forwarded or not yet acknowledged, by remote name."""
        return {name: len(o) + o.inflight + o.unacked for name, o in self._outgoing.items()}

    def pending(self) -> int:
        """Messages queued, being forwarded or not yet acknowledged, in all."""
        return sum(len(o) + o.inflight + o.unacked for o in self._outgoing.values())

    def put(self, message: Message, route: RemoteRoute | None, *, resend: bool = False) -> None:
        """Queue ``message`` for its receiver's node (``route``; None: resolve it).

        ``resend``: it was sent before (replayed after a restart), so an agent found
        nowhere for now is looked for again until the TTL, as for any resent message.
        """
        router = self.router
        ttl = router.message_ttl if router.message_ttl < math.inf else 60.0
        name = message.receiver
        outgoing = self._outgoing.get(name)
        if outgoing is None:
            outgoing = self._outgoing[name] = _Outgoing(name)
        entry = (message, route, router.clock() + ttl)
        (outgoing.retries if resend else outgoing.queue).append(entry)
        if outgoing.task is None:
            outgoing.task = router._spawn(self._forward_loop(outgoing))

    async def _forward_loop(self, outgoing: _Outgoing) -> None:
        """Forward ``outgoing``'s messages in order, up to :data:`UNACKED_LIMIT` of them
        unacknowledged at a time.

        A message that cannot be forwarded is dead-lettered, except an at-least-once one
        whose forwarding failed (its node died, cannot be reached, did not acknowledge
        it, or no longer hosts its agent): that one is sent again, resolved anew each
        time (its agent not found anywhere meanwhile included: its node may be
        restarting), until the message TTL runs out (then dead-lettered with the reason),
        and the messages behind it wait. So it reaches its agent where it runs after a
        failover, this node included. Order holds while nothing fails; a message sent
        again may arrive after one sent later.
        """
        router = self.router
        loop = router._get_loop()
        try:
            while outgoing.retries or outgoing.queue:
                wait = outgoing.not_before - loop.time() if outgoing.retries else 0.0
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if outgoing.unacked >= UNACKED_LIMIT:
                    outgoing.room = loop.create_future()
                    await outgoing.room
                    continue
                if outgoing.unacked and not outgoing.retries and _changes_route(outgoing):
                    # The name moved (a live move, a failover) while messages sent on the
                    # old route are unanswered: let them settle first, so one the old
                    # node turns away is sent again before the later ones, not after.
                    outgoing.room = loop.create_future()
                    await outgoing.room
                    continue
                again = bool(outgoing.retries)
                message, given, deadline = (outgoing.retries or outgoing.queue).popleft()
                box = router._boxes.get(outgoing.name)
                if box is not None:  # the agent runs here now (it failed over here)
                    router._to_box(box, message)
                    continue
                outgoing.inflight = 1
                problem: str | None = None
                ack: Acknowledgement | None = None
                retry = False
                try:
                    route = given if given is not None else outgoing.route
                    if route is None and router.resolver is not None:
                        route = await resolve(router.resolver, outgoing.name)
                    if route is None:
                        problem = f"undeliverable: Agent not found: {outgoing.name}"
                        # sent before: its node may be restarting, or failing it over
                        retry = again and router._durable
                    else:
                        outgoing.route = route
                        started = router.clock()
                        ack = await route.forward(message)
                        router.forward_latency.pending.append(router.clock() - started)
                except Exception as exc:
                    problem = f"delivery error: forwarding to {outgoing.name} failed: {exc}"
                    outgoing.route = None
                    retry = router._durable
                finally:
                    outgoing.inflight = 0
                if ack is not None:
                    outgoing.unacked += 1
                    ack.add_done_callback(
                        functools.partial(self._acknowledged, outgoing, message, deadline)
                    )
                elif problem is None:
                    self._forwarded(outgoing, message)
                elif retry:
                    self._again(outgoing, message, deadline, problem)
                else:
                    router._dead_letter(message, problem)
        finally:
            outgoing.task = None
            if not (len(outgoing) or outgoing.unacked) and (
                self._outgoing.get(outgoing.name) is outgoing
            ):
                del self._outgoing[outgoing.name]

    def _forwarded(self, outgoing: _Outgoing, message: Message) -> None:
        outgoing.backoff = 0.0
        router = self.router
        router._counts["forwarded"] += 1
        if router._durable:
            router._ack(message.message_id)

    def _again(self, outgoing: _Outgoing, message: Message, deadline: float, problem: str) -> None:
        """Send ``message`` again after a backoff, or dead-letter it past ``deadline``."""
        router = self.router
        if router._closed:
            if not router._durable:
                router._dead_letter(message, problem)
            return  # at-least-once: still in the outbox, replayed by the next start
        now = router.clock()
        if now >= deadline:
            ttl = router.message_ttl if router.message_ttl < math.inf else 60.0
            router._dead_letter(
                message, f"{problem} (no node took it within the message TTL of {ttl:g}s)"
            )
            return
        # the name's queue may have been dropped (emptied) meanwhile: use the current one
        current = self._outgoing.setdefault(outgoing.name, outgoing)
        now = router._get_loop().time()
        if now >= current.not_before:  # one backoff step per wave of failures
            current.backoff = min(
                max(2 * current.backoff, FORWARD_RETRY_INITIAL), FORWARD_RETRY_MAX
            )
            current.not_before = now + current.backoff
        current.retries.append((message, None, deadline))
        if current.task is None:
            current.task = router._spawn(self._forward_loop(current))

    def _acknowledged(
        self, outgoing: _Outgoing, message: Message, deadline: float, ack: Acknowledgement
    ) -> None:
        """The receiving node settled ``message``: done, dead-letter, or send again."""
        outgoing.unacked -= 1
        room = outgoing.room
        if room is not None and not room.done():
            room.set_result(None)
        router = self.router
        error = ack.exception() if not ack.cancelled() else CaxtonError("cancelled")
        if error is None:
            reason = ack.result()
            if reason is None:
                self._forwarded(outgoing, message)
            else:
                router._dead_letter(message, reason)
        else:
            outgoing.route = None
            self._again(
                outgoing,
                message,
                deadline,
                f"delivery error: forwarding to {outgoing.name} failed: {error}",
            )
        if not (len(outgoing) or outgoing.unacked or outgoing.task) and (
            self._outgoing.get(outgoing.name) is outgoing
        ):
            del self._outgoing[outgoing.name]


def _changes_route(outgoing: _Outgoing) -> bool:
    """Does the next queued message go another way than the messages before it?"""
    given = outgoing.queue[0][1] if outgoing.queue else None
    last = outgoing.route
    if given is None or last is None or given is last:
        return False
    return getattr(given, "node_id", given) != getattr(last, "node_id", last)
