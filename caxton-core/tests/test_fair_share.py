"""Fair share between agents (issue 13, item 3): heavy agents run off the event loop,
take turns, and delay only themselves; the pump gives every ready mailbox its turn.

Deterministic: the tests count turns and look at their order and at which thread ran
them, never at how long anything took. A ``grinder`` agent burns more than
:data:`~caxton.agents.offload.HEAVY_FUEL` fuel when ``demo.grind`` says so, then calls
``demo.turn``, which records the turn and can hold the call (a gate) for as long as a
test needs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import wasmtime
from test_agents import Node, eventually

from caxton.agents.offload import HEAVY_FUEL, LIGHT_CALLS_TO_RETURN
from caxton.drivers.sandbox import HostCall, HostFunction
from caxton.messaging import Message, Router
from caxton.sandbox.wasmtime_sandbox import WasmtimeSandbox

REPLY = '{"performative":"inform","content":"ground"}'
GRINDER = """
(module
  (import "demo" "grind" (func $grind (result i32)))
  (import "demo" "turn" (func $turn))
  (import "demo" "where" (func $where))
  (import "caxton" "reply" (func $reply (param i32 i32) (result i32)))
  (@custom "caxton.abi" "\\01")
  (memory (export "memory") 1)
  (data (i32.const 16) "REPLY")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (local $i i32)
    (if (call $grind)
      (then
        (local.set $i (i32.const ITERATIONS))
        (loop $burn
          (local.set $i (i32.sub (local.get $i) (i32.const 1)))
          (br_if $burn (local.get $i)))))
    (call $turn)
    (call $where)
    (drop (call $reply (i32.const 16) (i32.const LENGTH)))
    (i32.const 0))
)
""".replace("REPLY", REPLY.replace('"', '\\"')).replace("LENGTH", str(len(REPLY)))
GRINDER = GRINDER.replace(
    "ITERATIONS", str(HEAVY_FUEL // 2)
)  # a few fuel per iteration: over HEAVY_FUEL


class Demo:
    """The grinders' host functions: whether to burn fuel, and a record of turns."""

    def __init__(self) -> None:
        self.grind = 1
        self.turns: list[tuple[str, int]] = []  # (agent, thread ident)
        self.where: list[int] = []  # threads of a plugin function that is not thread-safe
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()  # a call is held at the gate

    def functions(self) -> list[HostFunction]:
        def grind(call: HostCall) -> int:
            return self.grind

        def turn(call: HostCall) -> None:
            self.turns.append((call.agent_name, threading.get_ident()))
            if not self.gate.is_set():
                self.waiting.set()
                assert self.gate.wait(30), "the test never opened the gate"

        def where(call: HostCall) -> None:
            self.where.append(threading.get_ident())

        return [
            HostFunction("demo", "where", (), (), where),
            HostFunction("demo", "grind", (), ("i32",), grind, thread_safe=True),
            HostFunction("demo", "turn", (), (), turn, thread_safe=True),
        ]

    def order(self) -> list[str]:
        return [agent for agent, _ in self.turns]


@pytest.fixture
def demo() -> Demo:
    return Demo()


@pytest.fixture
async def node(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, demo: Demo
) -> AsyncIterator[Node]:
    node = Node(tmp_path, wasmtime_sandbox, extra_functions=demo.functions(), worker_threads=1)
    await node.start()
    yield node
    demo.gate.set()
    await node.stop()


async def heavy_grinder(node: Node, name: str) -> None:
    """Deploy a grinder and make it heavy: its first call, inline, burns the fuel."""
    await node.manager.deploy(name, wasmtime.wat2wasm(GRINDER))
    await node.client.ask(name)  # answered by its "ground" inform
    assert node.manager.runtime(name).heavy


