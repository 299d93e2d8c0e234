"""The in-process router of one node: delivery by agent name.

Each registered name (an agent, or an external client waiting for replies) has a
mailbox: four FIFO queues, one per :class:`~caxton.messaging.Priority`, bounded together
by ``queue_size``. Delivery calls the name's ``deliver`` callback with the message.

How a message reaches ``deliver`` (the hot path is a synchronous callback that runs a
wasm call of ~15 µs, so the router avoids a task or a loop hop per message):

* **Direct**: when the mailbox is empty, nothing is being delivered to it and the router
  is not inside another delivery, ``send`` calls ``deliver`` right away.
* **Pump**: otherwise the message is queued and the mailbox is scheduled on one
  ready-list per priority. A single ``call_soon`` callback (the pump) serves ready
  mailboxes round-robin, highest priority first: a mailbox's turn ends after
  ``batch_size`` messages or ``turn_time`` seconds, and it goes to the back of its
  list, so an agent with a flood queued takes one turn per round like any other. The
  pump reschedules itself after ``pump_budget`` messages or ``pump_time_slice`` seconds
  so the event loop keeps breathing. (A heavy agent's ``deliver`` runs on a worker
  thread and returns a future: its mailbox leaves the rounds until it is done;
  caxton.agents.offload.)
* **Async**: a coroutine ``deliver`` gets one drain task per mailbox with pending
  messages (never one per message).

A ``deliver`` that sends (an agent's host call) only queues: deliveries never nest, so
a chain of agents sending to each other cannot recurse, and per-conversation FIFO holds.
Within a mailbox a higher priority overtakes, except that a message never overtakes an
earlier queued message of its own conversation (it queues behind it at that priority).

Delivery guarantees: *at-most-once* by default (queues live in memory). With
``guarantee="at-least-once"`` and a :class:`DurableOutbox`, ``send`` returns once the
message is persisted, deliveries are acknowledged after ``deliver`` returns, a message
id already seen is dropped, and :meth:`Router.start` replays what was never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from caxton.errors import (
    AgentNotFound,
    CaxtonError,
    ConfigError,
    Conflict,
    Forbidden,
    MessageTooLarge,
    ProtocolViolation,
    QueueFull,
    ValidationError,
)
from caxton.messaging.clients import Clients, ContractNetResult, Selector
from caxton.messaging.conversations import Conversation, ConversationTable
from caxton.messaging.deadlines import ReplyDeadlines, iso_time
from caxton.messaging.mailbox import UNSCHEDULED, Deliver, Mailbox, is_async_callable
from caxton.messaging.message import MAX_FIELD_LENGTH, Message, encode_content, too_large
from caxton.messaging.performatives import Performative, Priority
from caxton.messaging.remote import RemoteQueues, RemoteRoute, Resolver, resolve
from caxton.samples import Samples

if TYPE_CHECKING:
    from caxton.tracing import Tracing

__all__ = [
    "GUARANTEES",
    "DeadLetter",
    "Deliver",
    "DurableOutbox",
    "Observer",
    "RemoteRoute",
    "Resolver",
    "Router",
]

log = logging.getLogger("caxton.messaging")

Observer = Callable[[Message, str], None]

GUARANTEES = ("at-most-once", "at-least-once")

_PRIORITY_NAMES = tuple(p.name.lower() for p in Priority)
_HIGHEST_FIRST = (0, 1, 2, 3)
_LOWEST_FIRST = (3, 2, 1, 0)


class DurableOutbox(Protocol):
    """Where at-least-once messages are kept until delivered (the node's SQLite store)."""

    async def persist(self, messages: Sequence[Message]) -> None:
        """Make ``messages`` durable; return only once they would survive a crash."""

    async def acknowledge(self, message_ids: Sequence[str]) -> None:
        """Mark messages delivered (or dead-lettered): they are not replayed again."""

    async def pending(self) -> list[Message]:
        """Persisted, unacknowledged messages, oldest first (replayed on start)."""
        ...

    def seen(self, message_id: str) -> bool:
        """Whether ``message_id`` was persisted before (a duplicate); served from memory."""
        ...


class ConversationStore(Protocol):
    """Where conversations are kept across restarts (the node's SQLite store)."""

    def save_conversations(self, conversations: Sequence[Mapping[str, Any]]) -> None:
        """Record conversations (:meth:`Conversation.to_dict`), write-behind."""

    def forget_conversations(self, conversation_ids: Sequence[str]) -> None:
        """Drop conversations the router forgot (idle past their ttl), write-behind."""

    async def load_conversations(self) -> list[dict[str, Any]]:
        """Every kept conversation, as :meth:`save_conversations` was given them."""
        ...


#: How long conversation changes wait to be written together (write-behind).
CONVERSATION_FLUSH_DELAY = 0.05


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the router gave up on, with why and when (Unix seconds)."""

    message: Message
    reason: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "at": self.at, "message": self.message.to_dict()}


Target = Mailbox | RemoteRoute | None


class Router:
    """Routes FIPA messages between the names registered on one node.

    ``queue_size`` bounds each mailbox; ``message_ttl`` (seconds, 0 for none) is how
    long a message may wait in a queue; ``max_message_bytes`` caps a message's JSON size;
    ``dead_letter_limit`` bounds the in-memory dead-letter queue (``dead_letter_sink``
    also receives each one, e.g. to persist it); ``observer`` sees each message as
    ``sent``, ``delivered``, ``dead-lettered`` or ``expired``. ``direct_delivery=False``
    always queues (the caller of ``send`` then never runs agent code);
    ``priority_routing=False`` ignores priorities (one FIFO per agent). A mailbox's
    turn in the pump is ``batch_size`` messages or ``turn_time`` seconds; the pump
    yields to the event loop after ``pump_budget`` messages or ``pump_time_slice``
    seconds.
    ``clock`` is the
    monotonic clock of TTLs and ``wall_clock`` the Unix clock of ``reply_by`` and
    conversations (both replaceable in tests).
    """

    def __init__(
        self,
        *,
        node_id: str,
        queue_size: int = 10_000,
        message_ttl: float | None = 60.0,
        max_message_bytes: int = 1 << 20,
        dead_letter_limit: int = 10_000,
        guarantee: str = "at-most-once",
        outbox: DurableOutbox | None = None,
        observer: Observer | None = None,
        conversation_ttl: float = 3600.0,
        max_conversations: int = 100_000,
        conversation_store: ConversationStore | None = None,
        cleanup_interval: float = 10.0,
        batch_size: int = 64,
        pump_budget: int = 1024,
        pump_time_slice: float = 0.01,
        turn_time: float = 0.001,
        direct_delivery: bool = True,
        priority_routing: bool = True,
        dead_letter_sink: Callable[[DeadLetter], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if guarantee not in GUARANTEES:
            raise ConfigError(
                f"messaging.delivery_guarantee: expected one of {', '.join(GUARANTEES)}, "
                f"got {guarantee!r}"
            )
        if guarantee == "at-least-once" and outbox is None:
            raise ConfigError(
                "messaging.delivery_guarantee = 'at-least-once' needs a durable outbox "
                "(the node's state store); none was given"
            )
        for key, value in (
            ("queue_size", queue_size),
            ("batch_size", batch_size),
            ("pump_budget", pump_budget),
            ("max_message_size", max_message_bytes),
        ):
            if value < 1:
                raise ConfigError(f"messaging.{key}: must be at least 1, got {value!r}")
        self.node_id = node_id
        self.queue_size = queue_size
        self.message_ttl = message_ttl if message_ttl and message_ttl > 0 else math.inf
        self.max_message_bytes = max_message_bytes
        self.guarantee = guarantee
        self.outbox = outbox
        self.observer = observer
        self.dead_letter_sink = dead_letter_sink
        self.cleanup_interval = cleanup_interval
        self.batch_size = batch_size
        self.pump_budget = pump_budget
        self.pump_time_slice = pump_time_slice
        self.turn_time = turn_time
        self.direct_delivery = direct_delivery
        self.priority_routing = priority_routing
        #: Set by the cluster layer: finds the route to a name not registered here.
        self.resolver: Resolver | None = None
        #: Set by the agent policy (caxton.auth.agent_policy): why a message may not
        #: reach an agent here, or None. A refused sender gets ``refuse``.
        self.gate: Callable[[Message], str | None] | None = None
        self.clock = clock
        self.wall_clock = wall_clock

        self._durable = guarantee == "at-least-once"
        self._boxes: dict[str, Mailbox] = {}
        self._ready: tuple[deque[Mailbox], ...] = (deque(), deque(), deque(), deque())
        self._pump_scheduled = False
        self._turns = 0  # pump turns, for the anti-starvation turn
        self._delivering = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conversations = ConversationTable(ttl=conversation_ttl, limit=max_conversations)
        self.conversation_store = conversation_store
        self._conversations.tracking = conversation_store is not None
        self._conversation_flush: asyncio.TimerHandle | None = None
        self._dead: deque[DeadLetter] = deque(maxlen=dead_letter_limit)
        self._deadlines = ReplyDeadlines(self._reply_timed_out)
        self._notices: dict[str, None] = {}  # ids of recent not-understood notices
        #: Sampled send-to-deliver waits in seconds (see routing_latency()); the hot
        #: path appends to ``latency.pending`` (``_waits``) and nothing more.
        self.latency = Samples()
        self._waits = self.latency.pending
        #: Seconds each forward to another node took (the remote routing latency).
        self.forward_latency = Samples()
        #: Set by :meth:`trace_with` when the node traces.
        self.tracing: Tracing | None = None
        self._direct_count = 0
        self._remote = RemoteQueues(self)
        self._handed_over: set[str] = set()
        #: Names whose next registration starts held (an agent moved here, see
        #: :meth:`start_held`).
        self._start_held: set[str] = set()
        #: Ids of at-least-once messages staged and not yet persisted (duplicates too).
        self._taking: set[str] = set()
        self._staged: list[tuple[Message, Target, asyncio.Future[None] | None]] = []
        self._persist_task: asyncio.Task[None] | None = None
        self._persisting = 0  # messages in the persist call under way
        self._acks: list[str] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._parked: dict[str, list[tuple[float, Message]]] = {}
        self._clients = Clients(self, self._dead_letter)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self._replayed = False
        #: Set by the node: receiver name -> the error that refuses a message to it now
        #: (an open circuit breaker, an isolated node; caxton.emergency), or None.
        self.admission: Callable[[str], CaxtonError | None] | None = None
        self._counts = dict.fromkeys(
            ("sent", "delivered", "forwarded", "dead_lettered", "expired", "duplicates",
             "delivery_errors", "not_understood", "refused", "timeouts", "late_replies"),
            0,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<Router {self.node_id} agents={len(self._boxes)} guarantee={self.guarantee}>"

    # -- registration ---------------------------------------------------------------

    def register(self, name: str, deliver: Deliver, *, replace: bool = False) -> None:
        """Make ``name`` addressable; ``deliver`` is called with each message for it.

        ``replace=True`` swaps the callback of a registered name, keeping its queue
        (a hot swap); otherwise a second registration is a :class:`Conflict`.
        """
        _check_name(name)
        box = self._boxes.get(name)
        if box is not None:
            if not replace:
                raise Conflict(f"Agent already registered: {name}")
            box.deliver = deliver
            box.is_async = is_async_callable(deliver)
            box.direct = self.direct_delivery and not box.is_async
            return
        box = Mailbox(name, deliver, self.direct_delivery, fifo=not self.priority_routing)
        box.held = name in self._start_held
        self._start_held.discard(name)
        self._boxes[name] = box
        parked = self._parked.pop(name, None)
        if parked:
            now = self.clock()
            for _, message in parked:
                box.push(message, now)
            self._wake(box)

    def unregister(self, name: str) -> None:
        """Forget ``name``; its queued messages are dead-lettered (``receiver removed``),
        or forwarded to where it runs now when it was :meth:`handed over <hand_over>`."""
        box = self._boxes.pop(name, None)
        if box is None:
            raise AgentNotFound(name)
        box.closed = True
        self._clients.forget(name)
        moving = name in self._handed_over and self.resolver is not None
        self._handed_over.discard(name)
        box.forward = moving
        for message in box.clear():
            if moving:
                self._remote.put(message, None)
            else:
                self._dead_letter(message, f"receiver removed: {name} was unregistered")

    def hand_over(self, name: str) -> None:
        """``name`` runs on another node now (this copy lost its claim): when it is
        unregistered, its queued messages are forwarded there (resolved anew) instead
        of being dead-lettered."""
        self._box(name)
        self._handed_over.add(name)

    # -- an agent moving to another node (caxton.cluster.moves) -----------------------

    def start_held(self, name: str) -> None:
        """The next registration of ``name`` starts held: messages queue, none is
        delivered until :meth:`release` (an agent moved here waits for the messages its
        old node still had, which go first)."""
        self._start_held.add(name)

    async def settle(self) -> None:
        """Wait until the at-least-once messages being persisted now are queued (a move
        takes its agent's queue only once none is on its way into it)."""
        while self._persist_task is not None:
            await asyncio.shield(self._persist_task)

    def take_queue(self, name: str) -> list[Message]:
        """Take every message out of ``name``'s queue, in delivery order (a move hands
        them to the agent's new node). At-least-once they stay in the outbox until
        :meth:`handed_off`, or :meth:`requeue` / :meth:`forward_again` takes them back."""
        return self._box(name).clear()

    def requeue(self, name: str, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for ``name`` ahead of what it has queued already, in order
        (the messages a move handed over go before those that arrived meanwhile)."""
        box = self._box(name)
        later = box.clear()
        now = self.clock()
        for message in (*messages, *later):
            box.push(message, now)
        self._wake(box)

    async def adopt(self, messages: Sequence[Message]) -> list[Message]:
        """Messages another node handed over with a moved agent: at-least-once, those
        not taken here before are committed to this node's outbox (the others are
        duplicates, dropped); returns the ones to queue."""
        if not self._durable or self.outbox is None:
            return list(messages)
        fresh = [m for m in messages if not self.has_taken(m.message_id)]
        if fresh:
            await self.outbox.persist(fresh)
        self._counts["duplicates"] += len(messages) - len(fresh)
        return fresh

    def conversations_of(self, name: str) -> list[dict[str, Any]]:
        """The unfinished conversations ``name`` takes part in (a move hands them over,
        so the protocol of each goes on where the agent runs next)."""
        return [
            c.to_dict()
            for c in self._conversations.values()
            if name in c.participants and not c.finished
        ]

    def adopt_conversations(self, conversations: Sequence[Mapping[str, Any]]) -> int:
        """Take the conversations of :meth:`conversations_of` from another node."""
        taken = self._conversations.adopt(
            (Conversation.from_dict(data) for data in conversations), self.wall_clock()
        )
        if taken and self._conversation_flush is None and self.conversation_store is not None:
            self._schedule_conversation_flush()
        return taken

    def handed_off(self, messages: Sequence[Message]) -> None:
        """Another node took ``messages`` (committed there): they leave this outbox."""
        if self._durable:
            for message in messages:
                self._ack(message.message_id)

    def forward_again(self, messages: Sequence[Message]) -> None:
        """Forward ``messages`` to wherever their receivers run now, resolved anew
        (at-least-once: until taken or past the TTL)."""
        for message in messages:
            self._remote.put(message, None, resend=True)

    def queued(self, name: str) -> list[Message]:
        """The messages waiting in ``name``'s queue, in delivery order (a copy)."""
        box = self._boxes.get(name)
        if box is None:
            return []
        return [message for queue in box.queues if queue for _, message in queue]

    def is_registered(self, name: str) -> bool:
        return name in self._boxes

    def client_ended(self, name: str) -> bool:
        """Whether ``name`` was the temporary endpoint of a client here that is no longer
        waiting (within the message TTL): a reply for it now cannot be delivered."""
        return self._clients.ended(name)

    def names(self) -> list[str]:
        """The registered names."""
        return list(self._boxes)

    def hold(self, name: str) -> None:
        """Stop delivering to ``name``; messages keep queueing (bounded) until release."""
        self._box(name).held = True

    def release(self, name: str) -> None:
        """Resume delivery to a held name, starting with what queued meanwhile."""
        box = self._box(name)
        box.held = False
        self._wake(box)

    def _box(self, name: str) -> Mailbox:
        box = self._boxes.get(name)
        if box is None:
            raise AgentNotFound(name)
        return box

    # -- sending --------------------------------------------------------------------

    async def send(self, message: Message, *, local_only: bool = False) -> None:
        """Validate and route ``message`` (copies to each of ``receivers``).

        Returns once it is queued (at-least-once: persisted), or, when the receiver is
        idle and its ``deliver`` synchronous, once delivered: that direct call is the
        cheapest path (``direct_delivery=False`` always queues instead). It never waits
        for an asynchronous delivery nor for queued ones.

        Raises :class:`ValidationError` (bad message, :class:`MessageTooLarge`),
        :class:`AgentNotFound`, :class:`QueueFull`, and
        :class:`ProtocolViolation` when an out-of-protocol message comes from a sender
        that is not registered here (a registered one gets ``not-understood`` instead).

        ``local_only=True`` never forwards: a receiver not registered here is
        :class:`AgentNotFound` (for messages that arrived from another node, so a stale
        route cannot bounce them between nodes).
        """
        routes: dict[str, RemoteRoute] | None = {} if local_only else None
        resolver = self.resolver
        if resolver is not None and not local_only:
            for name in message.receivers or (message.receiver,):
                if name and name not in self._boxes:
                    route = await resolve(resolver, name)
                    if route is None:
                        raise AgentNotFound(name)
                    if routes is None:
                        routes = {}
                    routes[name] = route
        waiter = self._submit(message, routes, wait=self._durable)
        if waiter is not None:
            await waiter

    def send_nowait(self, message: Message, *, local_only: bool = False) -> None:
        """:meth:`send` without waiting: for host functions called inside a wasm call.

        A receiver not registered here is forwarded through the resolver when one is
        set (an unknown name is then dead-lettered later), else :class:`AgentNotFound`.
        At-least-once messages are persisted in the background before delivery.
        """
        self._submit(message, {} if local_only else None, wait=False)

    def accept_forwarded(self, message: Message) -> asyncio.Future[None] | None:
        """Take a message another node forwarded here, for a name registered here.

        As :meth:`send_nowait` with ``local_only``, but an at-least-once router returns
        a future done once the message is committed to the outbox (a duplicate's at
        once): the receiving side of an acknowledged node-to-node delivery. None when
        there is nothing to wait for (at-most-once: the message is queued).
        """
        return self._submit(message, {}, wait=self._durable)

    def trace_with(self, tracing: Tracing) -> None:
        """Give every message routed here its span (:mod:`caxton.tracing`). Untraced,
        ``_submit`` is the plain method: not even a check on the hot path."""
        self.tracing = tracing
        self._submit = tracing.routed(self._submit)  # type: ignore[method-assign]

    def _submit(
        self, message: Message, routes: Mapping[str, RemoteRoute] | None, *, wait: bool
    ) -> asyncio.Future[None] | None:
        if self._closed:
            raise CaxtonError(f"Router of node {self.node_id} is closed")
        if message.protocol is not None and message.conversation_id is None:
            message.conversation_id = message.message_id
        receivers = message.receivers
        if self.admission is not None:
            for name in receivers or (message.receiver,):
                refusal = self.admission(name)
                if refusal is not None:
                    raise refusal
        if len(receivers) > 1:
            return self._submit_many(message, receivers, routes, wait)
        if receivers and message.receiver != receivers[0]:
            message.receiver = receivers[0]
        self._validate(message)
        target = self._target(message.receiver, routes)
        waiter = self._waiter() if wait else None
        error = self._accept(message, target, waiter)
        if error is not None:
            raise error
        return waiter

    def _submit_many(
        self,
        message: Message,
        receivers: tuple[str, ...],
        routes: Mapping[str, RemoteRoute] | None,
        wait: bool,
    ) -> asyncio.Future[None] | None:
        if len(set(receivers)) != len(receivers):
            raise ValidationError(f"Invalid message: receivers repeat a name: {list(receivers)}")
        for receiver in receivers:
            self._validate(message.copy(receiver=receiver, receivers=()))
        targets = [self._target(receiver, routes) for receiver in receivers]
        copies = [
            message.copy(receiver=receiver, receivers=(), message_id=f"{message.message_id}.{i}")
            for i, receiver in enumerate(receivers)
        ]
        waiters: list[asyncio.Future[None]] = []
        errors: list[tuple[str, CaxtonError]] = []
        for copy, target in zip(copies, targets, strict=True):
            waiter = self._waiter() if wait else None
            error = self._accept(copy, target, waiter)
            if error is not None:
                errors.append((copy.receiver, error))
            elif waiter is not None:
                waiters.append(waiter)
        if errors:  # the other copies went: report the first refusal, list them all
            first = errors[0][1]
            first.details = "; ".join(f"to {receiver}: {error}" for receiver, error in errors)
            raise first
        if not waiters:
            return None
        return asyncio.ensure_future(_all_done(waiters))

    def _validate(self, message: Message) -> None:
        sender = message.sender
        receiver = message.receiver
        if not sender:
            raise ValidationError("Invalid message: the sender is empty")
        if not receiver:
            raise ValidationError("Invalid message: the receiver is empty")
        if sender == receiver:
            raise ValidationError(
                f"Invalid message: sender and receiver are both {sender!r}; "
                f"an agent cannot send a message to itself"
            )
        if message.reply_by is not None and message.reply_by <= self.wall_clock():
            raise ValidationError(
                f"Invalid message: reply_by {iso_time(message.reply_by)} is already past"
            )
        size = message.wire_size
        if size is None:
            content = message.content
            kind = type(content)
            if content is None or kind is int or kind is float or kind is bool:
                return
            # Cheap upper bounds first (a character is at most 6 bytes of JSON, and the
            # other fields, at most 255 characters each from outside, fit in 4 KiB);
            # the exact size only when the bound does not settle it.
            if kind is str:
                if 6 * len(content) + 4096 <= self.max_message_bytes:
                    return
            elif 4 * len(encode_content(content)) + 4096 <= self.max_message_bytes:
                return
            size = len(message.to_json())
            message.wire_size = size
        if size > self.max_message_bytes:
            raise MessageTooLarge(
                too_large(size, self.max_message_bytes),
                details="raise runtime.max_message_size or send a reference to the data",
            )

    def _target(self, name: str, routes: Mapping[str, RemoteRoute] | None) -> Target:
        """Where ``name`` is: a local mailbox, a remote route, or None (resolve later).

        ``routes``, when given, holds every remote route the message may take; None
        lets the resolver find them later.
        """
        box = self._boxes.get(name)
        if box is not None:
            if box.count >= self.queue_size:
                raise QueueFull(
                    f"Queue full: agent {name} has {box.count} queued messages",
                    details="the receiver is slower than its senders; retry later or "
                    "raise messaging.queue_size",
                )
            return box
        if routes is not None and name in routes:
            route: RemoteRoute | None = routes[name]
        elif routes is None and self.resolver is not None:
            route = None
        else:
            raise AgentNotFound(name)
        queued = self._remote.queued(name)
        if queued >= self.queue_size:
            raise QueueFull(
                f"Queue full: agent {name} has {queued} queued messages",
                details="the remote node is not keeping up; retry later",
            )
        return route

    def _accept(
        self, message: Message, target: Target, waiter: asyncio.Future[None] | None
    ) -> CaxtonError | None:
        """Account for a validated message and dispatch it.

        Returns the error to raise when the router stops the message and its sender is
        not registered here (a registered sender is answered with a message instead).
        """
        if self.gate is not None and type(target) is Mailbox:
            refusal = self.gate(message)
            if refusal is not None:
                self._counts["refused"] += 1
                if waiter is not None:
                    waiter.set_result(None)
                return self._stop(
                    message, Performative.REFUSE, "not-allowed", refusal, Forbidden(refusal)
                )
        if self._durable and self.has_taken(message.message_id):
            self._counts["duplicates"] += 1
            if waiter is not None:
                waiter.set_result(None)
            return None
        watch = None
        if self._deadlines:
            late, watch = self._deadlines.match(message, self.wall_clock())
            if late:
                self._late(message)
                if waiter is not None:
                    waiter.set_result(None)
                return None
        if message.conversation_id is not None:
            problem = self._conversations.observe(message, self.wall_clock())
            if self._conversation_flush is None and self.conversation_store is not None:
                self._schedule_conversation_flush()
            if problem is not None:
                self._counts["not_understood"] += 1
                if waiter is not None:
                    waiter.set_result(None)
                return self._stop(
                    message,
                    Performative.NOT_UNDERSTOOD,
                    "out-of-protocol",
                    problem,
                    ProtocolViolation(f"Out-of-protocol message: {problem}"),
                )
        if watch is not None:
            self._deadlines.settle(watch)
        if message.reply_by is not None:
            self._deadlines.watch(message, message.reply_by - self.wall_clock(), self._get_loop())
        self._counts["sent"] += 1
        if self.observer is not None:
            self._observe(message, "sent")
        if self._durable:
            self._stage(message, target, waiter)
        else:
            self._dispatch(message, target)
        return None

    def _dispatch(self, message: Message, target: Target) -> None:
        if type(target) is Mailbox:
            if target.closed:
                replacement = self._boxes.get(message.receiver)
                if replacement is None and target.forward:
                    self._remote.put(message, None)  # taken while its agent moved away
                    return
                if replacement is None:
                    self._dead_letter(
                        message, f"receiver removed: {message.receiver} was unregistered"
                    )
                    return
                target = replacement
            self._to_box(target, message)
        else:
            self._remote.put(message, target)  # type: ignore[arg-type]

    def _to_box(self, box: Mailbox, message: Message) -> None:
        if box.direct and not box.count and not self._delivering and not box.busy and not box.held:
            self._deliver_now(box, message)
            return
        priority = box.push(message, self.clock())
        if box.held or box.busy:
            return
        if box.is_async:
            self._start_async(box)
        elif priority < box.sched:
            self._schedule(box, priority)

    def _notify(self, message: Message) -> None:
        """Route a message the router itself wrote (timeouts, not-understood)."""
        self._counts["sent"] += 1
        if self.observer is not None:
            self._observe(message, "sent")
        box = self._boxes.get(message.receiver)
        if box is not None:
            if box.count >= self.queue_size:
                self._dead_letter(message, f"undeliverable: queue of {box.name} is full")
            else:
                self._to_box(box, message)
        elif self.resolver is not None:
            self._remote.put(message, None)
        else:
            self._dead_letter(message, f"undeliverable: Agent not found: {message.receiver}")

    # -- delivery -------------------------------------------------------------------

    def _deliver_now(self, box: Mailbox, message: Message) -> None:
        self._delivering = True
        try:
            result = box.deliver(message)
        except Exception as exc:
            self._delivery_failed(box, message, exc)
        else:
            if result is None:
                box.delivered += 1
                self._delivered(message)
            else:
                self._await_delivery(box, message, result)
        finally:
            self._delivering = False
        self._direct_count += 1
        if not self._direct_count & 63:  # one direct delivery in 64 (it waited 0)
            self._waits.append(0.0)

    def _delivered(self, message: Message) -> None:
        self._counts["delivered"] += 1
        if self._durable:
            self._ack(message.message_id)
        if self.observer is not None:
            self._observe(message, "delivered")

    def _schedule(self, box: Mailbox, priority: int) -> None:
        box.sched = priority
        self._ready[priority].append(box)
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self._get_loop().call_soon(self._pump)

    def _next_ready(self) -> Mailbox | None:
        """The next mailbox to serve: highest priority first, but one turn in eight goes
        to the lowest ready priority, so a flood of critical messages between some
        agents cannot starve every other agent of the node."""
        self._turns += 1
        for priority in _HIGHEST_FIRST if self._turns & 7 else _LOWEST_FIRST:
            ready = self._ready[priority]
            while ready:
                box = ready.popleft()
                if box.sched == priority:  # else a stale entry: rescheduled elsewhere
                    box.sched = UNSCHEDULED
                    return box
        return None

    def _pump(self) -> None:
        """Deliver queued messages of ready mailboxes, within ``pump_budget`` messages
        and ``pump_time_slice`` seconds, then let the event loop run other work.

        ``_pump_scheduled`` stays true while it runs: mailboxes made ready by the
        deliveries join this run instead of scheduling another.
        """
        if self._closed:
            self._pump_scheduled = False
            return
        budget = self.pump_budget
        batch = self.batch_size
        observer = self.observer
        durable = self._durable
        clock = self.clock
        ttl = self.message_ttl
        waits = self._waits
        turn_time = self.turn_time
        delivered = 0
        # slow agents (a wasm call may take its whole max_execution_time) must not hold
        # the loop for a whole budget: gossip and I/O wait behind the pump
        slice_ends = clock() + self.pump_time_slice
        self._delivering = True
        try:
            while budget > 0:
                box = self._next_ready()
                if box is None:
                    break
                if box.held or box.busy or box.closed:
                    continue  # release, the running task or nothing will wake it
                now = clock()
                turn_ends = min(now + turn_time, slice_ends)
                stale = now - ttl  # queued before this: expired
                turn = box.count if box.count < batch else batch
                budget -= turn or 1
                deliver = box.deliver
                sample = True
                for _ in range(turn):
                    queued_at, message = box.pop()
                    if queued_at < stale:
                        self._expire(message)
                        continue
                    if sample:  # the first wait of each turn, for routing_latency()
                        waits.append(now - queued_at)
                        sample = False
                    try:
                        result = deliver(message)
                    except Exception as exc:
                        self._delivery_failed(box, message, exc)
                    else:
                        if result is not None:
                            self._await_delivery(box, message, result)
                            break
                        box.delivered += 1
                        delivered += 1
                        if durable:
                            self._acks.append(message.message_id)
                        if observer is not None:
                            self._observe(message, "delivered")
                    if box.held or box.closed:
                        break
                    ended = clock()
                    if ended > turn_ends:  # its turn is used up: to the back of the list
                        if ended > slice_ends:
                            budget = 0
                        break
                if box.count and not (box.held or box.busy or box.closed):
                    priority = box.top()
                    if priority < box.sched:
                        self._schedule(box, priority)
        finally:
            self._delivering = False
            self._pump_scheduled = False
            self._counts["delivered"] += delivered
            if durable and self._acks:
                self._flush_acks()
        if any(self._ready):  # the budget ran out: let the event loop breathe first
            self._pump_scheduled = True
            self._get_loop().call_soon(self._pump)

    def _await_delivery(self, box: Mailbox, message: Message, result: Awaitable[None]) -> None:
        """A ``deliver`` returned an awaitable: the mailbox waits for it in a task."""
        box.busy = True
        self._spawn(self._finish_delivery(box, message, result))

    async def _finish_delivery(
        self, box: Mailbox, message: Message, result: Awaitable[None]
    ) -> None:
        try:
            await result
        except Exception as exc:
            self._delivery_failed(box, message, exc)
        else:
            box.delivered += 1
            self._delivered(message)
        finally:
            box.busy = False
            self._wake(box)

    def _start_async(self, box: Mailbox) -> None:
        box.busy = True
        self._spawn(self._drain_async(box))

    async def _drain_async(self, box: Mailbox) -> None:
        """The delivery loop of a mailbox whose ``deliver`` is a coroutine function."""
        clock = self.clock
        try:
            turn = 0
            while box.count and not box.held and not box.closed:
                queued_at, message = box.pop()
                now = clock()
                if queued_at < now - self.message_ttl:
                    self._expire(message)
                    continue
                self._waits.append(now - queued_at)
                try:
                    self._delivering = True
                    try:
                        result = box.deliver(message)
                    finally:
                        self._delivering = False
                    if result is not None:
                        await result
                except Exception as exc:
                    self._delivery_failed(box, message, exc)
                else:
                    box.delivered += 1
                    self._delivered(message)
                turn += 1
                if turn % self.batch_size == 0:
                    await asyncio.sleep(0)
        finally:
            box.busy = False

    def _wake(self, box: Mailbox) -> None:
        if not box.count or box.held or box.busy or box.closed:
            return
        if box.is_async:
            self._start_async(box)
        else:
            priority = box.top()
            if priority < box.sched:
                self._schedule(box, priority)

    def _delivery_failed(self, box: Mailbox, message: Message, exc: Exception) -> None:
        self._counts["delivery_errors"] += 1
        log.warning(
            "delivery of %s %s to %s failed",
            message.performative.value,
            message.message_id,
            box.name,
            exc_info=exc,
        )
        detail = str(exc) if isinstance(exc, CaxtonError) else f"{type(exc).__name__}: {exc}"
        self._dead_letter(message, f"delivery error: {detail}")

        # -- durability -----------------------------------------------------------------

    def has_taken(self, message_id: str) -> bool:
        """Whether a message of this id was taken before (at-least-once): persisted
        (the outbox has ``seen`` it) or being persisted now. A message taken again is a
        duplicate and is dropped."""
        if message_id in self._taking:
            return True
        return self.outbox is not None and self.outbox.seen(message_id)

    def _stage(self, message: Message, target: Target, waiter: asyncio.Future[None] | None) -> None:
        self._taking.add(message.message_id)
        self._staged.append((message, target, waiter))
        if self._persist_task is None:
            self._persist_task = self._spawn(self._persist_loop())

    async def _persist_loop(self) -> None:
        """Group-commit staged messages, then route them (in order)."""
        assert self.outbox is not None
        try:
            while self._staged:
                batch, self._staged = self._staged, []
                self._persisting = len(batch)
                try:
                    await self.outbox.persist([message for message, _, _ in batch])
                except Exception as exc:
                    self._taking.difference_update(m.message_id for m, _, _ in batch)
                    self._persisting = 0
                    log.error("could not persist %d messages: %s", len(batch), exc)
                    for message, _, waiter in batch:
                        error = CaxtonError(f"Message not persisted, not sent: {exc}")
                        if waiter is not None:
                            if not waiter.done():
                                waiter.set_exception(error)
                        else:
                            self._dead_letter(message, f"not persisted: {exc}")
                    continue
                self._persisting = 0
                self._taking.difference_update(m.message_id for m, _, _ in batch)
                for message, target, waiter in batch:
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                    self._dispatch(message, target)
        finally:
            self._persist_task = None
            self._persisting = 0

    def _ack(self, message_id: str) -> None:
        self._acks.append(message_id)
        self._flush_acks()

    def _flush_acks(self) -> None:
        if self._ack_task is None and not self._closed:
            self._ack_task = self._spawn(self._ack_loop())

    async def _ack_loop(self) -> None:
        assert self.outbox is not None
        try:
            while self._acks:
                batch, self._acks = self._acks, []
                try:
                    await self.outbox.acknowledge(batch)
                except Exception:
                    log.exception("could not acknowledge %d delivered messages", len(batch))
        finally:
            self._ack_task = None

    def forward_parked(self) -> int:
        """Forward the replayed messages still waiting for a name not registered here
        (they were on their way to another node when this one stopped): called by the
        cluster layer once it resolves names. Returns how many."""
        if self.resolver is None:
            return 0
        forwarded = 0
        for name in [n for n in self._parked if n not in self._boxes]:
            for _, message in self._parked.pop(name):
                self._remote.put(message, None, resend=True)
                forwarded += 1
        return forwarded

    def _replay(self, message: Message) -> None:
        """Route a message persisted before a restart (not validated or counted again)."""
        box = self._boxes.get(message.receiver)
        if box is not None:
            self._to_box(box, message)
        else:  # its agent may register in a moment: wait up to the message TTL
            self._parked.setdefault(message.receiver, []).append((self.clock(), message))

    # -- reply deadlines --------------------------------------------------------------

    def _late(self, message: Message) -> None:
        self._counts["late_replies"] += 1
        self._dead_letter(
            message,
            f"late reply: {message.receiver} had asked for a reply by its reply_by deadline "
            f"and was sent a timeout failure instead",
        )

    def _reply_timed_out(self, failure: Message) -> None:
        self._counts["timeouts"] += 1
        self._notify(failure)

    # -- protocols ------------------------------------------------------------------

    def _stop(
        self,
        message: Message,
        performative: Performative,
        reason: str,
        problem: str,
        error: CaxtonError,
    ) -> CaxtonError | None:
        """Answer a message the router stops (``refuse`` from the gate, ``not-understood``
        out of protocol) as if from its receiver; return ``error`` instead when the
        sender is not registered here (a REST client or another node: it gets the
        exception)."""
        if message.sender not in self._boxes:
            return error
        if message.in_reply_to is not None and message.in_reply_to in self._notices:
            # An answer to the router's own notice, stopped again: answering it would
            # loop between the router and the agent forever.
            self._dead_letter(message, f"{reason.replace('-', ' ')}: {problem}")
            return None
        notice = Message(
            performative,
            sender=message.receiver,
            receiver=message.sender,
            content={"reason": reason, "error": problem, "message_id": message.message_id},
            protocol=message.protocol,
            conversation_id=message.conversation_id,
            in_reply_to=message.reply_token,
            priority=message.priority,
        )
        notices = self._notices
        notices[notice.message_id] = None
        if len(notices) > 10_000:
            del notices[next(iter(notices))]
        self._notify(notice)
        return None

    def conversation(self, conversation_id: str) -> Conversation | None:
        """What is known of a conversation, or None (never seen, or expired)."""
        return self._conversations.get(conversation_id)

    def conversations(self) -> list[Conversation]:
        return self._conversations.values()

    def conversation_trail(self, conversation_id: str) -> list[dict[str, Any]]:
        """The first messages of a recent conversation this router saw, oldest first."""
        return self._conversations.trail(conversation_id)

    def conversation_messages(self, since: float) -> list[dict[str, Any]]:
        """The conversation messages this router saw since ``since`` (Unix time)."""
        return self._conversations.messages_since(since)

    # -- external clients -------------------------------------------------------------

    async def request(self, message: Message, timeout: float) -> Message:
        """Send on behalf of an external client and wait for the reply.

        The sender name gets a temporary endpoint (``client-...`` when empty); the
        reply is the first message answering ``reply_with`` (set to the message id
        when unset) or, failing that, the conversation. In ``fipa-request`` and
        ``fipa-query`` an ``agree`` is skipped: the result that follows is returned.
        No reply within ``timeout`` seconds raises :class:`RequestTimeout`.
        """
        return await self._clients.request(message, timeout)

    async def contract_net(
        self,
        initiator: str,
        participants: Sequence[str],
        content: Any,
        *,
        deadline: float,
        select: Selector | None = None,
        result_timeout: float | None = None,
        language: str | None = None,
        ontology: str | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> ContractNetResult:
        """Run ``fipa-contract-net`` as initiator on behalf of an external client.

        Sends a ``cfp`` to every participant with ``reply_by`` ``deadline`` seconds from
        now, collects ``propose``/``refuse`` until all answered or the deadline, asks
        ``select`` (default: the first proposal) for the winner, sends
        ``accept-proposal`` to it and ``reject-proposal`` to the other bidders, and waits
        up to ``result_timeout`` (default ``deadline``) for its ``inform``/``failure``.
        """
        return await self._clients.contract_net(
            initiator,
            participants,
            content,
            deadline=deadline,
            select=select,
            result_timeout=result_timeout,
            language=language,
            ontology=ontology,
            priority=priority,
        )

    # -- dead letters and expiry ------------------------------------------------------

    def dead_letter(self, message: Message, reason: str) -> None:
        """Give up on ``message`` with ``reason`` (kept in the dead-letter queue)."""
        self._dead_letter(message, reason)

    def _dead_letter(self, message: Message, reason: str, *, event: str = "dead-lettered") -> None:
        self._counts["dead_lettered"] += 1
        letter = DeadLetter(message, reason, self.wall_clock())
        self._dead.append(letter)
        log.debug("dead letter %s to %s: %s", message.message_id, message.receiver, reason)
        if self.dead_letter_sink is not None:
            try:
                self.dead_letter_sink(letter)
            except Exception:
                log.exception("dead letter sink failed")
        if self._durable:
            self._ack(message.message_id)
        if self.observer is not None:
            self._observe(message, event)

    def _expire(self, message: Message) -> None:
        self._counts["expired"] += 1
        self._dead_letter(
            message,
            f"expired: queued for {message.receiver} longer than the message TTL of "
            f"{self.message_ttl:g}s",
            event="expired",
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        letters = list(self._dead)
        letters.reverse()
        return letters[: max(limit, 0)]

    def expire(self) -> int:
        """Dead-letter queued messages past their TTL and forget idle conversations.

        Runs every ``cleanup_interval`` once started (a held or stuck agent's queue is
        not left to grow stale); returns how many messages expired.
        """
        now = self.clock()
        stale = now - self.message_ttl
        # a replayed message waits for its agent up to the TTL (a minute without one)
        parked_cutoff = now - (self.message_ttl if self.message_ttl < math.inf else 60.0)
        expired = 0
        for box in list(self._boxes.values()):
            if not box.count:
                continue
            for priority, queue in enumerate(box.queues):
                while queue and queue[0][0] < stale:
                    self._expire(box.pop_from(priority)[1])
                    expired += 1
        for name in list(self._parked):
            keep = []
            for parked_at, message in self._parked[name]:
                if parked_at >= parked_cutoff:
                    keep.append((parked_at, message))
                elif self.resolver is not None:
                    self._remote.put(message, None)
                else:
                    self._dead_letter(
                        message,
                        f"undeliverable: Agent not found: {name} (replayed after a restart)",
                    )
            if keep:
                self._parked[name] = keep
            else:
                del self._parked[name]
        self._conversations.expire(self.wall_clock())
        self.flush_conversations()
        return expired

    # -- conversations in the state store ---------------------------------------------

    def _schedule_conversation_flush(self) -> None:
        loop = self._loop
        if loop is not None and not self._closed:
            self._conversation_flush = loop.call_later(
                CONVERSATION_FLUSH_DELAY, self.flush_conversations
            )

    def flush_conversations(self) -> None:
        """Hand what changed in the conversation table to the conversation store."""
        self._conversation_flush = None
        store = self.conversation_store
        if store is None or not self._conversations.has_changes:
            return
        changed, forgotten = self._conversations.take_changes()
        try:
            if changed:
                store.save_conversations([c.to_dict() for c in changed])
            if forgotten:
                store.forget_conversations(forgotten)
        except Exception:  # a closed store at shutdown: the next start reloads the rest
            log.exception("could not keep %d conversations", len(changed) + len(forgotten))

    async def _restore_conversations(self, store: ConversationStore) -> None:
        kept = [Conversation.from_dict(data) for data in await store.load_conversations()]
        loaded = self._conversations.restore(kept, self.wall_clock())
        if loaded:
            log.info("node %s: %d conversations restored", self.node_id, loaded)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                self.expire()
            except Exception:  # never let one bad pass stop the sweeping
                log.exception("message expiry pass failed")

    # -- introspection --------------------------------------------------------------

    def queue_stats(self, *, agents: bool = True) -> dict[str, Any]:
        """Queue depths per agent and per priority, dead letters, and running totals.

        ``agents=False`` leaves out the per-agent table (cheaper for a metrics scrape
        on a node with thousands of agents).
        """
        per_agent: dict[str, dict[str, Any]] = {}
        by_priority = [0, 0, 0, 0]
        queued = 0
        for name, box in self._boxes.items():
            queued += box.count
            if not box.count and not agents:
                continue
            depths = box.depths()
            for priority, depth in enumerate(depths):
                by_priority[priority] += depth
            if not agents:
                continue
            per_agent[name] = {
                "queued": box.count,
                **dict(zip(_PRIORITY_NAMES, depths, strict=True)),
                "held": box.held,
                "delivered": box.delivered,
            }
        remote = self._remote.depths()
        return {
            "node_id": self.node_id,
            "guarantee": self.guarantee,
            "queue_size": self.queue_size,
            "agents": per_agent,
            "remote": remote,
            "priorities": dict(zip(_PRIORITY_NAMES, by_priority, strict=True)),
            "dead_letters": len(self._dead),
            "conversations": len(self._conversations),
            "awaiting_replies": len(self._deadlines),
            "total_queued": queued,
            "latency": self.routing_latency(),
            "totals": {
                "queued": queued,
                "forwarding": sum(remote.values()),
                "persisting": len(self._staged) + self._persisting,
                "parked": sum(len(v) for v in self._parked.values()),
                **self._counts,
            },
        }

    def routing_latency(self) -> dict[str, float | int]:
        """Quantiles (seconds) of recent send-to-deliver waits, from a sample.

        The sample holds the wait of the first message of each pump turn, of each
        coroutine delivery and of one direct delivery in 64 (which waits 0), the last
        1,024 of them: ``{"samples", "p50", "p90", "p99", "max"}``.
        """
        p50, p90, p99, top = self.latency.quantiles(0.5, 0.9, 0.99, 1.0)
        return {"samples": len(self.latency.window), "p50": p50, "p90": p90, "p99": p99, "max": top}

    def pending(self, name: str | None = None) -> int:
        """Messages not yet handed over: queued, being delivered, persisted or forwarded."""
        if name is not None:
            box = self._box(name)
            return box.count + box.busy
        total = sum(box.count + box.busy for box in self._boxes.values())
        total += self._remote.pending()
        return total + len(self._staged) + self._persisting

    async def drain(self, timeout: float, *, name: str | None = None) -> int:
        """Wait up to ``timeout`` seconds for the queues (or ``name``'s) to empty.

        Returns how many messages remain (0 when drained). Held agents keep theirs.
        """
        loop = self._get_loop()
        deadline = loop.time() + timeout
        spins = 0
        while True:
            remaining = self.pending(name)
            if not remaining or loop.time() >= deadline:
                return remaining
            spins += 1
            await asyncio.sleep(0 if spins < 8 else 0.001)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start expiry sweeps and replay undelivered durable messages."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        if self.conversation_store is not None and not len(self._conversations):
            await self._restore_conversations(self.conversation_store)
        if self._durable and self.outbox is not None and not self._replayed:
            self._replayed = True
            replayed = await self.outbox.pending()
            for message in replayed:
                self._replay(message)
            if replayed:
                log.info(
                    "node %s: replaying %d undelivered durable messages",
                    self.node_id,
                    len(replayed),
                )
        if self._sweeper is None and self.cleanup_interval > 0:
            self._sweeper = self._spawn(self._sweep_loop())

    async def close(self) -> None:
        """Stop: persist what is staged, flush acknowledgements, drop the rest.

        Queued at-most-once messages are lost (counted in the log); at-least-once ones
        stay in the outbox and are replayed by the next start.
        """
        if self._persist_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._persist_task), 5.0)
        self._closed = True
        if self._conversation_flush is not None:
            self._conversation_flush.cancel()
        self.flush_conversations()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()
        self._clients.close(
            CaxtonError(f"Router of node {self.node_id} closed before a reply arrived")
        )
        dropped = sum(box.count for box in self._boxes.values())
        if dropped and not self._durable:
            log.info("node %s: router closed with %d undelivered messages", self.node_id, dropped)
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            if task is not self._ack_task:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._acks and self.outbox is not None:
            batch, self._acks = self._acks, []
            try:
                await self.outbox.acknowledge(batch)
            except Exception:
                log.exception("could not acknowledge %d delivered messages", len(batch))

    # -- helpers --------------------------------------------------------------------

    def _observe(self, message: Message, event: str) -> None:
        """Call the observer; a failing observer is logged, never breaks delivery."""
        assert self.observer is not None
        try:
            self.observer(message, event)
        except Exception:
            log.exception("message observer failed on %s %s", event, message.message_id)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _waiter(self) -> asyncio.Future[None]:
        return self._get_loop().create_future()

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = self._get_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_FIELD_LENGTH:
        raise ValidationError(
            f"Invalid agent name {name!r}: expected 1 to {MAX_FIELD_LENGTH} characters"
        )


async def _all_done(waiters: Sequence[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        await waiter
