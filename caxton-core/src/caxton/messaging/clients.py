"""Exchanges run on behalf of external clients (the REST API): request and contract net.

A client is not an agent, so while it waits for answers it gets a temporary endpoint:
a name registered with the router whose ``deliver`` hands each message to the exchange
waiting for it (by ``in_reply_to``, else by conversation). The endpoint is unregistered
when its last exchange ends, and its name is remembered for a while (:meth:`Clients.ended`):
a reply another node forwards to it later (its client gave up, or both copies of an
at-least-once request were answered) is then refused for good, not sent again until
its TTL runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caxton.errors import CaxtonError, RequestTimeout, ValidationError
from caxton.messaging.message import Message, new_message_id
from caxton.messaging.performatives import Performative, Priority

if TYPE_CHECKING:
    from caxton.messaging.router import Router

__all__ = ["ClientEndpoint", "Clients", "ContractNetResult", "Selector"]

log = logging.getLogger("caxton.messaging")

#: Names of ended client endpoints remembered at most (the oldest are forgotten first).
ENDED_KEPT = 100_000

ReplyHandler = Callable[[Message], None]
#: Picks the winning participant from the proposals (None: no winner); may be async.
Selector = Callable[[Mapping[str, Message]], "str | Awaitable[str | None] | None"]

_RESULT_AFTER_AGREE = ("fipa-request", "fipa-query")


@dataclass(slots=True)
class ContractNetResult:
    """The outcome of :meth:`Router.contract_net`.

    ``proposals`` and ``refusals`` are keyed by participant in arrival order (a
    ``not-understood`` or ``failure`` answer to the cfp counts as a refusal);
    ``no_answer`` lists participants silent until the deadline. ``result`` is the
    winner's ``inform`` or ``failure``, or None when there was no winner or it did not
    report before ``result_timeout``.
    """

    conversation_id: str
    winner: str | None
    proposals: dict[str, Message]
    refusals: dict[str, Message]
    no_answer: tuple[str, ...]
    result: Message | None

    @property
    def succeeded(self) -> bool:
        return self.result is not None and self.result.performative is Performative.INFORM


class ClientEndpoint:
    """The ``deliver`` of a client's temporary name."""

    __slots__ = ("by_conversation", "by_token", "name", "unclaimed")

    def __init__(self, name: str, unclaimed: Callable[[Message, str], None]) -> None:
        self.name = name
        #: Gets messages no exchange waits for, with a reason (the router dead-letters).
        self.unclaimed = unclaimed
        self.by_token: dict[str, ReplyHandler] = {}
        self.by_conversation: dict[str, ReplyHandler] = {}

    def __call__(self, message: Message) -> None:
        handler = None
        if message.in_reply_to is not None:
            handler = self.by_token.get(message.in_reply_to)
        if handler is None and message.conversation_id is not None:
            handler = self.by_conversation.get(message.conversation_id)
        if handler is None:
            self.unclaimed(message, f"undeliverable: {self.name} is no longer waiting for a reply")
        else:
            handler(message)

    @property
    def idle(self) -> bool:
        return not self.by_token and not self.by_conversation