async def test_a_heavy_call_runs_on_a_worker_while_echo_answers(
    node: Node, demo: Demo, example_agents: dict[str, bytes]
) -> None:
    await node.manager.deploy("echo", example_agents["echo"])
    await heavy_grinder(node, "grinder")
    assert demo.turns[0][1] == threading.get_ident()  # the first call ran inline
    demo.gate.clear()
    node.router.send_nowait(node.client.message("grinder"))
    await asyncio.get_running_loop().run_in_executor(None, demo.waiting.wait, 30)
    # the grinder's call is held on its worker: the loop serves echo meanwhile
    for i in range(100):
        assert (await node.client.ask("echo", i)).content == i
    assert node.manager.get("grinder").counters.messages_handled == 1
    assert demo.turns[1][1] != threading.get_ident()
    assert demo.where == [threading.get_ident()]  # a plugin function runs on the loop
    demo.gate.set()
    await eventually(lambda: node.manager.get("grinder").counters.messages_handled == 2)
    # what it sent from the worker went through the loop, in order, to the client
    await eventually(lambda: sum(m.content == "ground" for m in node.client.inbox) == 2)
    assert demo.where == [threading.get_ident()] * 2
    assert node.manager.off_loop is not None
    assert node.manager.off_loop.calls == 1


async def test_heavy_agents_take_turns_whatever_their_backlog(node: Node, demo: Demo) -> None:
    for name in ("a", "b", "c"):
        await heavy_grinder(node, name)
    demo.turns.clear()
    for _ in range(30):  # a floods first
        node.router.send_nowait(node.client.message("a"))
    for name in ("b", "c"):
        for _ in range(3):
            node.router.send_nowait(node.client.message(name))
    await eventually(lambda: len(demo.turns) == 36, attempts=3000)
    order = demo.order()
    # one call per agent per round on the single worker: b and c are done by a's 4th
    assert order[:9] == ["a", "b", "c"] * 3
    assert order[9:] == ["a"] * 27


async def test_a_sender_flooding_an_inline_agent_delays_only_that_agent() -> None:
    """The pump: a mailbox's turn ends after ``turn_time`` of deliveries; the next ready
    mailbox goes next, and the flooded one waits at the back of the round."""
    now = [0.0]
    order: list[str] = []

    def agent(name: str, cost: float) -> Callable[[Message], None]:
        def deliver(message: Message) -> None:
            order.append(name)
            now[0] += cost

        return deliver

    router = Router(node_id="n1", direct_delivery=False, turn_time=0.001, clock=lambda: now[0])
    router.register("slow", agent("slow", 0.0004))  # three messages fill a turn
    router.register("quick", agent("quick", 0.0))
    router.register("client", agent("client", 0.0))
    for _ in range(9):
        router.send_nowait(Message("inform", sender="client", receiver="slow", content=1))
    for _ in range(4):
        router.send_nowait(Message("inform", sender="client", receiver="quick", content=1))
    await router.drain(5)
    assert order == ["slow"] * 3 + ["quick"] * 4 + ["slow"] * 6
    await router.close()


async def test_a_heavy_agent_runs_inline_again_after_light_calls(node: Node, demo: Demo) -> None:
    await heavy_grinder(node, "grinder")
    off_loop = node.manager.off_loop
    assert off_loop is not None
    demo.grind = 0
    for _ in range(LIGHT_CALLS_TO_RETURN):
        await node.client.ask("grinder")
    # the last reply can reach the client before the call's end is counted on the loop
    await eventually(lambda: not node.manager.runtime("grinder").heavy)
    assert off_loop.calls == LIGHT_CALLS_TO_RETURN
    await node.client.ask("grinder")
    assert off_loop.calls == LIGHT_CALLS_TO_RETURN  # inline: no worker call
    assert demo.turns[-1][1] == threading.get_ident()


async def test_without_worker_threads_every_call_is_inline(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, demo: Demo
) -> None:
    node = Node(tmp_path, wasmtime_sandbox, extra_functions=demo.functions(), worker_threads=0)
    await node.start()
    try:
        await heavy_grinder(node, "grinder")
        await node.client.ask("grinder")
        assert node.manager.off_loop is None
        assert {thread for _, thread in demo.turns} == {threading.get_ident()}
    finally:
        await node.stop()


async def test_a_heavy_agent_removed_during_its_call_is_let_go(node: Node, demo: Demo) -> None:
    await heavy_grinder(node, "grinder")
    demo.gate.clear()
    node.router.send_nowait(node.client.message("grinder"))
    await asyncio.get_running_loop().run_in_executor(None, demo.waiting.wait, 30)
    runtime = node.manager.runtime("grinder")
    await node.manager.remove("grinder")
    demo.gate.set()
    await eventually(lambda: not runtime.busy)
    # the call ended on its worker; what it sent after its removal was refused
    assert [m.content for m in node.client.inbox].count("ground") == 1
    await node.manager.deploy("grinder", wasmtime.wat2wasm(GRINDER))  # the name is free
