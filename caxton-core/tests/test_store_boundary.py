"""What cannot be stored is refused at the boundary, and one bad row never fails or
loses its neighbours' writes (issue 13, item 1)."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from caxton.node import Node
from caxton.store import Store
from caxton.testing import NodeFactory
from caxton.text import text_problem


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    async with caxton_node_factory.node() as node:
        yield node


async def post(http: aiohttp.ClientSession, path: str, raw: str) -> tuple[int, Any]:
    async with http.post(
        path, data=raw.encode(), headers={"Content-Type": "application/json"}
    ) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def test_a_poisoned_deploy_fails_alone(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    module = base64.b64encode(example_agents["echo"]).decode()

    def body(name: str) -> str:  # the lone surrogate travels as a JSON escape
        return f'{{"name": "{name}", "wasm_module": "{module}"}}'

    results = await asyncio.gather(
        *(post(http, "/api/v1/agents", body(f"good-{i}")) for i in range(20)),
        post(http, "/api/v1/agents", body("x\\ud800")),
    )
    statuses = [status for status, _ in results]
    assert statuses[:20] == [201] * 20, results
    assert statuses[20] == 400, results[20]
    assert "surrogate" in results[20][1]["error"] + results[20][1].get("details", "")
    await node.store.flush()
    stored = {record["name"] for record in await node.store.load_agents()}
    assert stored == {f"good-{i}" for i in range(20)}


async def test_a_message_field_that_cannot_be_stored_is_refused(
    node: Node, http: aiohttp.ClientSession
) -> None:
    for field in ("sender", "conversation_id", "reply_with"):
        raw = (
            '{"performative": "inform", "sender": "client", "receiver": "nobody",'
            f' "content": "hi", "{field}": "a\\udfffb"}}'
        )
        status, answer = await post(http, "/api/v1/messages", raw)
        assert status == 400, answer
        assert "surrogate" in answer["details"]


def test_message_names_refuse_nul_and_lone_surrogates() -> None:
    from caxton.errors import ValidationError
    from caxton.messaging import Message

    base = {"performative": "inform", "sender": "a", "receiver": "b"}
    for field, value, words in (
        ("sender", "a\x00b", "NUL"),
        ("receiver", "\ud800", "surrogate"),
        ("conversation_id", "c\x00", "NUL"),
        ("in_reply_to", "x\udc80", "surrogate"),
        ("message_id", "m\ud800", "surrogate"),
    ):
        with pytest.raises(ValidationError, match=words):
            Message.from_dict({**base, field: value})
    assert Message.from_dict({**base, "sender": "agent-é-日本"}).sender == "agent-é-日本"


async def test_one_row_that_cannot_be_stored_costs_only_itself(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    await store.open()
    try:
        store.kv_put("good-1", b"k", b"v1")
        store.kv_put("bad-\ud800", b"k", b"v")  # what the boundary checks keep out
        store.save_conversations([conversation("c-1")])
        store.put_placement("a-1", "a", 1)
        store.put_placement("bad-\udfff", "b", 1)  # a plugin's own statement, say
        store.kv_put("good-2", b"k", b"v2")
        await store.flush()  # a barrier: the good rows are committed, it does not fail
        assert await store.load_all_kv() == {"good-1": {b"k": b"v1"}, "good-2": {b"k": b"v2"}}
        assert [c["conversation_id"] for c in await store.load_conversations()] == ["c-1"]
        assert await store.load_placements() == {"a-1": 1}
        assert store.rows_skipped == 2
        store.kv_put("good-3", b"k", b"v3")  # the writer goes on
        await store.flush()
        assert (await store.load_kv("good-3")) == {b"k": b"v3"}
    finally:
        await store.close()


def conversation(cid: str, **changes: Any) -> dict[str, Any]:
    return {
        "conversation_id": cid,
        "protocol": "fipa-request",
        "participants": ["a", "b"],
        "state": "requested",
        "active": True,
        "started_at": 1.0,
        "updated_at": 2.0,
        "initiator": "a",
        "roles": {"a": "initiator"},
        "message_count": 1,
        "ttl": 60.0,
        **changes,
    }


# -- a stateful test: arbitrary text, arbitrary interleavings ---------------------------

_TEXT = st.text(min_size=1, max_size=8)
#: Any text, often with a lone surrogate or a NUL in it.
ANY_TEXT = st.one_of(
    _TEXT,
    st.builds(
        lambda a, odd, b: a + odd + b,
        _TEXT,
        st.sampled_from(["\ud800", "\udfff", "\udc80", "\x00"]),
        _TEXT,
    ),
)


def storable(text: str) -> bool:
    return text_problem(text) is None


class StoreMachine(RuleBasedStateMachine):
    """The store against a model: a write that cannot be stored is left out, and every
    other write, queued before or after it in any order, is committed."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = tempfile.TemporaryDirectory()
        self.store = Store(Path(self.directory.name) / "s.db", flush_interval=0.0005)
        self.loop.run_until_complete(self.store.open())
        self.kv: dict[tuple[str, bytes], bytes] = {}
        self.conversations: dict[str, str] = {}

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @rule(agent=ANY_TEXT, key=st.binary(min_size=1, max_size=4), value=st.binary(max_size=8))
    def put(self, agent: str, key: bytes, value: bytes) -> None:
        self.store.kv_put(agent, key, value)
        if storable(agent):
            self.kv[(agent, key)] = value

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        if not self.kv:
            return
        agent, key = data.draw(st.sampled_from(sorted(self.kv)))
        self.store.kv_delete(agent, key)
        del self.kv[(agent, key)]

    @rule(cid=ANY_TEXT, state=ANY_TEXT)
    def converse(self, cid: str, state: str) -> None:
        self.store.save_conversations([conversation(cid, state=state)])
        if storable(cid) and storable(state):
            self.conversations[cid] = state
        elif storable(cid):
            # the bad row is left out: what was committed for cid before stays
            pass

    @rule(steps=st.integers(0, 3))
    def let_the_writer_run(self, steps: int) -> None:
        for _ in range(steps):
            self.run(asyncio.sleep(0.001))

    @rule()
    def flush(self) -> None:
        self.run(self.store.flush())

    @invariant()
    def committed_state_matches_the_model(self) -> None:
        self.run(self.store.flush())
        stored = self.run(self.store.load_all_kv())
        assert {(a, k): v for a, kv in stored.items() for k, v in kv.items()} == self.kv
        kept = {c["conversation_id"]: c["state"] for c in self.run(self.store.load_conversations())}
        for cid, state in self.conversations.items():
            assert kept.get(cid) == state or not storable(state)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()
        self.directory.cleanup()


StoreMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_with_arbitrary_text_and_interleavings = StoreMachine.TestCase
