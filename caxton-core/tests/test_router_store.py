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


class TestStoreOutbox(DurableOutboxConformance):
    """The SQLite store is the outbox the router relies on."""

    async def open_outbox(self, path: Path) -> Store:
        store = Store(path / "local.db")
        await store.open()
        return store

    async def close_outbox(self, outbox: DurableOutbox) -> None:
        assert isinstance(outbox, Store)
        await outbox.close()
