"""At-least-once delivery through the real SQLite store (caxton.store.Store)."""

from __future__ import annotations

from pathlib import Path

from caxton.messaging import DurableOutbox, Message, Performative, Router
from caxton.store.store import Store
from caxton.testing.messaging import DurableOutboxConformance, Recorder


def durable_router(store: Store) -> Router:
    return Router(node_id="n1", guarantee="at-least-once", outbox=store, cleanup_interval=0)


async def test_undelivered_messages_survive_a_restart_through_sqlite(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db")
    await store.open()
    router = durable_router(store)
    first = Recorder()
    router.register("b", first)
    await router.start()
    await router.send(Message(Performative.INFORM, "a", "b", "delivered"))
    router.hold("b")
    held = [Message(Performative.INFORM, "a", "b", i, conversation_id="c") for i in range(3)]
    for message in held:
        await router.send(message)  # returns once committed
    assert first.contents == ["delivered"]
    await router.close()
    await store.close()

    reopened = Store(tmp_path / "local.db")
    await reopened.open()
    assert [m.content for m in await reopened.pending()] == [0, 1, 2]
    restarted = durable_router(reopened)
    second = Recorder()
    restarted.register("b", second)
    await restarted.start()
    await restarted.drain(5)
    assert second.contents == [0, 1, 2]
    assert [m.message_id for m in second.messages] == [m.message_id for m in held]
    # a retransmission of an already delivered message is dropped by its id
    await restarted.send(Message.from_json(held[0].to_json()))
    assert second.contents == [0, 1, 2]
    assert restarted.queue_stats()["totals"]["duplicates"] == 1
    await restarted.close()
    assert await reopened.pending() == []
    await reopened.close()


async def test_conversations_survive_a_restart_through_sqlite(tmp_path: Path) -> None:
    """A fipa-request conversation half done before a restart continues after it: the
    restored protocol state accepts the inform and still refuses what is out of turn."""
    clock = [1000.0]
    store = Store(tmp_path / "local.db")
    await store.open()
    router = Router(node_id="n1", conversation_store=store, wall_clock=lambda: clock[0])
    for name in ("a", "b"):
        router.register(name, Recorder())
    await router.start()
    for performative, sender, receiver in (("request", "a", "b"), ("agree", "b", "a")):
        await router.send(
            Message(Performative.parse(performative), sender, receiver,
                    conversation_id="c1", protocol="fipa-request")
        )  # fmt: skip
    await router.send(Message(Performative.INFORM, "a", "b", conversation_id="idle"))
    await router.close()
    await store.close()

    clock[0] += 1800.0  # half the default ttl later
    reopened = Store(tmp_path / "local.db")
    await reopened.open()
    restarted = Router(node_id="n1", conversation_store=reopened, wall_clock=lambda: clock[0])
    got = Recorder()
    restarted.register("a", got)
    restarted.register("b", Recorder())
    await restarted.start()
    conversation = restarted.conversation("c1")
    assert conversation is not None
    assert (conversation.protocol, conversation.initiator) == ("fipa-request", "a")
    assert conversation.roles == {"b": "agreed"}
    assert conversation.message_count == 2
    assert conversation.participants == {"a", "b"}
    # a second agree is out of turn: b is told so, a never sees it
    await restarted.send(
        Message(Performative.AGREE, "b", "a", conversation_id="c1", protocol="fipa-request")
    )
    assert got.messages == []
    assert restarted.queue_stats()["totals"]["not_understood"] == 1
    await restarted.send(
        Message(Performative.INFORM, "b", "a", conversation_id="c1", protocol="fipa-request")
    )
    assert got.performatives == ["inform"]
    assert restarted.conversation("c1").state == "done"  # type: ignore[union-attr]

    clock[0] += 3600.0  # every conversation idle past its ttl: forgotten, in SQLite too
    restarted.expire()
    await restarted.close()
    assert await reopened.load_conversations() == []
    await reopened.close()


class TestStoreOutbox(DurableOutboxConformance):
    """The SQLite store is the outbox the router relies on."""

    async def open_outbox(self, path: Path) -> Store:
        store = Store(path / "local.db")
        await store.open()
        return store

    async def close_outbox(self, outbox: DurableOutbox) -> None:
        assert isinstance(outbox, Store)
        await outbox.close()
