"""Agents end to end: real wasmtime sandbox, real router, real SQLite store.

The agents are the example agents of examples/agents (fixture ``example_agents``), plus
one timer agent written here in WAT because no example uses timers through JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from caxton import hookimpl
from caxton.agents import Agent, AgentManager, AgentState
from caxton.drivers.sandbox import ResourceLimits
from caxton.errors import (
    AbiMismatch,
    AgentNotFound,
    Conflict,
    InvalidTransition,
    ModuleInvalid,
    ValidationError,
)
from caxton.messaging import Message, Router
from caxton.plugins import PluginHost
from caxton.sandbox.wasmtime_sandbox import WasmtimeSandbox
from caxton.store import Store
from caxton.store.store import StoreError
from caxton.testing import HookRecorder

TIMER_AGENT = """
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (import "caxton" "timer_set" (func $timer_set (param i64 i32) (result i64)))
  (@custom "caxton.abi" "\\01")
  (memory (export "memory") 1)
  (data (i32.const 16) "{\\"performative\\":\\"inform\\","
                       "\\"receiver\\":\\"client\\",\\"content\\":\\"tick\\"}")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init")
    (drop (call $timer_set (i64.const 5) (i32.const 1))))
  (func (export "handle_timer") (param i64)
    (drop (call $send (i32.const 16) (i32.const 62))))
  (func (export "handle_message") (param i32 i32) (result i32) (i32.const 0))
)
"""

ids = itertools.count()


class Client:
    """A Python endpoint on the router, answering ``ask`` with the matching reply."""

    def __init__(self, router: Router, name: str = "client") -> None:
        self.router = router
        self.name = name
        self.inbox: list[Message] = []
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        router.register(name, self._deliver)

    def _deliver(self, message: Message) -> None:
        self.inbox.append(message)
        waiter = self._waiting.pop(message.in_reply_to or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def message(self, receiver: str, content: Any = None, **fields: Any) -> Message:
        fields.setdefault("performative", "request")
        fields.setdefault("conversation_id", f"conv-{next(ids)}")
        return Message(sender=self.name, receiver=receiver, content=content, **fields)

    async def ask(self, receiver: str, content: Any = None, **fields: Any) -> Message:
        message = self.message(receiver, content, **fields)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[message.message_id] = waiter
        await self.router.send(message)
        return await asyncio.wait_for(waiter, 30)

    async def wait_for(self, predicate: Callable[[Message], bool]) -> Message:
        return await eventually(lambda: next((m for m in self.inbox if predicate(m)), None))


async def eventually(probe: Callable[[], Any], attempts: int = 500) -> Any:
    """Poll ``probe`` until it returns something truthy (not a timing assertion)."""
    for _ in range(attempts):
        value = probe()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never became true")


class Node:
    """Sandbox, router, store and manager of one node, restartable on the same files."""

    def __init__(self, data_dir: Path, sandbox: WasmtimeSandbox, **manager_options: Any) -> None:
        self.data_dir = data_dir
        self.sandbox = sandbox
        self.host = PluginHost(use_entry_points=False)
        self.recorder = HookRecorder(self.host)
        self.manager_options = {"restart_backoff": 0.0, **manager_options}
        self.router_options: dict[str, Any] = {}

    async def start(self, **router_options: Any) -> None:
        self.router_options = router_options or self.router_options
        self.store = Store(self.data_dir / "local.db")
        await self.store.open()
        options = dict(self.router_options)
        if options.get("guarantee") == "at-least-once":
            options["outbox"] = self.store
        self.router = Router(node_id="n1", **options)
        self.manager = AgentManager(
            node_id="n1",
            sandbox=self.sandbox,
            router=self.router,
            store=self.store,
            hook=self.host.hook,
            node=self,
            max_agents=self.manager_options.get("max_agents", 100),
            default_limits=ResourceLimits(max_fuel=50_000_000, max_execution_time_ms=2_000),
            limit_ceiling=ResourceLimits(
                max_memory_bytes=512 * 1024 * 1024,
                max_fuel=10_000_000_000,
                max_execution_time_ms=30_000,
            ),
            restart_policy="on-failure",
            restart_max=3,
            **{k: v for k, v in self.manager_options.items() if k != "max_agents"},
        )
        await self.manager.start()
        await self.router.start()
        self.client = Client(self.router)

    async def stop(self) -> None:
        await self.manager.close()
        await self.router.close()
        await self.store.close()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def node(tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox) -> AsyncIterator[Node]:
    node = Node(tmp_path, wasmtime_sandbox)
    await node.start()
    yield node
    await node.stop()


# -- deploy ---------------------------------------------------------------------------


async def test_deploy_starts_the_agent_and_fires_hooks(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy("  echo  ", example_agents["echo"])
    assert agent.name == "echo"
    assert agent.state is AgentState.RUNNING
    data = agent.to_dict()
    assert data["state"] == "running"
    assert data["limits"]["max_fuel"] == 50_000_000
    assert data["counters"]["messages_handled"] == 0
    assert node.manager.get(agent.id) is agent
    assert node.manager.get("echo") is agent
    assert [c.kwargs["new"] for c in node.recorder.calls("caxton_agent_state_changed")] == [
        "ready",
        "running",
    ]
    node.recorder.assert_called("caxton_agent_deployed", times=1, agent=agent)


async def test_deploy_without_start_stays_loaded(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy("echo", example_agents["echo"], start=False)
    assert agent.state is AgentState.LOADED
    with pytest.raises(AgentNotFound):
        await node.client.ask("echo", "hi")
    await node.manager.start_agent("echo")
    assert (await node.client.ask("echo", "hi")).content == "hi"


@pytest.mark.parametrize(
    ("limits", "wording"),
    [
        ({"max_fuel": 0}, "max_fuel must be greater than 0"),
        ({"max_memory_bytes": -1}, "max_memory_bytes must be greater than 0"),
        ({"max_execution_time_ms": 60_000}, "exceeds this node's ceiling of 30000"),
        ({"max_fuel": "lots"}, "must be an integer"),
        ({"max_cpu": 1}, "unknown resource limit 'max_cpu'"),
    ],
)
async def test_limits_are_validated(
    node: Node, example_agents: dict[str, bytes], limits: dict[str, Any], wording: str
) -> None:
    with pytest.raises(ValidationError, match=wording):
        await node.manager.deploy("echo", example_agents["echo"], limits=limits)
    assert node.manager.list() == []


@pytest.mark.parametrize(
    ("name", "wording"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("x" * 65, "limit is 64"),
     ("a\nb", "control characters")],
)  # fmt: skip
async def test_names_are_validated(
    node: Node, example_agents: dict[str, bytes], name: str, wording: str
) -> None:
    with pytest.raises(ValidationError, match=wording):
        await node.manager.deploy(name, example_agents["echo"])


async def test_duplicate_name_is_a_conflict(node: Node, example_agents: dict[str, bytes]) -> None:
    await node.manager.deploy("x" * 64, example_agents["echo"])
    with pytest.raises(Conflict, match="already exists"):
        await node.manager.deploy("x" * 64, example_agents["counter"])


async def test_node_capacity_is_a_conflict(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    node = Node(tmp_path, wasmtime_sandbox, max_agents=2)
    await node.start()
    try:
        await node.manager.deploy("a", example_agents["echo"])
        await node.manager.deploy("b", example_agents["echo"])
        with pytest.raises(Conflict, match="max_agents"):
            await node.manager.deploy("c", example_agents["echo"])
    finally:
        await node.stop()


async def test_bad_modules_are_refused(node: Node, example_agents: dict[str, bytes]) -> None:
    with pytest.raises(ModuleInvalid):
        await node.manager.deploy("junk", b"definitely not wasm")
    with pytest.raises(AbiMismatch, match="ABI"):
        await node.manager.deploy("future", example_agents["future_abi"])
    assert node.manager.list() == []
    assert await node.store.module_count() == 0


async def test_module_bytes_are_stored_once(node: Node, example_agents: dict[str, bytes]) -> None:
    for name in ("e1", "e2", "e3"):
        await node.manager.deploy(name, example_agents["echo"])
    assert await node.store.module_count() == 1
    await node.manager.remove("e1")
    await node.manager.remove("e2")
    assert await node.store.module_count() == 1
    await node.manager.remove("e3")
    assert await node.store.module_count() == 0


# -- messages end to end ----------------------------------------------------------------


async def test_echo_end_to_end(node: Node, example_agents: dict[str, bytes]) -> None:
    await node.manager.deploy("echo", example_agents["echo"])
    request = node.client.message("echo", {"n": 1, "text": "héllo"}, protocol="fipa-request")
    waiter = asyncio.get_running_loop().create_future()
    node.client._waiting[request.message_id] = waiter
    await node.router.send(request)
    reply = await asyncio.wait_for(waiter, 30)
    assert reply.performative == "inform"
    assert reply.sender == "echo"
    assert reply.content == {"n": 1, "text": "héllo"}
    assert reply.conversation_id == request.conversation_id
    assert reply.protocol == "fipa-request"
    assert node.manager.get("echo").counters.messages_handled == 1
    assert node.manager.get("echo").counters.fuel_used > 0
    assert node.manager.memory_bytes("echo") == 65536  # one wasm page
    assert not node.manager.runtime("echo").open_conversations  # answered: nothing in flight


async def test_counter_keeps_its_count_in_kv(node: Node, example_agents: dict[str, bytes]) -> None:
    await node.manager.deploy("counter", example_agents["counter"])
    counts = [(await node.client.ask("counter")).content["count"] for _ in range(3)]
    assert counts == [1, 2, 3]
    assert node.manager.runtime("counter").kv == {b"count": b"3"}


def committed_count(store: Store, agent_id: str) -> bytes | None:
    """The counter's count as committed in SQLite (another connection: no pending rows)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(store.path)) as db:
        row = db.execute(
            "SELECT value FROM agent_kv WHERE agent_id = ? AND key = ?", (agent_id, b"count")
        ).fetchone()
    return None if row is None else bytes(row[0])


