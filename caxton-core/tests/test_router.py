"""The router: delivery, ordering, priorities, limits, dead letters, deadlines, clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from caxton.errors import (
    AgentNotFound,
    CaxtonError,
    ConfigError,
    Conflict,
    Forbidden,
    MessageTooLarge,
    QueueFull,
    RequestTimeout,
    ValidationError,
)
from caxton.messaging import Message, Performative, Priority, Router
from caxton.testing.messaging import Recorder, eventually

P = Performative


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router(node_id="n1", cleanup_interval=0)
    await r.start()
    yield r
    await r.close()


def msg(sender: str = "a", receiver: str = "b", content: object = None, **kw: object) -> Message:
    return Message(P.INFORM, sender, receiver, content, **kw)  # type: ignore[arg-type]


# -- delivery and validation ------------------------------------------------------------


async def test_delivers_by_name_inline_when_idle(router: Router) -> None:
    b = Recorder()
    router.register("b", b)
    await router.send(msg(content=1))
    assert b.contents == [1]  # delivered before send returned: the direct path
    router.send_nowait(msg(content=2))
    assert b.contents == [1, 2]
    stats = router.queue_stats()
    assert stats["agents"]["b"]["delivered"] == 2
    assert stats["totals"]["sent"] == stats["totals"]["delivered"] == 2


async def test_without_direct_delivery_the_sender_never_runs_agent_code() -> None:
    router = Router(node_id="n1", direct_delivery=False)
    b = Recorder()
    router.register("b", b)
    await router.send(msg(content=1))
    assert b.contents == []
    assert await router.drain(5) == 0
    assert b.contents == [1]
    await router.close()


async def test_unknown_receiver(router: Router) -> None:
    with pytest.raises(AgentNotFound) as info:
        await router.send(msg(receiver="ghost"))
    assert str(info.value) == "Agent not found: ghost"
    assert info.value.http_status == 404
    with pytest.raises(AgentNotFound, match=r"^Agent not found: ghost$"):
        router.send_nowait(msg(receiver="ghost"))


async def test_sender_cannot_be_the_receiver(router: Router) -> None:
    router.register("a", Recorder())
    with pytest.raises(ValidationError) as info:
        await router.send(msg("a", "a"))
    assert str(info.value) == (
        "Invalid message: sender and receiver are both 'a'; an agent cannot send a message "
        "to itself"
    )


async def test_empty_parties_are_refused(router: Router) -> None:
    router.register("b", Recorder())
    with pytest.raises(ValidationError, match=r"^Invalid message: the sender is empty$"):
        await router.send(msg(""))
    with pytest.raises(ValidationError, match=r"^Invalid message: the receiver is empty$"):
        await router.send(msg(receiver=""))


async def test_size_cap_on_text_structured_and_parsed_messages() -> None:
    router = Router(node_id="n1", max_message_bytes=1024)
    b = Recorder()
    router.register("b", b)
    await router.send(msg(content="x" * 100))
    for content in ("x" * 2000, {"blob": "y" * 2000}, ["z" * 2000]):
        with pytest.raises(MessageTooLarge) as info:
            await router.send(msg(content=content))
        assert str(info.value).startswith("Message too large: ")
        assert str(info.value).endswith(" bytes exceeds max_message_bytes (1024 bytes)")
        assert info.value.http_status == 413
    parsed = Message.from_json(msg(content="w" * 2000).to_json())
    with pytest.raises(MessageTooLarge):
        router.send_nowait(parsed)
    assert b.contents == ["x" * 100]


async def test_unserializable_content_is_refused(router: Router) -> None:
    router.register("b", Recorder())
    with pytest.raises(ValidationError, match="content is not JSON-serializable"):
        await router.send(msg(content={"when": object()}))


async def test_reply_by_in_the_past_is_refused(router: Router) -> None:
    router.register("b", Recorder())
    with pytest.raises(ValidationError, match=r"^Invalid message: reply_by .* is already past$"):
        await router.send(msg(reply_by=time.time() - 1))


async def test_queue_full_is_back_pressure_with_a_clear_error() -> None:
    router = Router(node_id="n1", queue_size=3)
    b = Recorder()
    router.register("b", b)
    router.hold("b")
    for i in range(3):
        await router.send(msg(content=i))
    with pytest.raises(QueueFull) as info:
        await router.send(msg(content=3))
    assert str(info.value) == "Queue full: agent b has 3 queued messages"
    assert info.value.http_status == 503
    router.release("b")
    await router.drain(5)
    assert b.contents == [0, 1, 2]
    await router.send(msg(content=4))  # room again
    assert b.contents == [0, 1, 2, 4]


# -- registration ---------------------------------------------------------------------


async def test_register_twice_is_a_conflict_unless_replacing(router: Router) -> None:
    first, second = Recorder(), Recorder()
    router.register("b", first)
    with pytest.raises(Conflict, match=r"^Agent already registered: b$"):
        router.register("b", second)
    router.hold("b")
    await router.send(msg(content="queued"))
    router.register("b", second, replace=True)  # hot swap keeps the queue
    router.release("b")
    await router.drain(5)
    assert first.contents == []
    assert second.contents == ["queued"]


@pytest.mark.parametrize("name", ["", "x" * 256, 5])
async def test_register_refuses_bad_names(router: Router, name: object) -> None:
    with pytest.raises(ValidationError, match=r"^Invalid agent name"):
        router.register(name, Recorder())  # type: ignore[arg-type]


async def test_unregister_dead_letters_the_queue(router: Router) -> None:
    router.register("b", Recorder())
    router.hold("b")
    await router.send(msg(content=1))
    assert router.is_registered("b")
    router.unregister("b")
    assert not router.is_registered("b")
    [letter] = router.dead_letters()
    assert letter.reason == "receiver removed: b was unregistered"
    assert letter.message.content == 1
    with pytest.raises(AgentNotFound, match=r"^Agent not found: b$"):
        router.unregister("b")
    with pytest.raises(AgentNotFound):
        router.hold("b")


async def test_hold_and_release_keep_order(router: Router) -> None:
    b = Recorder()
    router.register("b", b)
    router.hold("b")
    for i in range(5):
        await router.send(msg(content=i))
    assert b.contents == []
    assert router.queue_stats()["agents"]["b"]["held"] is True
    assert await router.drain(0.01) == 5  # held messages stay
    router.release("b")
    assert await router.drain(5) == 0
    assert b.contents == [0, 1, 2, 3, 4]


# -- priorities and ordering ------------------------------------------------------------


async def test_higher_priority_overtakes_queued_messages(router: Router) -> None:
    b = Recorder()
    router.register("b", b)
    router.hold("b")
    for name in ("low", "normal", "high", "critical", "normal", "low"):
        await router.send(msg(content=name, priority=Priority.parse(name)))
    stats = router.queue_stats()
    assert stats["agents"]["b"] | {"delivered": 0} == {
        "queued": 6,
        "critical": 1,
        "high": 1,
        "normal": 2,
        "low": 2,
        "held": True,
        "delivered": 0,
    }
    assert stats["priorities"] == {"critical": 1, "high": 1, "normal": 2, "low": 2}
    router.release("b")
    await router.drain(5)
    assert b.contents == ["critical", "high", "normal", "normal", "low", "low"]


async def test_without_priority_routing_every_agent_has_one_fifo() -> None:
    router = Router(node_id="n1", priority_routing=False)
    b = Recorder()
    router.register("b", b)
    router.hold("b")
    for name in ("low", "critical", "normal"):
        await router.send(msg(content=name, priority=Priority.parse(name)))
    router.release("b")
    await router.drain(5)
    assert b.contents == ["low", "critical", "normal"]


async def test_priority_never_breaks_fifo_within_a_conversation(router: Router) -> None:
    b = Recorder()
    router.register("b", b)
    router.hold("b")
    await router.send(msg(content="c1-first", conversation_id="c1", priority=Priority.LOW))
    await router.send(msg(content="c2-normal", conversation_id="c2"))
    await router.send(msg(content="c1-second", conversation_id="c1", priority=Priority.CRITICAL))
    await router.send(msg(content="c3-critical", conversation_id="c3", priority=Priority.CRITICAL))
    router.release("b")
    await router.drain(5)
    # c1-second may not pass c1-first; the critical c3 overtakes everything queued
    assert b.contents == ["c3-critical", "c2-normal", "c1-first", "c1-second"]


async def test_sends_from_inside_deliver_are_queued_in_order(router: Router) -> None:
    c = Recorder()

    def relay(message: Message) -> None:
        for i in range(3):
            router.send_nowait(msg("b", "c", (message.content, i)))

    router.register("b", relay)
    router.register("c", c)
    await router.send(msg(content="x"))
    await router.send(msg(content="y"))
    await router.drain(5)
    assert c.contents == [("x", 0), ("x", 1), ("x", 2), ("y", 0), ("y", 1), ("y", 2)]


async def test_a_chain_of_agents_never_nests_deliveries(router: Router) -> None:
    depth = {"now": 0, "max": 0}
    count = 3000
    last = Recorder()

    def hop(index: int) -> Callable[[Message], None]:
        def deliver(message: Message) -> None:
            depth["now"] += 1
            depth["max"] = max(depth["max"], depth["now"])
            router.send_nowait(msg(f"agent{index}", f"agent{index + 1}", message.content))
            depth["now"] -= 1

        return deliver

    for i in range(count):
        router.register(f"agent{i}", hop(i))
    router.register(f"agent{count}", last)
    await router.send(msg("client", "agent0", "token"))
    await router.drain(10)
    assert last.contents == ["token"]
    assert depth["max"] == 1  # no recursion: each hop is queued and pumped


async def test_ping_pong_forever_does_not_starve_the_event_loop(router: Router) -> None:
    exchanged = {"n": 0}

    def player(me: str, other: str) -> Callable[[Message], None]:
        def deliver(message: Message) -> None:
            exchanged["n"] += 1
            router.send_nowait(msg(me, other))

        return deliver

    router.register("ping", player("ping", "pong"))
    router.register("pong", player("pong", "ping"))
    await router.send(msg("ping", "pong"))
    ticks = 0
    while exchanged["n"] < 5000:  # the loop keeps running other tasks meanwhile
        ticks += 1
        await asyncio.sleep(0)
    assert ticks > 1
    router.unregister("ping")


async def test_slow_agents_do_not_hold_the_event_loop() -> None:
    clock = FakeClock()
    router = Router(node_id="n1", clock=clock, pump_time_slice=0.01)
    events: list[object] = []

    def slow(message: Message) -> None:  # each call "takes" a second
        clock.now += 1
        events.append(message.content)

    router.register("slow", slow)
    router.hold("slow")
    for i in range(3):
        await router.send(msg(receiver="slow", content=i))
    router.release("slow")  # schedules the pump
    asyncio.get_running_loop().call_soon(events.append, "other work")
    await router.drain(5)
    assert events == [0, "other work", 1, 2]  # the pump yielded after its time slice


async def test_a_critical_flood_between_agents_does_not_starve_the_others(
    router: Router,
) -> None:
    def player(me: str, other: str) -> Callable[[Message], None]:
        def deliver(message: Message) -> None:  # answer forever, critically
            router.send_nowait(msg(me, other, priority=Priority.CRITICAL))

        return deliver

    router.register("ping", player("ping", "pong"))
    router.register("pong", player("pong", "ping"))
    patient = Recorder()
    router.register("patient", patient)
    router.hold("patient")
    await router.send(msg(receiver="patient", content="low", priority=Priority.LOW))
    await router.send(msg("ping", "pong", priority=Priority.CRITICAL))  # the flood starts
    router.release("patient")
    await eventually(lambda: patient.messages)
    assert patient.contents == ["low"]
    router.unregister("ping")


# -- async and failing callbacks --------------------------------------------------------


async def test_coroutine_callbacks_get_one_message_at_a_time_in_order(router: Router) -> None:
    seen: list[int] = []
    in_flight = {"now": 0, "max": 0}

    async def deliver(message: Message) -> None:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        await asyncio.sleep(0)
        seen.append(message.content)
        in_flight["now"] -= 1

    router.register("b", deliver)
    for i in range(20):
        await router.send(msg(content=i, priority=Priority.LOW if i % 2 else Priority.NORMAL))
    await router.drain(5)
    assert sorted(seen) == list(range(20))
    assert in_flight["max"] == 1


async def test_callback_returning_an_awaitable_holds_the_mailbox(router: Router) -> None:
    gate = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    def deliver(message: Message) -> asyncio.Future[None] | None:
        seen.append(message.content)
        return gate if message.content == 0 else None

    router.register("b", deliver)
    await router.send(msg(content=0))
    await router.send(msg(content=1))
    await asyncio.sleep(0.01)
    assert seen == [0]  # 1 waits for 0's awaitable
    assert router.pending("b") == 2
    gate.set_result(None)
    await router.drain(5)
    assert seen == [0, 1]


async def test_delivery_errors_are_dead_lettered_and_delivery_goes_on(router: Router) -> None:
    seen: list[object] = []

    def deliver(message: Message) -> None:
        if message.content == "bad":
            raise RuntimeError("boom")
        seen.append(message.content)

    router.register("b", deliver)
    router.hold("b")
    for content in ("ok1", "bad", "ok2"):
        await router.send(msg(content=content))
    router.release("b")
    await router.drain(5)
    assert seen == ["ok1", "ok2"]
    [letter] = router.dead_letters()
    assert letter.reason == "delivery error: RuntimeError: boom"
    assert router.queue_stats()["totals"]["delivery_errors"] == 1


async def test_async_delivery_errors_are_dead_lettered(router: Router) -> None:
    async def deliver(message: Message) -> None:
        raise CaxtonError("agent trapped")

    router.register("b", deliver)
    await router.send(msg())
    await router.drain(5)
    assert router.dead_letters()[0].reason == "delivery error: agent trapped"


# -- TTL, dead letters, observer --------------------------------------------------------


async def test_messages_queued_past_their_ttl_expire() -> None:
    clock = FakeClock()
    events: list[tuple[object, str]] = []
    router = Router(
        node_id="n1",
        message_ttl=60,
        clock=clock,
        observer=lambda m, e: events.append((m.content, e)),
    )
    b = Recorder()
    router.register("b", b)
    router.hold("b")
    await router.send(msg(content="old"))
    clock.now += 30
    await router.send(msg(content="young"))
    clock.now += 31
    router.release("b")
    await router.drain(5)
    assert b.contents == ["young"]
    [letter] = router.dead_letters()
    assert letter.reason == "expired: queued for b longer than the message TTL of 60s"
    assert ("old", "expired") in events
    assert router.queue_stats()["totals"]["expired"] == 1


async def test_expiry_sweep_clears_held_queues() -> None:
    clock = FakeClock()
    router = Router(node_id="n1", message_ttl=5, clock=clock)
    router.register("b", Recorder())
    router.hold("b")
    for i in range(3):
        await router.send(msg(content=i, priority=Priority(i)))
    clock.now += 6
    assert router.expire() == 3
    assert router.queue_stats()["agents"]["b"]["queued"] == 0
    assert {d.message.content for d in router.dead_letters()} == {0, 1, 2}


async def test_routing_latency_samples_queue_waits() -> None:
    clock = FakeClock()
    router = Router(node_id="n1", clock=clock)
    router.register("b", Recorder())
    assert router.routing_latency() == {
        "samples": 0,
        "p50": 0.0,
        "p90": 0.0,
        "p99": 0.0,
        "max": 0.0,
    }
    for _ in range(64):  # direct deliveries wait nothing; one in 64 is sampled
        await router.send(msg())
    assert router.routing_latency()["samples"] == 1
    router.hold("b")
    await router.send(msg())
    await router.send(msg())
    clock.now += 3
    router.release("b")
    await router.drain(5)
    latency = router.queue_stats()["latency"]
    assert latency["samples"] == 2  # the first message of the pump turn
    assert latency["max"] == 3.0
    assert latency["p50"] == 0.0


async def test_dead_letter_queue_is_bounded_newest_first() -> None:
    sunk: list[str] = []
    router = Router(
        node_id="n1", dead_letter_limit=2, dead_letter_sink=lambda d: sunk.append(d.reason)
    )
    router.register("b", Recorder())
    router.hold("b")
    for i in range(4):
        await router.send(msg(content=i))
    router.unregister("b")
    assert [d.message.content for d in router.dead_letters()] == [3, 2]
    assert [d.message.content for d in router.dead_letters(limit=1)] == [3]
    assert len(sunk) == 4
    assert router.queue_stats()["dead_letters"] == 2
    assert router.queue_stats()["totals"]["dead_lettered"] == 4
    assert router.dead_letters()[0].to_dict()["reason"] == "receiver removed: b was unregistered"


async def test_observer_sees_sent_delivered_dead_lettered(router: Router) -> None:
    events: list[tuple[object, str]] = []
    router.observer = lambda m, e: events.append((m.content, e))
    router.register("b", lambda m: None)
    await router.send(msg(content=1))
    router.hold("b")
    await router.send(msg(content=2))
    router.unregister("b")
    assert events == [(1, "sent"), (1, "delivered"), (2, "sent"), (2, "dead-lettered")]


async def test_a_failing_observer_does_not_break_delivery(router: Router) -> None:
    def observer(message: Message, event: str) -> None:
        raise RuntimeError("observer bug")

    router.observer = observer
    b = Recorder()
    router.register("b", b)
    await router.send(msg(content=1))
    router.hold("b")
    await router.send(msg(content=2))
    router.release("b")
    await router.drain(5)
    assert b.contents == [1, 2]


# -- the gate (agent policy) ------------------------------------------------------------


def only_from(allowed: str) -> Callable[[Message], str | None]:
    def gate(message: Message) -> str | None:
        if message.receiver == "vault" and message.sender != allowed:
            return f"agent vault does not accept messages from {message.sender}"
        return None

    return gate


async def test_the_gate_refuses_for_the_receiver(router: Router) -> None:
    router.gate = only_from("keeper")
    vault, thief, keeper = Recorder(), Recorder(), Recorder()
    for name, recorder in (("vault", vault), ("thief", thief), ("keeper", keeper)):
        router.register(name, recorder)
    attempt = Message(P.REQUEST, "thief", "vault", "open", conversation_id="c", reply_with="r")
    await router.send(attempt)
    await router.send(Message(P.REQUEST, "keeper", "vault", "open"))
    assert vault.contents == ["open"]  # only the keeper's
    [refusal] = thief.messages
    assert refusal.performative is P.REFUSE
    assert (refusal.sender, refusal.receiver) == ("vault", "thief")
    assert (refusal.in_reply_to, refusal.conversation_id) == ("r", "c")
    assert refusal.content == {
        "reason": "not-allowed",
        "error": "agent vault does not accept messages from thief",
        "message_id": attempt.message_id,
    }
    assert router.queue_stats()["totals"]["refused"] == 1
    assert router.conversation("c") is None  # a refused message starts nothing


async def test_the_gate_is_a_403_for_senders_that_are_not_here(router: Router) -> None:
    router.gate = only_from("keeper")
    router.register("vault", Recorder())
    with pytest.raises(Forbidden) as info:
        await router.send(Message(P.REQUEST, "client-1", "vault"))
    assert str(info.value) == "agent vault does not accept messages from client-1"
    assert info.value.http_status == 403


async def test_answering_a_refusal_cannot_loop(router: Router) -> None:
    router.gate = only_from("keeper")
    router.register("vault", Recorder())
    router.register(
        "thief",
        lambda m: router.send_nowait(msg("thief", "vault", "again", in_reply_to=m.message_id)),
    )
    await router.send(msg("thief", "vault", "first"))
    assert await router.drain(5) == 0
    [letter] = router.dead_letters()
    assert letter.reason == "not allowed: agent vault does not accept messages from thief"


# -- fan-out ----------------------------------------------------------------------------


async def test_several_receivers_each_get_a_copy(router: Router) -> None:
    b, c = Recorder(), Recorder()
    router.register("b", b)
    router.register("c", c)
    original = Message(P.INFORM, "a", "", "hello", receivers=("b", "c"))
    await router.send(original)
    assert b.messages[0].message_id == f"{original.message_id}.0"
    assert c.messages[0].message_id == f"{original.message_id}.1"
    assert (b.messages[0].receiver, c.messages[0].receiver) == ("b", "c")
    assert b.messages[0].receivers == ()


async def test_fan_out_is_all_or_nothing(router: Router) -> None:
    b = Recorder()
    router.register("b", b)
    with pytest.raises(AgentNotFound, match=r"^Agent not found: ghost$"):
        await router.send(Message(P.INFORM, "a", "", receivers=("b", "ghost")))
    with pytest.raises(ValidationError, match="an agent cannot send a message to itself"):
        await router.send(Message(P.INFORM, "b", "", receivers=("a", "b")))
    with pytest.raises(ValidationError, match="receivers repeat a name"):
        await router.send(Message(P.INFORM, "a", "", receivers=("b", "b")))
    assert b.messages == []


# -- reply_by deadlines -----------------------------------------------------------------


async def test_no_reply_by_reply_by_becomes_a_timeout_failure(router: Router) -> None:
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    request = Message(
        P.REQUEST,
        "a",
        "b",
        "do",
        reply_with="r1",
        conversation_id="c1",
        reply_by=time.time() + 0.05,
    )
    await router.send(request)
    await eventually(lambda: a.messages)
    [failure] = a.messages
    assert failure.performative is P.FAILURE
    assert (failure.sender, failure.receiver) == ("b", "a")
    assert failure.in_reply_to == "r1"
    assert failure.conversation_id == "c1"
    assert failure.content["reason"] == "timeout"
    assert failure.content["error"].startswith("No reply from b by reply_by ")
    assert router.queue_stats()["totals"]["timeouts"] == 1


async def test_a_late_reply_is_dead_lettered_not_delivered(router: Router) -> None:
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    await router.send(Message(P.REQUEST, "a", "b", reply_by=time.time() + 0.03))
    await eventually(lambda: a.messages)
    await router.send(b.messages[0].create_reply(P.INFORM, "too late"))
    assert a.performatives == ["failure"]
    [letter] = router.dead_letters()
    assert letter.reason.startswith("late reply: a had asked for a reply by its reply_by")
    assert letter.message.content == "too late"


async def test_a_reply_after_reply_by_but_before_the_timer_is_late_too() -> None:
    wall = FakeClock(time.time())
    router = Router(node_id="n1", wall_clock=wall)
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    await router.send(Message(P.REQUEST, "a", "b", reply_by=wall.now + 100))
    wall.now += 101  # the deadline passed; its timer (in loop time) has not fired
    await router.send(b.messages[0].create_reply(P.INFORM, "late"))
    assert a.performatives == ["failure"]
    assert router.dead_letters()[0].message.content == "late"
    await router.close()


async def test_a_pending_deadline_is_counted(router: Router) -> None:
    router.register("a", Recorder())
    router.register("b", Recorder())
    await router.send(Message(P.REQUEST, "a", "b", reply_by=time.time() + 60))
    assert router.queue_stats()["awaiting_replies"] == 1


async def test_a_timely_reply_cancels_the_deadline(router: Router) -> None:
    a = Recorder()
    router.register("a", a)
    router.register("b", lambda m: router.send_nowait(m.create_reply(P.INFORM, "on time")))
    await router.send(Message(P.REQUEST, "a", "b", reply_by=time.time() + 60))
    await eventually(lambda: a.messages)
    assert a.contents == ["on time"]
    assert router.queue_stats()["awaiting_replies"] == 0  # settled: no failure will follow


async def test_reply_matched_by_conversation_when_in_reply_to_is_missing(router: Router) -> None:
    a = Recorder()
    router.register("a", a)
    router.register(
        "b", lambda m: router.send_nowait(msg("b", "a", "answer", conversation_id="c9"))
    )
    await router.send(Message(P.REQUEST, "a", "b", conversation_id="c9", reply_by=time.time() + 60))
    await eventually(lambda: a.messages)
    assert a.contents == ["answer"]
    assert router.queue_stats()["awaiting_replies"] == 0


# -- external clients ---------------------------------------------------------------------


async def test_request_waits_for_the_reply(router: Router) -> None:
    router.register("echo", lambda m: router.send_nowait(m.create_reply(P.INFORM, m.content)))
    reply = await router.request(Message(P.REQUEST, "", "echo", {"n": 1}), timeout=5)
    assert reply.performative is P.INFORM
    assert reply.content == {"n": 1}
    assert reply.receiver.startswith("client-")
    assert not router.is_registered(reply.receiver)  # the temporary endpoint is gone


async def test_request_skips_agree_in_fipa_request(router: Router) -> None:
    def worker(message: Message) -> None:
        router.send_nowait(message.create_reply(P.AGREE))
        router.send_nowait(message.create_reply(P.INFORM, "result"))

    router.register("worker", worker)
    reply = await router.request(
        Message(P.REQUEST, "client", "worker", protocol="fipa-request"), timeout=5
    )
    assert (reply.performative, reply.content) == (P.INFORM, "result")


async def test_concurrent_requests_from_one_client_get_their_own_replies(router: Router) -> None:
    async def slow_echo(message: Message) -> None:
        await asyncio.sleep(0.001 * message.content)
        router.send_nowait(message.create_reply(P.INFORM, message.content))

    router.register("echo", slow_echo)
    replies = await asyncio.gather(
        *(router.request(Message(P.REQUEST, "client", "echo", i), timeout=5) for i in range(5))
    )
    assert [r.content for r in replies] == [0, 1, 2, 3, 4]
    assert not router.is_registered("client")


async def test_a_reply_nobody_waits_for_any_more_is_dead_lettered(router: Router) -> None:
    held: list[Message] = []
    router.register("slow", held.append)
    waiting = asyncio.ensure_future(router.request(Message(P.REQUEST, "client", "slow"), 5))
    await eventually(lambda: held)
    with pytest.raises(RequestTimeout):
        await router.request(Message(P.REQUEST, "client", "slow"), timeout=0.01)
    late = held[1].create_reply(P.INFORM, "too late")
    await router.send(late)  # client is still registered: it waits for the first request
    assert router.dead_letters()[0].reason == (
        "undeliverable: client is no longer waiting for a reply"
    )
    await router.send(held[0].create_reply(P.INFORM, "first"))
    assert (await waiting).content == "first"
    assert not router.is_registered("client")


async def test_request_timeout_is_a_504(router: Router) -> None:
    router.register("silent", Recorder())
    message = Message(P.REQUEST, "client", "silent")
    with pytest.raises(RequestTimeout) as info:
        await router.request(message, timeout=0.02)
    assert str(info.value) == (f"No reply from silent within 0.02s to request {message.message_id}")
    assert info.value.http_status == 504
    assert not router.is_registered("client")


async def test_request_errors(router: Router) -> None:
    router.register("agent", Recorder())
    with pytest.raises(AgentNotFound, match=r"^Agent not found: ghost$"):
        await router.request(Message(P.REQUEST, "client", "ghost"), timeout=1)
    assert not router.is_registered("client")
    with pytest.raises(ValidationError, match="is a registered agent"):
        await router.request(Message(P.REQUEST, "agent", "other"), timeout=1)
    with pytest.raises(ValidationError, match="timeout must be positive"):
        await router.request(Message(P.REQUEST, "client", "agent"), timeout=0)
    with pytest.raises(ValidationError, match="waits for one reply"):
        await router.request(Message(P.REQUEST, "c", "", receivers=("agent", "x")), timeout=1)


async def test_close_fails_waiting_requests() -> None:
    router = Router(node_id="n1")
    router.register("silent", Recorder())
    waiting = asyncio.ensure_future(router.request(Message(P.REQUEST, "c", "silent"), 30))
    await eventually(lambda: router.is_registered("c"))
    await router.close()
    with pytest.raises(CaxtonError, match="closed before a reply arrived"):
        await waiting
    with pytest.raises(CaxtonError, match=r"^Router of node n1 is closed$"):
        await router.send(msg())


# -- remote routes --------------------------------------------------------------------------


class FakeRoute:
    def __init__(self, fail: bool = False) -> None:
        self.forwarded: list[Message] = []
        self.fail = fail

    async def forward(self, message: Message) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("peer gone")
        self.forwarded.append(message)


async def test_names_not_here_go_through_the_resolver_in_order(router: Router) -> None:
    route = FakeRoute()
    asked: list[str] = []

    async def resolver(name: str) -> FakeRoute | None:
        asked.append(name)
        return route if name == "remote" else None

    router.resolver = resolver
    router.register("local", Recorder())
    await router.send(msg("a", "remote", 0))
    for i in range(1, 5):
        router.send_nowait(msg("a", "remote", i))
    await router.drain(5)
    assert [m.content for m in route.forwarded] == [0, 1, 2, 3, 4]
    assert "local" not in asked
    assert router.queue_stats()["totals"]["forwarded"] == 5
    with pytest.raises(AgentNotFound, match=r"^Agent not found: nowhere$"):
        await router.send(msg("a", "nowhere"))
    router.send_nowait(msg("a", "nowhere", "lost"))  # cannot wait for the resolver here
    await router.drain(5)
    assert router.dead_letters()[0].reason == "undeliverable: Agent not found: nowhere"


async def test_local_only_never_forwards(router: Router) -> None:
    route = FakeRoute()

    async def resolver(name: str) -> FakeRoute:
        return route

    router.resolver = resolver
    router.register("here", Recorder())
    await router.send(msg("peer", "here"), local_only=True)
    with pytest.raises(AgentNotFound, match=r"^Agent not found: elsewhere$"):
        await router.send(msg("peer", "elsewhere"), local_only=True)
    with pytest.raises(AgentNotFound, match=r"^Agent not found: elsewhere$"):
        router.send_nowait(msg("peer", "elsewhere"), local_only=True)
    await router.drain(5)
    assert route.forwarded == []


async def test_failed_forwarding_is_dead_lettered(router: Router) -> None:
    async def resolver(name: str) -> FakeRoute:
        return FakeRoute(fail=True)

    router.resolver = resolver
    await router.send(msg("a", "remote"))
    await router.drain(5)
    assert router.dead_letters()[0].reason == (
        "delivery error: forwarding to remote failed: peer gone"
    )


# -- conversations and stats ---------------------------------------------------------------


async def test_conversations_are_tracked_and_expire() -> None:
    wall = FakeClock(1_000_000.0)
    router = Router(node_id="n1", conversation_ttl=100, wall_clock=wall)
    router.register("b", Recorder())
    router.register("c", Recorder())
    await router.send(msg("a", "b", conversation_id="talk"))
    wall.now += 10
    await router.send(msg("b", "c", conversation_id="talk"))
    conversation = router.conversation("talk")
    assert conversation is not None
    assert conversation.participants == {"a", "b", "c"}
    assert conversation.message_count == 2
    assert (conversation.protocol, conversation.state, conversation.initiator) == (
        None,
        "active",
        "a",
    )
    assert conversation.started_at == 1_000_000.0
    assert conversation.expires_at == 1_000_110.0
    assert conversation.to_dict()["participants"] == ["a", "b", "c"]
    wall.now += 99
    router.expire()
    assert router.conversation("talk") is not None
    wall.now += 2
    router.expire()
    assert router.conversation("talk") is None
    assert router.conversation("never") is None


async def test_queue_stats_and_drain(router: Router) -> None:
    router.register("b", Recorder())
    router.register("c", Recorder())
    router.hold("c")
    await router.send(msg("a", "c", priority=Priority.HIGH))
    await router.send(msg("a", "b"))
    stats = router.queue_stats()
    assert stats["node_id"] == "n1"
    assert stats["agents"]["c"]["high"] == 1
    assert stats["totals"]["queued"] == 1
    assert stats["totals"]["delivered"] == 1
    light = router.queue_stats(agents=False)
    assert light["agents"] == {}
    assert light["priorities"] == stats["priorities"]
    assert light["total_queued"] == 1
    assert await router.drain(0.01) == 1
    assert await router.drain(5, name="b") == 0
    router.release("c")
    assert await router.drain(5) == 0


def test_invalid_configuration() -> None:
    with pytest.raises(ConfigError, match="expected one of at-most-once, at-least-once"):
        Router(node_id="n", guarantee="exactly-once")
    with pytest.raises(ConfigError, match="needs a durable outbox"):
        Router(node_id="n", guarantee="at-least-once")
    with pytest.raises(ConfigError, match="queue_size: must be at least 1"):
        Router(node_id="n", queue_size=0)