class Clients:
    """The client endpoints of one router and the exchanges waiting on them."""

    def __init__(self, router: Router, unclaimed: Callable[[Message, str], None]) -> None:
        self.router = router
        self.unclaimed = unclaimed
        self.endpoints: dict[str, ClientEndpoint] = {}
        self.waiters: set[asyncio.Future[Any]] = set()
        #: Client name -> when its endpoint ended (loop time), oldest first.
        self._ended: dict[str, float] = {}

    # -- request --------------------------------------------------------------------

    async def request(self, message: Message, timeout: float) -> Message:
        if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
            raise ValidationError(
                f"Invalid request: timeout must be positive seconds, got {timeout!r}"
            )
        if len(message.receivers) > 1:
            raise ValidationError(
                "Invalid request: request() waits for one reply; send to several receivers "
                "with send() or contract_net()"
            )
        if not message.sender:
            message.sender = f"client-{new_message_id()[:12]}"
        if message.reply_with is None:
            message.reply_with = message.message_id
        token = message.reply_with
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        skip_agree = message.protocol in _RESULT_AFTER_AGREE

        def on_reply(reply: Message) -> None:
            if skip_agree and reply.performative is Performative.AGREE:
                return  # the result follows
            if not future.done():
                future.set_result(reply)

        def expire() -> None:
            if not future.done():
                future.set_exception(
                    RequestTimeout(
                        f"No reply from {message.receiver} within {timeout:g}s to "
                        f"{message.performative.value} {message.message_id}",
                        details="the agent may be busy or not answering; retry with a "
                        "longer timeout or check the agent's logs",
                    )
                )

        endpoint = self.acquire(message.sender)
        endpoint.by_token[token] = on_reply
        conversation_id = message.conversation_id
        if conversation_id is not None:
            endpoint.by_conversation.setdefault(conversation_id, on_reply)
        self.waiters.add(future)
        timer = loop.call_later(timeout, expire)
        try:
            await self.router.send(message)
            return await future
        finally:
            timer.cancel()
            self.waiters.discard(future)
            endpoint.by_token.pop(token, None)
            if conversation_id is not None and (
                endpoint.by_conversation.get(conversation_id) is on_reply
            ):
                del endpoint.by_conversation[conversation_id]
            self.release(endpoint)

    # -- contract net ---------------------------------------------------------------

    async def contract_net(
        self,
        initiator: str,
        participants: Sequence[str],
        content: Any,
        *,
        deadline: float,
        select: Selector | None,
        result_timeout: float | None,
        language: str | None,
        ontology: str | None,
        priority: Priority,
    ) -> ContractNetResult:
        names = tuple(participants)
        _check_contract_net(initiator, names, deadline, result_timeout)
        router = self.router
        loop = asyncio.get_running_loop()
        conversation_id = new_message_id()
        proposals: dict[str, Message] = {}
        refusals: dict[str, Message] = {}
        silent: set[str] = set()
        waiting = set(names)
        all_answered: asyncio.Future[None] = loop.create_future()
        outcome: asyncio.Future[Message] = loop.create_future()
        winner: str | None = None
        bidding = True

        def on_message(message: Message) -> None:
            who = message.sender
            if bidding and who in waiting:
                waiting.discard(who)
                if message.performative is Performative.PROPOSE:
                    proposals[who] = message
                elif _is_timeout(message):  # the router's failure at reply_by
                    silent.add(who)
                else:
                    refusals[who] = message
                if not waiting and not all_answered.done():
                    all_answered.set_result(None)
            elif (
                who == winner
                and message.performative in (Performative.INFORM, Performative.FAILURE)
                and not outcome.done()
            ):
                outcome.set_result(message)

        endpoint = self.acquire(initiator)
        endpoint.by_conversation[conversation_id] = on_message
        self.waiters.update((all_answered, outcome))
        try:
            await router.send(
                Message(
                    Performative.CFP,
                    sender=initiator,
                    receiver=names[0],
                    receivers=names,
                    content=content,
                    language=language,
                    ontology=ontology,
                    protocol="fipa-contract-net",
                    conversation_id=conversation_id,
                    reply_by=router.wall_clock() + deadline,
                    priority=priority,
                )
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(all_answered), deadline)
            bidding = False
            winner = await _choose(select, proposals)
            for name, proposal in proposals.items():
                answer = (
                    Performative.ACCEPT_PROPOSAL if name == winner else Performative.REJECT_PROPOSAL
                )
                try:
                    await router.send(proposal.create_reply(answer, sender=initiator))
                except CaxtonError as exc:
                    log.warning(
                        "contract net %s: could not send %s to %s: %s",
                        conversation_id,
                        answer.value,
                        name,
                        exc,
                    )
            result = None
            if winner is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    result = await asyncio.wait_for(
                        outcome, result_timeout if result_timeout is not None else deadline
                    )
            return ContractNetResult(
                conversation_id=conversation_id,
                winner=winner,
                proposals=proposals,
                refusals=refusals,
                no_answer=tuple(n for n in names if n in waiting or n in silent),
                result=result,
            )
        finally:
            self.waiters.difference_update((all_answered, outcome))
            endpoint.by_conversation.pop(conversation_id, None)
            self.release(endpoint)

    # -- endpoints ------------------------------------------------------------------

    def acquire(self, name: str) -> ClientEndpoint:
        """The endpoint of client ``name``, registering it with the router if needed."""
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            return endpoint
        if self.router.is_registered(name):
            raise ValidationError(
                f"{name} is a registered agent; a request on a client's behalf needs a "
                f"sender name of its own"
            )
        endpoint = ClientEndpoint(name, self.unclaimed)
        self.router.register(name, endpoint)
        self.endpoints[name] = endpoint
        return endpoint

    def release(self, endpoint: ClientEndpoint) -> None:
        """Unregister ``endpoint`` once no exchange waits on it."""
        if endpoint.idle and self.endpoints.get(endpoint.name) is endpoint:
            del self.endpoints[endpoint.name]
            if self.router.is_registered(endpoint.name):
                self.router.unregister(endpoint.name)
            self._remember_ended(endpoint.name)

    def _remember_ended(self, name: str) -> None:
        ended = self._ended
        now = self.router.clock()
        ended.pop(name, None)
        ended[name] = now
        ttl = self.router.message_ttl if self.router.message_ttl < math.inf else 60.0
        while True:  # oldest first: stops at the first recent one
            oldest = next(iter(ended))
            if len(ended) <= ENDED_KEPT and now - ended[oldest] < ttl:
                break
            del ended[oldest]

    def ended(self, name: str) -> bool:
        """Whether ``name`` was a client endpoint here that ended within the message TTL
        (and is not one again): a message for it has nowhere to go."""
        return name in self._ended and name not in self.endpoints

    def forget(self, name: str) -> None:
        """``name`` was unregistered by someone else."""
        self.endpoints.pop(name, None)

    def close(self, error: CaxtonError) -> None:
        """Fail every exchange still waiting."""
        for future in list(self.waiters):
            if not future.done():
                future.set_exception(error)


def _check_contract_net(
    initiator: str, names: tuple[str, ...], deadline: float, result_timeout: float | None
) -> None:
    if not names:
        raise ValidationError("Invalid contract net: no participants")
    if len(set(names)) != len(names):
        raise ValidationError(f"Invalid contract net: participants repeat a name: {list(names)}")
    if initiator in names:
        raise ValidationError(
            f"Invalid contract net: the initiator {initiator!r} is also a participant"
        )
    for what, value in (("deadline", deadline), ("result_timeout", result_timeout)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 86_400):
            raise ValidationError(
                f"Invalid contract net: {what} must be seconds from now "
                f"(0 < {what} <= 86400), got {value!r}"
            )


async def _choose(select: Selector | None, proposals: dict[str, Message]) -> str | None:
    if select is None:
        return next(iter(proposals), None)
    chosen = select(dict(proposals))
    if inspect.isawaitable(chosen):
        chosen = await chosen
    if chosen is not None and chosen not in proposals:
        raise ValidationError(
            f"Invalid contract net: select() chose {chosen!r}, which made no proposal "
            f"(proposals came from {', '.join(proposals) or 'nobody'})"
        )
    return chosen


def _is_timeout(message: Message) -> bool:
    content = message.content
    return (
        message.performative is Performative.FAILURE
        and isinstance(content, dict)
        and content.get("reason") == "timeout"
    )