async def test_a_reply_after_a_state_change_leaves_once_the_change_is_committed(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy("counter", example_agents["counter"])
    seen: list[tuple[Any, bytes | None]] = []
    deliver = node.client._deliver

    def check(message: Message) -> None:
        seen.append((message.content["count"], committed_count(node.store, agent.id)))
        deliver(message)

    node.router.register("client", check, replace=True)
    replies = await asyncio.gather(*(node.client.ask("counter") for _ in range(20)))
    assert sorted(r.content["count"] for r in replies) == list(range(1, 21))
    # Each reply was delivered when its count (or a later one) was already in SQLite.
    assert all(stored is not None and int(stored) >= count for count, stored in seen)
    assert node.manager.outputs.released == 20


async def test_durability_async_replies_before_the_commit(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    node = Node(tmp_path, wasmtime_sandbox, durability="async")
    await node.start()
    try:
        agent = await node.manager.deploy("counter", example_agents["counter"])
        stored: list[bytes | None] = []
        deliver = node.client._deliver

        def check(message: Message) -> None:
            stored.append(committed_count(node.store, agent.id))
            deliver(message)

        node.router.register("client", check, replace=True)
        reply = await node.client.ask("counter")
        assert reply.content == {"count": 1}
        assert stored == [None]  # delivered while the count was still in the write-behind
        assert node.manager.outputs.released == 0
    finally:
        await node.stop()


async def test_outputs_waiting_for_a_failed_commit_are_dead_lettered(
    node: Node, example_agents: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    await node.manager.deploy("counter", example_agents["counter"])

    async def broken() -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(node.store, "flush", broken)
    await node.router.send(node.client.message("counter"))
    letters = await eventually(node.router.dead_letters)
    assert letters[0].message.receiver == "client"
    assert "not acknowledged: agent counter" in letters[0].reason
    assert "disk full" in letters[0].reason
    assert not node.client.inbox


async def test_contract_net_between_wasm_agents(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    for name, price in (("b1", 120), ("b2", 80), ("b3", 300)):
        await node.manager.deploy(name, example_agents["bidder"])
        await node.router.send(node.client.message(name, {"price": price}, performative="inform"))
    await node.manager.deploy("initiator", example_agents["initiator"])
    await node.router.send(
        node.client.message(
            "initiator", {"bidders": ["b1", "b2", "b3"], "task": "paint", "budget": 150}
        )
    )
    result = await node.client.wait_for(lambda m: m.sender == "initiator")
    assert result.performative == "inform"
    assert result.content == {"winner": "b2", "price": 80}


async def test_legacy_send_message_has_the_agent_as_sender(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    observer = Client(node.router, "observer")
    await node.manager.deploy("old-timer", example_agents["legacy"])
    await node.router.send(node.client.message("old-timer", "go", performative="inform"))
    message = await observer.wait_for(lambda m: True)
    assert message.sender == "old-timer"
    assert message.performative == "inform"


async def test_module_without_handler_answers_not_understood(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy("mute", example_agents["no_handler"])
    reply = await node.client.ask("mute", "hello?")
    assert reply.performative == "not-understood"
    assert agent.state is AgentState.RUNNING
    assert agent.counters.crashes == 0


async def test_timers_fire_and_stop_with_the_agent(node: Node) -> None:
    await node.manager.deploy("ticker", wasmtime.wat2wasm(TIMER_AGENT))
    await node.client.wait_for(lambda m: m.sender == "ticker" and m.content == "tick")
    runtime = node.manager.runtime("ticker")
    assert runtime.timers
    await node.manager.stop_agent("ticker")
    assert not runtime.timers
    fired = node.manager.get("ticker").counters.timers_fired
    assert fired >= 1
    await asyncio.sleep(0.05)
    assert node.manager.get("ticker").counters.timers_fired == fired


# -- lifecycle ----------------------------------------------------------------------------


async def test_suspend_holds_messages_until_resume(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    await node.manager.deploy("counter", example_agents["counter"])
    await node.manager.suspend("counter")
    pending = asyncio.ensure_future(node.client.ask("counter"))
    await asyncio.sleep(0.05)
    assert not pending.done()
    await node.manager.resume("counter")
    assert (await pending).content == {"count": 1}


async def test_invalid_transitions_name_state_and_operation(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    await node.manager.deploy("echo", example_agents["echo"])
    with pytest.raises(InvalidTransition, match="cannot start agent 'echo': it is running"):
        await node.manager.start_agent("echo")
    with pytest.raises(InvalidTransition, match="cannot resume agent 'echo': it is running"):
        await node.manager.resume("echo")
    await node.manager.stop_agent("echo")
    with pytest.raises(InvalidTransition, match="cannot suspend agent 'echo': it is stopped"):
        await node.manager.suspend("echo")
    with pytest.raises(InvalidTransition, match="cannot stop agent 'echo': it is stopped"):
        await node.manager.stop_agent("echo")
    with pytest.raises(AgentNotFound, match="Agent not found: ghost"):
        await node.manager.stop_agent("ghost")


async def test_stopped_agent_gets_no_messages_and_restarts_with_its_kv(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    await node.manager.deploy("counter", example_agents["counter"])
    await node.client.ask("counter")
    await node.manager.stop_agent("counter")
    with pytest.raises(AgentNotFound):
        await node.client.ask("counter")
    await node.manager.start_agent("counter")
    assert (await node.client.ask("counter")).content == {"count": 2}


async def test_remove_deletes_record_kv_and_frees_the_name(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy("counter", example_agents["counter"])
    await node.client.ask("counter")
    await node.manager.remove("counter")
    node.recorder.assert_called("caxton_agent_removed", times=1, agent=agent)
    assert await node.store.load_agents() == []
    assert await node.store.load_kv(agent.id) == {}
    with pytest.raises(AgentNotFound):
        node.manager.get("counter")
    again = await node.manager.deploy("counter", example_agents["counter"])
    assert (await node.client.ask("counter")).content == {"count": 1}
    assert again.id != agent.id


async def test_emergency_stop_all(node: Node, example_agents: dict[str, bytes]) -> None:
    for name in ("a", "b", "c"):
        await node.manager.deploy(name, example_agents["echo"])
    await node.manager.suspend("b")
    await node.manager.deploy("d", example_agents["echo"], start=False)
    assert await node.manager.emergency_stop_all() == 3
    states = {a.name: a.state for a in node.manager.list()}
    assert states == {"a": "stopped", "b": "stopped", "c": "stopped", "d": "loaded"}
    assert not node.router.is_registered("a")


async def test_hot_swap_keeps_kv_and_identity(node: Node, example_agents: dict[str, bytes]) -> None:
    agent = await node.manager.deploy("worker", example_agents["counter"])
    await node.client.ask("worker")
    await node.client.ask("worker")
    await node.manager.update("worker", wasm=example_agents["echo"])
    assert node.manager.runtime("worker").kv == {b"count": b"2"}
    assert (await node.client.ask("worker", "hi")).content == "hi"
    await node.manager.update(
        "worker", wasm=example_agents["counter"], limits={"max_fuel": 7_000_000}
    )
    assert (await node.client.ask("worker")).content == {"count": 3}
    assert node.manager.get("worker") is agent
    assert agent.limits.max_fuel == 7_000_000
    assert agent.state is AgentState.RUNNING
    assert await node.store.module_count() == 1  # the echo module was collected
    states = [c.kwargs["new"] for c in node.recorder.calls("caxton_agent_state_changed")]
    assert states[-2:] == ["draining", "running"]


async def test_hot_swap_drains_in_flight_conversations(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    await node.manager.deploy("bidder", example_agents["bidder"])
    cfp = node.client.message("bidder", {"budget": 500}, performative="cfp")
    proposal = await node.client.ask("bidder", cfp.content, performative="cfp",
                                     conversation_id="deal-1")  # fmt: skip
    assert proposal.performative == "propose"
    runtime = node.manager.runtime("bidder")
    assert "deal-1" in runtime.open_conversations
    update = asyncio.ensure_future(
        node.manager.update("bidder", limits={"max_fuel": 9_000_000}, drain_timeout=30)
    )
    await eventually(lambda: node.manager.get("bidder").state is AgentState.DRAINING)
    old_instance = runtime.instance
    # A new conversation waits; the in-flight one still reaches the old instance.
    newcomer = asyncio.ensure_future(node.client.ask("bidder", {"budget": 1}, performative="cfp"))
    await asyncio.sleep(0.02)
    assert not newcomer.done()
    done = await node.client.ask(
        "bidder", {"price": 100}, performative="accept-proposal", conversation_id="deal-1"
    )
    assert done.performative == "inform"
    await update
    assert runtime.instance is not old_instance
    assert (await newcomer).performative == "refuse"
    assert node.manager.get("bidder").state is AgentState.RUNNING


async def test_failed_swap_keeps_the_old_instance(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    await node.manager.deploy("echo", example_agents["echo"])
    with pytest.raises(AbiMismatch):
        await node.manager.update("echo", wasm=example_agents["future_abi"])
    assert node.manager.get("echo").state is AgentState.RUNNING
    assert (await node.client.ask("echo", 1)).content == 1


# -- failures and the restart policy ---------------------------------------------------


async def test_trapping_agent_restarts_then_fails(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy("trap", example_agents["trap"])
    for attempt in range(1, 4):
        reply = await node.client.ask("trap", attempt)
        assert reply.performative == "failure"
        assert "unreachable" in reply.content
        await eventually(lambda n=attempt: agent.counters.restarts == n)
        assert agent.state is AgentState.RUNNING
    reply = await node.client.ask("trap", 4)
    assert reply.performative == "failure"
    assert agent.state is AgentState.FAILED
    assert agent.counters.crashes == 4
    assert agent.counters.traps == 4
    assert "unreachable" in (agent.last_error or "")
    crashes = node.recorder.calls("caxton_agent_crashed")
    assert [c.kwargs["reason"] for c in crashes] == ["trap"] * 4
    with pytest.raises(AgentNotFound):
        await node.client.ask("trap", 5)
    # An operator can try again: start resets the streak.
    await node.manager.start_agent("trap")
    assert agent.state is AgentState.RUNNING


async def test_restart_policy_never(node: Node, example_agents: dict[str, bytes]) -> None:
    agent = await node.manager.deploy(
        "trap", example_agents["trap"], restart_policy={"policy": "never"}
    )
    reply = await node.client.ask("trap", 1)
    assert reply.performative == "failure"
    assert agent.state is AgentState.FAILED
    assert agent.counters.restarts == 0


@pytest.mark.parametrize(
    ("example", "limits", "reason", "wording", "counter"),
    [
        ("infinite_loop", {"max_fuel": 1_000_000}, "fuel", "fuel exhausted (CPU limit reached)",
         "fuel_exhausted"),
        ("infinite_loop", {"max_fuel": 10_000_000_000, "max_execution_time_ms": 100}, "timeout",
         "Execution timeout after 100ms", "timeouts"),
        ("memory_bomb", {"max_memory_bytes": 1024 * 1024}, "memory", "memory limit exceeded",
         "memory_exceeded"),
        ("deep_recursion", {}, "trap", "stack overflow", "traps"),
    ],
)  # fmt: skip
async def test_runaway_agent_does_not_stop_the_others(
    node: Node,
    example_agents: dict[str, bytes],
    example: str,
    limits: dict[str, int],
    reason: str,
    wording: str,
    counter: str,
) -> None:
    await node.manager.deploy("echo", example_agents["echo"])
    runaway = await node.manager.deploy("runaway", example_agents[example], limits=limits)
    reply = await node.client.ask("runaway", "go")
    assert reply.performative == "failure"
    assert wording in reply.content
    assert getattr(runaway.counters, counter) == 1
    node.recorder.assert_called("caxton_agent_crashed", times=1, reason=reason)
    assert (await node.client.ask("echo", "still here")).content == "still here"
    await eventually(lambda: runaway.counters.restarts == 1)
    assert (await node.client.ask("runaway", "again")).performative == "failure"


async def test_a_broken_hook_plugin_does_not_break_agents(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    class Broken:
        @hookimpl
        def caxton_agent_state_changed(self, node: Any, agent: Agent, old: str, new: str) -> None:
            raise RuntimeError("plugin bug")

    node.host.register(Broken())
    await node.manager.deploy("echo", example_agents["echo"])
    assert (await node.client.ask("echo", 1)).content == 1


# -- persistence ---------------------------------------------------------------------------


async def test_agents_and_kv_survive_a_manager_restart(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    counter = await node.manager.deploy("counter", example_agents["counter"])
    await node.manager.deploy("paused", example_agents["echo"])
    await node.manager.suspend("paused")
    await node.manager.deploy("off", example_agents["echo"])
    await node.manager.stop_agent("off")
    await node.client.ask("counter")
    await node.client.ask("counter")
    await node.restart()
    restored = {a.name: a for a in node.manager.list()}
    assert {n: a.state for n, a in restored.items()} == {
        "counter": "running",
        "paused": "suspended",
        "off": "stopped",
    }
    assert restored["counter"].id == counter.id
    assert restored["counter"].counters.messages_handled == 2
    assert (await node.client.ask("counter")).content == {"count": 3}


async def test_durable_messages_are_replayed_after_restart(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    node = Node(tmp_path, wasmtime_sandbox)
    await node.start(guarantee="at-least-once")
    try:
        await node.manager.deploy("counter", example_agents["counter"])
        await node.manager.suspend("counter")
        for _ in range(2):
            await node.router.send(node.client.message("counter", performative="inform"))
        assert len(await node.store.pending()) == 2
        await node.restart()
        assert node.manager.get("counter").state is AgentState.SUSPENDED
        await node.manager.resume("counter")
        await eventually(lambda: node.manager.runtime("counter").kv.get(b"count") == b"2")
        # The counter's replies are durable too: they leave after its state is committed,
        # so poll the store until they are acknowledged as well.
        for _ in range(500):
            if await node.store.pending() == []:
                break
            await asyncio.sleep(0.01)
        assert await node.store.pending() == []
    finally:
        await node.stop()


def test_limits_of_a_restored_agent_are_the_deployed_ones() -> None:
    limits = ResourceLimits(max_fuel=123)
    agent = Agent(id="i", name="n", module_sha256="s", limits=limits)
    restored = Agent.from_row(
        agent.to_row(), node_id="n1", default_policy=dataclasses.replace(agent.restart_policy)
    )
    assert restored.limits == limits
    assert restored.to_dict() == {**agent.to_dict(), "node_id": "n1"}


async def test_agent_whose_module_is_gone_comes_back_failed(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy("echo", example_agents["echo"])
    await node.manager.close()
    await node.store.connection.execute("DELETE FROM modules")
    await node.router.close()
    await node.store.close()
    await node.start()
    restored = node.manager.get("echo")
    assert restored.id == agent.id
    assert restored.state is AgentState.FAILED
    assert "missing from the state store" in (restored.last_error or "")
    with pytest.raises(Conflict, match="update the agent with its wasm"):
        await node.manager.start_agent("echo")
    await node.manager.update("echo", wasm=example_agents["echo"])
    await node.manager.start_agent("echo")
    assert (await node.client.ask("echo", "back")).content == "back"


# -- the host API, called as the sandbox calls it ------------------------------------------


async def test_host_api_codes_and_sender(node: Node, example_agents: dict[str, bytes]) -> None:
    from caxton.sandbox.abi import Status

    await node.manager.deploy("echo", example_agents["echo"])
    runtime = node.manager.runtime("echo")
    assert runtime.send(b"not json") == Status.INVALID
    assert runtime.send(b"[1, 2]") == Status.INVALID
    assert runtime.send(b'{"performative": "shout", "receiver": "client"}') == Status.INVALID
    assert runtime.send(b'{"performative": "inform", "receiver": "nobody"}') == Status.NOT_FOUND
    forged = b'{"performative": "inform", "receiver": "client", "sender": "admin", "content": 7}'
    assert runtime.send(forged) == Status.OK
    message = await node.client.wait_for(lambda m: m.content == 7)
    assert message.sender == "echo"
    assert runtime.reply(b'{"performative": "inform"}') == Status.NOT_FOUND  # nothing to answer
    assert runtime.legacy_send("client", b"plain text") == Status.OK
    assert (await node.client.wait_for(lambda m: m.content == "plain text")).sender == "echo"
    assert len(runtime.random_bytes(16)) == 16
    assert runtime.now_us() > 1_600_000_000_000_000


async def test_kv_limits_and_namespaces(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    from caxton.sandbox.abi import Status

    node = Node(tmp_path, wasmtime_sandbox, kv_quota_bytes=100, kv_max_value_bytes=50)
    await node.start()
    try:
        await node.manager.deploy("a", example_agents["echo"])
        await node.manager.deploy("b", example_agents["echo"])
        a, b = node.manager.runtime("a"), node.manager.runtime("b")
        assert a.kv_store(b"k", b"x" * 51) == Status.TOO_LARGE
        assert a.kv_store(b"k" * 1025, b"x") == Status.TOO_LARGE
        assert a.kv_store(b"k", b"x" * 50) == Status.OK
        assert a.kv_store(b"k2", b"x" * 50) == Status.DENIED  # 1+50 + 2+50 > 100
        assert a.kv_store(b"k", b"y" * 40) == Status.OK  # replacing frees the old value
        assert a.kv_load(b"k") == b"y" * 40
        assert b.kv_load(b"k") is None
        assert a.kv_delete(b"missing") == Status.NOT_FOUND
        assert a.kv_delete(b"k") == Status.OK
        assert a.kv_bytes == 0
        await node.store.flush()
        assert await node.store.load_kv(a.agent.id) == {}
    finally:
        await node.stop()


async def test_timer_codes(node: Node, example_agents: dict[str, bytes]) -> None:
    from caxton.sandbox.abi import Status

    await node.manager.deploy("echo", example_agents["echo"])
    runtime = node.manager.runtime("echo")
    timer = runtime.set_timer(60_000, False)
    assert timer > 0
    assert runtime.set_timer(-1, False) == Status.INVALID
    assert runtime.cancel_timer(timer) == Status.OK
    assert runtime.cancel_timer(timer) == Status.NOT_FOUND


async def test_suspend_while_a_restart_is_pending(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    agent = await node.manager.deploy(
        "trap", example_agents["trap"], restart_policy={"backoff": 0.5}
    )
    assert (await node.client.ask("trap", 1)).performative == "failure"
    runtime = node.manager.runtime("trap")
    await node.manager.suspend("trap")
    assert runtime.restart_handle is not None  # the restart is still waiting
    await eventually(lambda: agent.counters.restarts == 1)
    assert agent.state is AgentState.SUSPENDED
    assert runtime.instance is not None  # re-created while suspended
    pending = asyncio.ensure_future(node.client.ask("trap", 2))
    await node.manager.resume("trap")
    assert (await pending).performative == "failure"
    assert agent.counters.crashes == 2


async def test_agent_logs_go_to_the_node_log_with_the_agent_name(
    node: Node, example_agents: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="caxton.agent")
    await node.manager.deploy("mute", example_agents["no_handler"])  # logs in agent_init
    [record] = [r for r in caplog.records if r.name == "caxton.agent"]
    assert record.getMessage() == "[mute] no_handler started"
    assert record.levelno == logging.INFO
    assert record.agent == "mute"  # type: ignore[attr-defined]
    node.manager.runtime("mute").log(4, "boom")
    assert caplog.records[-1].levelno == logging.ERROR


async def test_kv_writes_of_a_burst_share_one_commit(
    node: Node, example_agents: dict[str, bytes]
) -> None:
    await node.manager.deploy("counter", example_agents["counter"])
    await node.store.flush()
    commits = node.store.commits
    for _ in range(200):  # delivered inline: no await between the messages
        node.router.send_nowait(node.client.message("counter", performative="inform"))
    assert node.manager.runtime("counter").kv == {b"count": b"200"}
    await node.store.flush()
    assert node.store.commits - commits == 1
    assert await node.store.load_kv(node.manager.get("counter").id) == {b"count": b"200"}


PLUGIN_AGENT = """
(module
  (import "demo" "add" (func $add (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (call $add (i32.const 40) (i32.const 2)))
)
"""


async def test_an_agent_that_cannot_come_back_does_not_keep_the_node_down(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    from caxton.drivers.sandbox import HostFunction

    add = HostFunction("demo", "add", ("i32", "i32"), ("i32",), lambda call, a, b: a + b)
    node = Node(tmp_path, wasmtime_sandbox, extra_functions=[add])
    await node.start()
    try:
        await node.manager.deploy("plugged", wasmtime.wat2wasm(PLUGIN_AGENT))
        await node.manager.deploy("echo", example_agents["echo"])
        del node.manager_options["extra_functions"]  # the plugin is gone after the restart
        await node.restart()
        plugged = node.manager.get("plugged")
        assert plugged.state is AgentState.FAILED
        assert "demo.add" in (plugged.last_error or "")
        assert (await node.client.ask("echo", "up")).content == "up"
    finally:
        await node.stop()


async def test_concurrent_deploys_of_a_new_module_compile_it_once(
    node: Node, example_agents: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    compile_module = node.sandbox.compile

    def counting(wasm: bytes) -> Any:
        calls.append(len(wasm))
        return compile_module(wasm)

    monkeypatch.setattr(node.sandbox, "compile", counting)
    agents = await asyncio.gather(
        *(node.manager.deploy(f"c{i}", example_agents["counter"]) for i in range(20))
    )
    assert len(calls) == 1
    assert {a.state for a in agents} == {AgentState.RUNNING}
    with pytest.raises(ModuleInvalid):
        await asyncio.gather(*(node.manager.deploy(f"bad{i}", b"\0asm junk") for i in range(3)))
